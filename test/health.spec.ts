import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { TerminusModule } from '@nestjs/terminus';
import type { BrokerModuleOptions } from '../lib';
import { BrokerHealthIndicator } from '../lib/health';
import { createBrokerApp } from './support/app';

/**
 * MessageBrokerService.health() and the terminus indicator on brokers that need no server: the
 * embedded one, and a RabbitMQ nobody listens at. The RabbitMQ server going away and coming back
 * is in test/rabbitmq/rabbitmq.resilience.spec.ts (it closes the server's connections).
 */
describe('broker health', () => {
  const apps: INestApplication[] = [];
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
  });

  const options: BrokerModuleOptions = {
    env: 'prd',
    product: 'shop',
    brokers: [
      { tag: 'mem', envs: [{ slug: 'prd', type: 'memory', config: { server: 'health-spec' } }] },
      // Nothing listens on port 1: its first connection fails. The password must not be reported.
      { tag: 'rmq', envs: [{ slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://ops:s3cr3t-pass@127.0.0.1:1', connectTimeoutMs: 300 } }] },
    ],
  };

  async function start() {
    const started = await createBrokerApp(options, { imports: [TerminusModule], providers: [BrokerHealthIndicator] });
    apps.push(started.app);
    return { ...started, indicator: started.app.get(BrokerHealthIndicator) };
  }

  it('lists each broker env this process used, up or down, with its reason and no credential', async () => {
    const { broker, indicator } = await start();
    expect(broker.health()).toEqual([]);
    expect(indicator.isHealthy('brokers')).toEqual({ brokers: { status: 'up', brokers: [] } });

    await broker.publish({ env: 'prd', event: 'mem:orders', product_tag: 'shop', input: { message: 1 } });
    expect(broker.health()).toEqual([{ broker: 'mem', env: 'prd', type: 'memory', up: true }]);
    expect(indicator.isHealthy('brokers').brokers.status).toBe('up');

    await expect(broker.publish({ env: 'prd', event: 'rmq:orders', product_tag: 'shop', input: { message: 1 } })).rejects.toMatchObject({ code: 'PUBLISH_FAILED' });
    const result = indicator.isHealthy('brokers');
    expect(result.brokers.status).toBe('down');
    expect(result.brokers.brokers).toEqual([
      { broker: 'mem', env: 'prd', type: 'memory', up: true },
      { broker: 'rmq', env: 'prd', type: 'rabbitmq', up: false, reason: 'not connected: its first connection is under way, or failed' },
    ]);
    expect(JSON.stringify(result)).not.toContain('s3cr3t-pass');
  });

  it('reports every broker down once the module is shut down', async () => {
    const { app, broker } = await start();
    await broker.publish({ env: 'prd', event: 'mem:orders', product_tag: 'shop', input: { message: 1 } });
    await app.close();
    apps.splice(0);
    expect(broker.health()).toEqual([{ broker: 'mem', env: 'prd', type: 'memory', up: false, reason: 'the broker module is shut down' }]);
  });
});
