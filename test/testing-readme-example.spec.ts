/**
 * The "Testing your app" example of README.md and docs/testing-your-app.md, run as it is: the code
 * between the two marker comments is that example, with the package's two entry points pointed at
 * lib/. The last suite checks that the Markdown shows exactly this code.
 */
// <testing-example>
import 'reflect-metadata';
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { Injectable, Module, type INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { DuctapeBrokerModule, MessageBrokerService, OnBrokerEvent } from '../lib';
import { getBrokerTestHarness, useInMemoryBrokers, type BrokerTestHarness } from '../lib/testing';

interface Order {
  orderId: string;
  total: number;
}

@Injectable()
class OrdersService {
  constructor(private readonly broker: MessageBrokerService) {}

  async placeOrder(order: Order): Promise<string> {
    const { messageId } = await this.broker.publish<Order>({
      env: this.broker.env,
      event: 'shop:new-orders',
      product_tag: this.broker.product,
      input: { message: order, key: order.orderId },
    });
    return messageId;
  }
}

@Injectable()
class InvoicingListener {
  readonly invoiced: string[] = [];

  @OnBrokerEvent('shop:new-orders', { group: 'shop.invoicing' })
  onNewOrder(order: Order): void {
    if (order.total < 0) throw new Error(`order ${order.orderId} has a negative total`);
    this.invoiced.push(order.orderId);
  }
}

/** The application's module, as it runs in production: on RabbitMQ. */
@Module({
  imports: [
    DuctapeBrokerModule.forRoot({
      env: 'prd',
      product: 'my_shop',
      retry: { maxAttempts: 2, initialDelayMs: 10 },
      brokers: [
        {
          tag: 'shop',
          envs: [{ slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://rabbitmq.internal:5672' } }],
          topics: [{ tag: 'new-orders' }],
        },
      ],
    }),
  ],
  providers: [OrdersService, InvoicingListener],
})
class AppModule {}

describe('placing an order', () => {
  let app: INestApplication;
  let broker: BrokerTestHarness;

  beforeEach(async () => {
    // The same AppModule, with every broker swapped for a private in-memory one.
    const moduleRef = await useInMemoryBrokers(Test.createTestingModule({ imports: [AppModule] })).compile();
    app = moduleRef.createNestApplication();
    await app.init(); // starts the @OnBrokerEvent consumers
    broker = getBrokerTestHarness(app);
  });

  afterEach(() => app.close());

  it('publishes the order and invoices it', async () => {
    const messageId = await app.get(OrdersService).placeOrder({ orderId: '42', total: 99.5 });

    expect(broker.published('shop:new-orders')).toEqual([
      expect.objectContaining({ messageId, key: '42', message: { orderId: '42', total: 99.5 } }),
    ]);
    await broker.waitForHandled('shop:new-orders', { messageId });
    expect(app.get(InvoicingListener).invoiced).toEqual(['42']);
  });

  it('dead-letters an order the listener cannot invoice', async () => {
    const messageId = await app.get(OrdersService).placeOrder({ orderId: '7', total: -1 });

    await expect(broker.waitForHandled('shop:new-orders', { messageId })).rejects.toThrow('failed for good');
    expect(broker.deadLetters('shop:new-orders', 'shop.invoicing')).toEqual([
      expect.objectContaining({ messageId, attempts: 2, error: 'Error: order 7 has a negative total' }),
    ]);
  });
});
// </testing-example>

import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..');
const MARKER = '<!-- fragment: the testing example, run as test/testing-readme-example.spec.ts -->';

/** This file's example, as a user writes it: imported from the package's two entry points. */
function exampleOfThisFile(): string {
  const text = fs.readFileSync(__filename, 'utf8');
  const body = text.slice(text.indexOf('// <testing-example>\n') + '// <testing-example>\n'.length, text.indexOf('// </testing-example>'));
  return body
    .replace("from '../lib/testing'", "from '@ductape/nestjs-broker/testing'")
    .replace("from '../lib'", "from '@ductape/nestjs-broker'")
    .trimEnd();
}

/** The code block right after the marker in a Markdown file, or undefined when it has no marker. */
function exampleIn(file: string): string | undefined {
  const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
  const at = text.indexOf(MARKER);
  if (at < 0) return undefined;
  const block = /```ts\n([\s\S]*?)\n```/.exec(text.slice(at));
  return block?.[1].trimEnd();
}

describe('the testing example in the documentation', () => {
  it('docs/testing-your-app.md shows exactly the example this file runs', () => {
    expect(exampleIn('docs/testing-your-app.md')).toBe(exampleOfThisFile());
  });

  it('README.md shows exactly the example this file runs', () => {
    expect(exampleIn('README.md')).toBe(exampleOfThisFile());
  });
});
