import 'reflect-metadata';
import { inspect } from 'node:util';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { BrokerError, DuctapeBrokerModule, MessageBrokerService, type AdapterContext, type AdapterTopic, type BrokerAdapter, type ConsumeOptions, type DeliveryListener, type OutboundMessage } from '../lib';
import { createMemoryAdapter } from '../lib/adapters/memory';
import { silentLogger } from './support/app';
import { runUnique } from './support/names';

/**
 * The errors the service wraps (PUBLISH_FAILED, SUBSCRIBE_FAILED) print no secret that the error
 * they wrap held: a registered adapter's own error text is not redacted, and util.inspect (what
 * pino, Nest's logger and console print an error with) shows the whole cause chain.
 */

const SECRET_URL = 'amqp://svc:secret@broker.internal:5672';

/** Which step of a registered adapter fails, with an Error whose message holds a URL with its password. */
type Failing = 'connect' | 'publish' | 'consume';

function leakyAdapter(failing: Failing) {
  return (config: { server: string }, context: AdapterContext): BrokerAdapter => {
    const inner = createMemoryAdapter({ server: config.server }, context);
    const fail = (step: string) => Promise.reject(new Error(`${step} to ${SECRET_URL} refused`));
    return {
      get capabilities() {
        return inner.capabilities;
      },
      connect: () => (failing === 'connect' ? fail('connecting') : inner.connect()),
      publish: (topic: AdapterTopic, message: OutboundMessage) => (failing === 'publish' ? fail('publishing') : inner.publish(topic, message)),
      consume: (topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener) =>
        failing === 'consume' ? fail('consuming') : inner.consume(topic, options, listener),
      close: () => inner.close(),
    };
  };
}

describe('the cause of a wrapped error', () => {
  const product = runUnique('causes');
  const apps: INestApplication[] = [];
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
  });

  async function brokerFailingAt(failing: Failing) {
    const brokerModule = DuctapeBrokerModule.forRoot({
      env: 'dev',
      product,
      adapters: { leaky: leakyAdapter(failing) },
      brokers: [{ tag: 'bus', envs: [{ slug: 'dev', type: 'leaky', config: { server: runUnique('causes-server') } }] }],
    });
    const moduleRef = await Test.createTestingModule({ imports: [brokerModule] }).setLogger(silentLogger).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    await app.init();
    apps.push(app);
    return app.get(MessageBrokerService);
  }

  const cases: [Failing, 'publish' | 'subscribe', string][] = [
    ['connect', 'publish', 'PUBLISH_FAILED'],
    ['connect', 'subscribe', 'SUBSCRIBE_FAILED'],
    ['publish', 'publish', 'PUBLISH_FAILED'],
    ['consume', 'subscribe', 'SUBSCRIBE_FAILED'],
  ];

  it.each(cases)("an adapter's %s error holding a password: the %s error prints none of it, its cause keeps the redacted text and the stack", async (failing, call, code) => {
    const broker = await brokerFailingAt(failing);
    const request = { env: 'dev', event: 'bus:orders', product_tag: product };
    const error = await (call === 'publish'
      ? broker.publish({ ...request, input: { message: { n: 1 } } })
      : broker.subscribe({ ...request, input: { callback: () => undefined } })
    ).then(
      () => undefined,
      (thrown: unknown) => thrown,
    );
    expect(error).toBeInstanceOf(BrokerError);
    const wrapped = error as BrokerError;
    expect(wrapped.code).toBe(code);
    // What a logger prints: the message, the stack and the cause chain.
    const printed = inspect(wrapped, { depth: 10 });
    expect(printed).toContain('amqp://svc:***@broker.internal:5672');
    expect(printed).not.toContain('secret');
    expect(JSON.stringify(wrapped)).not.toContain('secret');
    // The cause is still there to read: the adapter's error as text (redacted), with the adapter's stack frames.
    const cause = wrapped.cause as Error;
    expect(cause).toBeInstanceOf(Error);
    expect(cause.message).toBe(`Error: ${failing === 'connect' ? 'connecting' : failing === 'publish' ? 'publishing' : 'consuming'} to amqp://svc:***@broker.internal:5672 refused`);
    expect(cause.stack).toMatch(/\n\s+at .*error-causes\.spec\.ts/);
  });
});
