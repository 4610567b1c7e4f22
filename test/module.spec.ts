import 'reflect-metadata';
import { Inject, Injectable, Module } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import * as publicApi from '../lib';
import {
  BrokerError,
  DUCTAPE_BROKER_OPTIONS,
  DuctapeBrokerModule,
  MessageBrokerService,
  type BrokerModuleOptions,
  type BrokerOptionsFactory,
} from '../lib';
import { createBrokerApp, silentLogger, startupError } from './support/app';
import { waitFor } from './support/wait';

const config: BrokerModuleOptions = {
  env: 'prd',
  product: 'my_product',
  brokers: [{ tag: 'sqsbroker', envs: [{ slug: 'prd', type: 'memory' }] }],
};

@Injectable()
class AppSettings {
  readonly env = 'prd';
}

@Module({ providers: [AppSettings], exports: [AppSettings] })
class SettingsModule {}

@Injectable()
class BrokerConfigService implements BrokerOptionsFactory {
  createBrokerOptions(): BrokerModuleOptions {
    return config;
  }
}

async function boot(brokerModule: ReturnType<typeof DuctapeBrokerModule.forRoot>) {
  const moduleRef = await Test.createTestingModule({ imports: [brokerModule] }).setLogger(silentLogger).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  return app;
}

describe('DuctapeBrokerModule', () => {
  it('forRootAsync with useFactory, imports and inject', async () => {
    const app = await boot(
      DuctapeBrokerModule.forRootAsync({
        imports: [SettingsModule],
        inject: [AppSettings],
        useFactory: async (settings: AppSettings) => ({ ...config, env: settings.env }),
      }),
    );
    expect(app.get(MessageBrokerService).env).toBe('prd');
    await app.close();
  });

  it('forRootAsync with useClass', async () => {
    const app = await boot(DuctapeBrokerModule.forRootAsync({ useClass: BrokerConfigService }));
    expect(app.get(MessageBrokerService).product).toBe('my_product');
    await app.close();
  });

  it('forRootAsync validates what the factory returns', async () => {
    const failing = boot(DuctapeBrokerModule.forRootAsync({ useFactory: () => ({ ...config, env: 'not valid!' }) }));
    await expect(failing).rejects.toBeInstanceOf(BrokerError);
    await expect(failing).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });

  it("runs the two calls of Ductape's documentation verbatim", async () => {
    const app = await boot(DuctapeBrokerModule.forRoot(config));
    const broker = app.get(MessageBrokerService);
    const received: unknown[] = [];

    await broker.subscribe({
      env: "prd",
      event: "sqsbroker:new-orders",
      product_tag: "my_product",
      input: {
        callback: async (message) => {
          received.push(message);
        },
      },
    });
    await broker.publish({
      env: "prd",
      event: "sqsbroker:new-orders",
      product_tag: "my_product",
      input: {
        message: {
          orderId: "12345",
          status: "pending",
          customer: {
            name: "John Doe",
            email: "john@example.com"
          }
        }
      }
    });

    await waitFor(() => received.length === 1, 'the documented message');
    expect(received[0]).toEqual({
      orderId: '12345',
      status: 'pending',
      customer: { name: 'John Doe', email: 'john@example.com' },
    });
    await app.close();
  });

  it('exports one options token: the validated options, injectable anywhere under DUCTAPE_BROKER_OPTIONS', async () => {
    @Injectable()
    class ReadsOptions {
      constructor(@Inject(DUCTAPE_BROKER_OPTIONS) readonly options: BrokerModuleOptions<string>) {}
    }
    const moduleRef = await Test.createTestingModule({ imports: [DuctapeBrokerModule.forRoot(config)], providers: [ReadsOptions] })
      .setLogger(silentLogger)
      .compile();
    expect(moduleRef.get(ReadsOptions).options).toEqual(config);
    expect(Object.keys(publicApi)).not.toContain('BROKER_MODULE_OPTIONS');
    await moduleRef.close();
  });
});

describe('each process needs only its own env to be complete', () => {
  // A dev laptop: the stg and prd entries read variables that are unset there.
  const laptop = (own: Record<string, unknown> = {}): BrokerModuleOptions =>
    ({
      env: 'dev',
      product: 'my_product',
      brokers: [
        {
          tag: 'orders',
          envs: [
            { slug: 'dev', type: 'memory', ...own },
            { slug: 'stg', type: 'rabbitmq', config: { url: process.env.DUCTAPE_TEST_UNSET_RABBITMQ_URL } },
            { slug: 'prd', type: 'sqs', config: { region: process.env.DUCTAPE_TEST_UNSET_AWS_REGION } },
            { slug: 'qa', type: 'kafka' },
          ],
        },
      ],
    }) as unknown as BrokerModuleOptions;

  it("starts with other envs' connection settings absent, and works on its own env", async () => {
    const { app, broker } = await createBrokerApp(laptop());
    try {
      const got: unknown[] = [];
      await broker.subscribe({ env: 'dev', event: 'orders:new', product_tag: 'my_product', input: { callback: (m) => void got.push(m) } });
      await broker.publish({ env: 'dev', event: 'orders:new', product_tag: 'my_product', input: { message: { n: 1 } } });
      await waitFor(() => got.length === 1, 'the dev message');
    } finally {
      await app.close();
    }
  });

  it('refuses, on first use of another env, its missing settings with CONFIG_INVALID naming the env and the field', async () => {
    const { app, broker } = await createBrokerApp(laptop());
    try {
      for (const [env, field] of [
        ['stg', 'config.url'],
        ['prd', 'config.region'],
        ['qa', 'config'],
      ] as const) {
        const error = await broker.publish({ env, event: 'orders:new', product_tag: 'my_product', input: { message: {} } }).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(BrokerError);
        expect((error as BrokerError).code).toBe('CONFIG_INVALID');
        expect((error as BrokerError).message).toContain(`env '${env}'`);
        expect((error as BrokerError).message).toContain(field);
      }
    } finally {
      await app.close();
    }
  });

  it("starts with half of another env's SQS key pair set (its secret unset here), and refuses the pair on that env's first use", async () => {
    const halfPair = laptop();
    Object.assign((halfPair.brokers[0].envs[2] as unknown as { config: Record<string, unknown> }).config, {
      region: 'eu-west-1',
      accessKeyId: 'AKIAEXAMPLE',
      secretAccessKey: process.env.DUCTAPE_TEST_UNSET_AWS_SECRET,
    });
    const { app, broker } = await createBrokerApp(halfPair);
    try {
      const error = await broker.publish({ env: 'prd', event: 'orders:new', product_tag: 'my_product', input: { message: {} } }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BrokerError);
      expect((error as BrokerError).code).toBe('CONFIG_INVALID');
      expect((error as BrokerError).message).toContain('accessKeyId and secretAccessKey must be given together');
    } finally {
      await app.close();
    }
  });

  it("still refuses at startup another env's settings that are given but wrong, and its own env's missing ones", async () => {
    const wrong = laptop();
    (wrong.brokers[0].envs[1] as { config: { url: string } }).config.url = 'http://not-amqp';
    const error = await startupError(wrong);
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.message).toMatch(/brokers\[0\]\.envs\[1\]\.config\.url: protocol must be 'amqp:' or 'amqps:'/);

    const ownMissing = { ...laptop(), env: 'stg' };
    const own = await startupError(ownMissing);
    expect(own.message).toMatch(/brokers\[0\]\.envs\[1\]\.config\.url: must be a non-empty URL string/);
  });
});
