import 'reflect-metadata';
import { Injectable, type DynamicModule, type INestApplication, type Provider } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import {
  BrokerError,
  DuctapeBrokerModule,
  MessageBrokerService,
  OnBrokerEvent,
  type BrokerContext,
  type BrokerModuleOptions,
} from '../lib';
import { createMemoryAdapter } from '../lib/adapters/memory';
import { countingAdapter, type CountingConfig } from './fixtures/counting-adapter';
import { silentLogger } from './support/app';
import { waitFor } from './support/wait';

let servers = 0;
const counting = (counts = new Map<string, number>()): CountingConfig => ({ counts, server: `custom-adapter-${++servers}` });

async function boot(brokerModule: DynamicModule, providers: Provider[] = []): Promise<INestApplication> {
  const moduleRef = await Test.createTestingModule({ imports: [brokerModule], providers }).setLogger(silentLogger).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  return app;
}

/** Boots the module with `options` and returns the error startup failed with. */
async function startupError(options: unknown): Promise<BrokerError> {
  const failed = await boot(DuctapeBrokerModule.forRoot(options as BrokerModuleOptions)).then(
    async (app) => {
      await app.close();
      return undefined;
    },
    (error: unknown) => error,
  );
  expect(failed).toBeInstanceOf(BrokerError);
  return failed as BrokerError;
}

describe('a broker type registered in adapters', () => {
  it('serves publish and @OnBrokerEvent through the module', async () => {
    const received: { order: unknown; attempt: number }[] = [];
    @Injectable()
    class OrdersListener {
      @OnBrokerEvent('shop:orders')
      onOrder(order: unknown, ctx: BrokerContext): void {
        received.push({ order, attempt: ctx.attempt });
      }
    }
    const config = counting();
    const app = await boot(
      DuctapeBrokerModule.forRoot({
        env: 'dev',
        product: 'my_product',
        adapters: { counting: countingAdapter },
        brokers: [{ tag: 'shop', envs: [{ slug: 'dev', type: 'counting', config }] }],
      }),
      [OrdersListener],
    );
    try {
      const broker = app.get(MessageBrokerService);
      await broker.publish({ env: 'dev', event: 'shop:orders', product_tag: 'my_product', input: { message: { id: 1 } } });
      await broker.publish({ env: 'dev', event: 'shop:orders', product_tag: 'my_product', input: { message: { id: 2 } } });
      await waitFor(() => received.length === 2, 'both orders at the listener');
      expect(received).toEqual([
        { order: { id: 1 }, attempt: 1 },
        { order: { id: 2 }, attempt: 1 },
      ]);
      expect(Object.fromEntries(config.counts)).toEqual({ 'my_product.dev.orders': 2 });
    } finally {
      await app.close();
    }
  });

  it('retries a failed handler through the core alone (the delivery layer sends the retry)', async () => {
    const config = counting();
    const app = await boot(
      DuctapeBrokerModule.forRoot({
        env: 'dev',
        product: 'my_product',
        adapters: { counting: countingAdapter },
        brokers: [{ tag: 'shop', envs: [{ slug: 'dev', type: 'counting', config }] }],
      }),
    );
    try {
      const broker = app.get(MessageBrokerService);
      const attempts: number[] = [];
      await broker.subscribe({
        env: 'dev',
        event: 'shop:orders',
        product_tag: 'my_product',
        input: {
          group: 'billing',
          retry: { maxAttempts: 2, initialDelayMs: 10 },
          callback: (_message, ctx) => {
            attempts.push(ctx.attempt);
            if (ctx.attempt === 1) throw new Error('not yet');
          },
        },
      });
      await broker.publish({ env: 'dev', event: 'shop:orders', product_tag: 'my_product', input: { message: { id: 1 } } });
      await waitFor(() => attempts.length === 2, 'the retry at the handler');
      expect(attempts).toEqual([1, 2]);
      expect(config.counts.get('my_product.dev.orders')).toBe(1);
    } finally {
      await app.close();
    }
  });

  it('may be a bare factory function, next to built-in types in other envs', async () => {
    const server = `custom-adapter-${++servers}`;
    let made = 0;
    const app = await boot(
      DuctapeBrokerModule.forRoot({
        env: 'dev',
        product: 'my_product',
        adapters: {
          plain: (_config, context) => {
            made++;
            return createMemoryAdapter({ server }, context);
          },
        },
        brokers: [
          {
            tag: 'shop',
            envs: [
              { slug: 'dev', type: 'plain' },
              { slug: 'prd', type: 'rabbitmq', config: { url: undefined } },
            ],
          },
        ],
      }),
    );
    try {
      const broker = app.get(MessageBrokerService);
      const got: unknown[] = [];
      await broker.subscribe({ env: 'dev', event: 'shop:orders', product_tag: 'my_product', input: { callback: (message) => void got.push(message) } });
      await broker.publish({ env: 'dev', event: 'shop:orders', product_tag: 'my_product', input: { message: 'one' } });
      await waitFor(() => got.length === 1, 'the message at the subscriber');
      expect(made).toBe(1);
    } finally {
      await app.close();
    }
  });

  it('fails a publish as PUBLISH_FAILED when the adapter throws instead of rejecting', async () => {
    const app = await boot(
      DuctapeBrokerModule.forRoot({
        env: 'dev',
        product: 'my_product',
        adapters: {
          throwing: (_config, context) => {
            const adapter = createMemoryAdapter({ server: `custom-adapter-${++servers}` }, context);
            adapter.publish = () => {
              throw new Error('a name this broker refuses');
            };
            return adapter;
          },
        },
        brokers: [{ tag: 'shop', envs: [{ slug: 'dev', type: 'throwing' }] }],
      }),
    );
    try {
      const broker = app.get(MessageBrokerService);
      for (let attempt = 0; attempt < 2; attempt++) {
        // The first publish connects the adapter; the second goes the connected way.
        const error = await broker.publish({ env: 'dev', event: 'shop:orders', product_tag: 'my_product', input: { message: 'one' } }).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(BrokerError);
        expect((error as BrokerError).code).toBe('PUBLISH_FAILED');
        expect((error as BrokerError).message).toContain('a name this broker refuses');
      }
    } finally {
      await app.close();
    }
  });

  it("is CONFIG_INVALID at startup when its validate finds problems in the process's own env, naming the entry", async () => {
    const error = await startupError({
      env: 'dev',
      product: 'my_product',
      adapters: { counting: countingAdapter },
      brokers: [{ tag: 'shop', envs: [{ slug: 'dev', type: 'counting', config: { server: '' } }] }],
    });
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.problems).toEqual(['brokers[0].envs[0].config: counts: must be a Map', 'brokers[0].envs[0].config: server: must be a non-empty string']);
  });

  it('checks another env’s config on that env’s first use (it may be absent on this machine)', async () => {
    const app = await boot(
      DuctapeBrokerModule.forRoot({
        env: 'dev',
        product: 'my_product',
        adapters: { counting: countingAdapter },
        brokers: [{ tag: 'shop', envs: [{ slug: 'dev', type: 'counting', config: counting() }, { slug: 'stg', type: 'counting' }] }],
      }),
    );
    try {
      const error = await app
        .get(MessageBrokerService)
        .publish({ env: 'stg', event: 'shop:orders', product_tag: 'my_product', input: { message: {} } })
        .catch((thrown: unknown) => thrown);
      expect(error).toBeInstanceOf(BrokerError);
      expect(error).toMatchObject({ code: 'CONFIG_INVALID', problems: ["broker 'shop' env 'stg' (counting) config: must be an object with counts and server"] });
    } finally {
      await app.close();
    }
  });

  it('cannot replace a built-in type, and must be a factory or { create, validate? }', async () => {
    const error = await startupError({
      env: 'dev',
      product: 'my_product',
      adapters: { rabbitmq: countingAdapter, broken: { validate: () => [] }, 'has space': countingAdapter },
      brokers: [{ tag: 'shop', envs: [{ slug: 'dev', type: 'memory' }] }],
    });
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.problems).toEqual([
      "adapters.rabbitmq: 'rabbitmq' is a built-in broker type and cannot be registered (choose another name)",
      'adapters.broken: must be a factory function or an object with a create(config, context) function',
      "adapters: 'has space' is not a valid broker type name (letters, digits, '.', '_' and '-')",
    ]);
  });

  it('an env type that is neither built in nor registered is CONFIG_INVALID, listing the registered ones', async () => {
    const error = await startupError({
      env: 'dev',
      product: 'my_product',
      adapters: { counting: countingAdapter },
      brokers: [{ tag: 'shop', envs: [{ slug: 'dev', type: 'countin' }] }],
    });
    expect(error.problems).toEqual(["brokers[0].envs[0].type: unknown broker type 'countin' (expected one of memory, rabbitmq, kafka, sqs, redis, nats, counting)"]);
  });
});
