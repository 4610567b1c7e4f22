import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import {
  BrokerError,
  DuctapeBrokerModule,
  MessageBrokerService,
  type BrokerModuleOptions,
} from '../lib';
import type { ConfigurableModuleOptionsFactory } from '@nestjs/common';
import { silentLogger } from './support/app';
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
class BrokerConfigService implements ConfigurableModuleOptionsFactory<BrokerModuleOptions, 'create'> {
  create(): BrokerModuleOptions {
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
});
