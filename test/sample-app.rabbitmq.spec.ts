import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import type * as SampleBrokerConfig from '../sample-app/broker.config';
import { CapturingLogger } from './support/app';
import { describeWithBroker } from './support/broker-availability';
import { holdExclusively } from './support/exclusive';
import { queueExists, recordDeclarations, runUnique } from './support/rabbitmq';
import { waitFor } from './support/wait';

/**
 * The sample as it is, but under a product of this run's own: its product in the README,
 * `my_product`, is what a user who followed the README has on their broker, queues and messages
 * included. So the topic is `<PRODUCT>.stg.new-orders`, not `my_product.stg.new-orders`, and the
 * file deletes, by name, exactly the queues and exchanges it declared.
 */
const PRODUCT = runUnique('sample-app');
// doMock, not hoisted: the sample is first loaded (dynamically) by the tests below.
jest.doMock('../sample-app/broker.config', () => {
  const actual = jest.requireActual<typeof SampleBrokerConfig>('../sample-app/broker.config');
  return { ...actual, brokerConfig: (env?: string) => ({ ...actual.brokerConfig(env), product: PRODUCT }) };
});
const declared = recordDeclarations();

// Other RabbitMQ files restart the broker or close its connections: never alongside this one.
holdExclusively('rabbitmq', { cleanup: () => declared.deleteAll() });

const TOPIC = `${PRODUCT}.stg.new-orders`;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

async function postJson(baseUrl: string, order: unknown): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${baseUrl}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(order),
  });
  return { status: response.status, body: await response.json() };
}

function messageIdOf(body: unknown): string {
  expect(body).toEqual({ messageId: expect.stringMatching(UUID) as unknown });
  return (body as { messageId: string }).messageId;
}

describeWithBroker('rabbitmq', 'sample app on RabbitMQ (DUCTAPE_ENV=stg)', () => {
  const savedEnv = process.env.DUCTAPE_ENV;
  const logs = new CapturingLogger();
  let app: INestApplication | undefined;
  let baseUrl: string;

  beforeAll(async () => {
    // AppModule reads DUCTAPE_ENV when it is loaded: set it first, then load the sample.
    process.env.DUCTAPE_ENV = 'stg';
    const { bootstrap } = await import('../sample-app/main');
    app = await bootstrap(0, { logger: logs });
    baseUrl = await app.getUrl();
  }, 15_000);

  afterAll(async () => {
    await app?.close();
    if (savedEnv === undefined) delete process.env.DUCTAPE_ENV;
    else process.env.DUCTAPE_ENV = savedEnv;
  });

  it('declares its topology on RabbitMQ, and OrdersListener gets the demo order through it', async () => {
    const [published] = logs.lines('Bootstrap', 'published demo order demo-1');
    const messageId = /messageId=(\S+)$/.exec(published ?? '')?.[1];
    expect(messageId).toMatch(UUID);
    await waitFor(() => logs.lines('OrdersListener', `messageId=${messageId}`).length > 0, 'OrdersListener to process the demo order');
    expect(logs.lines('OrdersListener', `messageId=${messageId}`)).toEqual([expect.stringContaining('"orderId":"demo-1"')]);

    // The queues are the broker's, not this process's: one per group, and the invoicing dead letters
    // (asked of the broker through AMQP, by a passive declare).
    for (const queue of [`${TOPIC}:orders.OrdersListener.handleNewOrder`, `${TOPIC}:orders.invoicing`, `${TOPIC}:orders.invoicing:dead-letters`]) {
      expect(await queueExists(queue)).toBe(true);
    }
  });

  it('POST /orders answers 201 { messageId }; OrdersListener receives the order over RabbitMQ', async () => {
    const { status, body } = await postJson(baseUrl, { orderId: 'r-1', status: 'pending' });

    expect(status).toBe(201);
    const messageId = messageIdOf(body);
    await waitFor(() => logs.lines('OrdersListener', messageId).length > 0, 'OrdersListener to process the order');
    expect(logs.lines('OrdersListener', messageId)).toEqual([
      `processed order messageId=${messageId} attempt=1: {"orderId":"r-1","status":"pending"}`,
    ]);
  });

  it('the failing invoicing listener is tried 3 times, then its dead-letter listener gets the message', async () => {
    const messageId = messageIdOf((await postJson(baseUrl, { orderId: 'r-2' })).body);

    // Retries wait 200 ms, then 400 ms, in RabbitMQ's delay queues.
    await waitFor(
      () => logs.lines('InvoicingListener', `dead letter messageId=${messageId}`).length > 0,
      'the dead letter of orders.invoicing',
      10_000,
    );
    expect(logs.lines('InvoicingListener', `dead letter messageId=${messageId}`)).toEqual([
      `dead letter messageId=${messageId} group=orders.invoicing attempts=3 ` +
        `error="Error: invoicing service unavailable (demo)": {"orderId":"r-2"}`,
    ]);
    expect(logs.lines('InvoicingListener', `invoicing order messageId=${messageId}`)).toEqual(
      [1, 2, 3].map((n) => `invoicing order messageId=${messageId} attempt=${n}`),
    );
    // The broker reports two retries (warn) and the dead-lettering (error).
    const brokerLines = logs.entries.filter((entry) => entry.context === 'DuctapeBroker' && entry.message.includes(messageId));
    expect(brokerLines.map((entry) => entry.level)).toEqual(['warn', 'warn', 'error']);
    // Other listeners are unaffected: the order was processed once, first time.
    expect(logs.lines('OrdersListener', messageId)).toEqual([expect.stringContaining('attempt=1')]);
  });

  it('closes cleanly, and no log line, stack included, carries the RabbitMQ password', async () => {
    await app!.close();
    app = undefined;

    // The only errors are the invoicing demo's dead letters: no connection or channel trouble.
    const errors = logs.entries.filter((entry) => entry.level === 'error' && !/dead.letter/.test(entry.message));
    expect(errors).toEqual([]);
    const leaks = logs.entries.filter((entry) => /:guest@|guest:guest/.test(entry.text));
    expect(leaks).toEqual([]);
  });
});

describeWithBroker('rabbitmq', 'sample app on RabbitMQ (DUCTAPE_ENV=stg) with a wrong password', () => {
  const saved = { env: process.env.DUCTAPE_ENV, url: process.env.RABBITMQ_URL };
  afterAll(() => {
    for (const [name, value] of [['DUCTAPE_ENV', saved.env], ['RABBITMQ_URL', saved.url]] as const) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  it('fails to start, and neither the error nor the log shows the password', async () => {
    const password = 'not-the-password';
    process.env.DUCTAPE_ENV = 'stg';
    process.env.RABBITMQ_URL = `amqp://guest:${password}@127.0.0.1:5672`;
    const logs = new CapturingLogger();
    let error: unknown;
    // A fresh copy of the sample, whose AppModule reads the URL above.
    await jest.isolateModulesAsync(async () => {
      const { bootstrap } = await import('../sample-app/main');
      error = await bootstrap(0, { logger: logs }).then(
        (app) => app.close().then(() => undefined),
        (thrown: unknown) => thrown,
      );
    });

    expect(error).toBeInstanceOf(Error);
    const { message, stack } = error as Error;
    expect(message).toContain('amqp://127.0.0.1:5672');
    expect(`${message}\n${stack}`).not.toContain(password);
    expect(logs.entries.filter((entry) => entry.text.includes(password))).toEqual([]);
  }, 20_000);
});
