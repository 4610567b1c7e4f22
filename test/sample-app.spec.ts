import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { AppModule } from '../sample-app/app.module';
import { brokerConfig } from '../sample-app/broker.config';
import { bootstrap } from '../sample-app/main';
import { CapturingLogger } from './support/app';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Polls `probe` until it returns a value, or fails after `timeoutMs`. */
async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function nonEmpty<T>(items: T[]): T[] | undefined {
  return items.length > 0 ? items : undefined;
}

async function postOrder(baseUrl: string, init: RequestInit): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${baseUrl}/orders`, { method: 'POST', ...init });
  const body: unknown = await response.json();
  return { status: response.status, body };
}

function postJson(baseUrl: string, order: unknown): Promise<{ status: number; body: unknown }> {
  return postOrder(baseUrl, { headers: { 'content-type': 'application/json' }, body: JSON.stringify(order) });
}

function messageIdOf(body: unknown): string {
  expect(body).toEqual({ messageId: expect.stringMatching(UUID) as unknown });
  return (body as { messageId: string }).messageId;
}

describe('sample app: AppModule', () => {
  let app: INestApplication | undefined;
  let logs: CapturingLogger;
  let baseUrl: string;

  beforeEach(async () => {
    logs = new CapturingLogger();
    app = await NestFactory.create(AppModule, { logger: logs });
    await app.listen(0, '127.0.0.1');
    baseUrl = await app.getUrl();
  });

  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('POST /orders publishes the order and answers 201 { messageId }; OrdersListener processes it', async () => {
    const { status, body } = await postJson(baseUrl, { orderId: 'o-1', status: 'pending' });

    expect(status).toBe(201);
    const messageId = messageIdOf(body);
    const [line] = await waitFor('OrdersListener to process the order', () => nonEmpty(logs.lines('OrdersListener', messageId)));
    expect(line).toBe(`processed order messageId=${messageId} attempt=1: {"orderId":"o-1","status":"pending"}`);
  });

  it('the failing invoicing listener is tried 3 times, then its dead-letter listener gets the message', async () => {
    const messageId = messageIdOf((await postJson(baseUrl, { orderId: 'o-2' })).body);

    const [deadLetter] = await waitFor('the dead letter of orders.invoicing', () =>
      nonEmpty(logs.lines('InvoicingListener', `dead letter messageId=${messageId}`)),
    );
    expect(deadLetter).toBe(
      `dead letter messageId=${messageId} group=orders.invoicing attempts=3 ` +
        `error="Error: invoicing service unavailable (demo)": {"orderId":"o-2"}`,
    );
    const attempts = logs.lines('InvoicingListener', `invoicing order messageId=${messageId}`);
    expect(attempts).toEqual([1, 2, 3].map((n) => `invoicing order messageId=${messageId} attempt=${n}`));
    // The broker itself reports two retries (warn) and the dead-lettering (error).
    const brokerLines = logs.entries.filter((entry) => entry.context === 'DuctapeBroker' && entry.message.includes(messageId));
    expect(brokerLines.map((entry) => entry.level)).toEqual(['warn', 'warn', 'error']);
    // Other listeners are unaffected: the order was processed once, first time.
    expect(logs.lines('OrdersListener', messageId)).toEqual([expect.stringContaining('attempt=1')]);
  });

  it('answers 400 with the broker error code when the broker refuses the message, and publishes nothing', async () => {
    // No JSON body: Express leaves the body undefined, which the broker refuses (INVALID_MESSAGE).
    const noBody = await postOrder(baseUrl, {});
    const textBody = await postOrder(baseUrl, { headers: { 'content-type': 'text/plain' }, body: 'an order' });

    for (const { status, body } of [noBody, textBody]) {
      expect(status).toBe(400);
      expect(body).toEqual({ statusCode: 400, code: 'INVALID_MESSAGE', message: 'message must be JSON-serialisable (got undefined)' });
    }
    // Had anything been published, the (FIFO) listener would see it before this order.
    const messageId = messageIdOf((await postJson(baseUrl, { orderId: 'o-3' })).body);
    await waitFor('OrdersListener to process the valid order', () => nonEmpty(logs.lines('OrdersListener', messageId)));
    expect(logs.lines('OrdersListener', 'processed order')).toEqual([expect.stringContaining(messageId)]);
  });
});

describe('sample app: bootstrap()', () => {
  let app: INestApplication | undefined;

  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('listens and publishes one demo order, which OrdersListener processes', async () => {
    const logs = new CapturingLogger();
    app = await bootstrap(0, { logger: logs });

    const [published] = logs.lines('Bootstrap', 'published demo order demo-1');
    const messageId = /messageId=(\S+)$/.exec(published ?? '')?.[1];
    expect(messageId).toMatch(UUID);
    const [line] = await waitFor('OrdersListener to process the demo order', () => nonEmpty(logs.lines('OrdersListener', `messageId=${messageId}`)));
    expect(line).toContain('"orderId":"demo-1"');
    expect(logs.lines('OrdersListener', 'processed order')).toHaveLength(1);
    // It serves HTTP too.
    const { status } = await postJson(await app.getUrl(), { orderId: 'o-4' });
    expect(status).toBe(201);
  });
});

describe('sample app: brokerConfig()', () => {
  const saved = process.env.DUCTAPE_ENV;
  afterEach(() => {
    if (saved === undefined) delete process.env.DUCTAPE_ENV;
    else process.env.DUCTAPE_ENV = saved;
  });

  it('runs in DUCTAPE_ENV, dev by default', () => {
    delete process.env.DUCTAPE_ENV;
    expect(brokerConfig()).toMatchObject({ env: 'dev', product: 'my_product', service: 'orders' });
    process.env.DUCTAPE_ENV = 'prd';
    expect(brokerConfig().env).toBe('prd');
    expect(brokerConfig('dev').env).toBe('dev');
  });
});
