import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import type * as SampleBrokerConfig from '../sample-app/broker.config';
import { CapturingLogger } from './support/app';
import { describeWithBroker } from './support/broker-availability';
import { runUnique } from './support/names';
import { deleteCreatedNatsResourcesAfterAll, withRawConnection } from './support/nats';
import { waitFor } from './support/wait';

/**
 * The sample as it is, on NATS JetStream (DUCTAPE_ENV=nats), but under a product of this run's
 * own: `my_product` is what a user who followed the README has on their server. So the topic is
 * `<PRODUCT>.nats.new-orders`, its stream `ductape_<PRODUCT>_nats`, and the file deletes exactly the
 * consumers and streams it made.
 */
const PRODUCT = runUnique('sample-app-nats');
// doMock, not hoisted: the sample is first loaded (dynamically) by the tests below.
jest.doMock('../sample-app/broker.config', () => {
  const actual = jest.requireActual<typeof SampleBrokerConfig>('../sample-app/broker.config');
  return { ...actual, brokerConfig: (env?: string) => ({ ...actual.brokerConfig(env), product: PRODUCT }) };
});
deleteCreatedNatsResourcesAfterAll();

const TOPIC = `${PRODUCT}.nats.new-orders`;
const STREAM = `ductape_${PRODUCT}_nats`;
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

/** The filter subjects of the durable consumers of a stream. */
async function consumerFilters(stream: string): Promise<string[]> {
  return withRawConnection(async (nc) => {
    const jsm = await nc.jetstreamManager();
    const filters: string[] = [];
    for await (const consumer of jsm.consumers.list(stream)) if (consumer.config.filter_subject) filters.push(consumer.config.filter_subject);
    return filters.sort();
  });
}

describeWithBroker('nats', 'sample app on NATS JetStream (DUCTAPE_ENV=nats)', () => {
  const savedEnv = process.env.DUCTAPE_ENV;
  const logs = new CapturingLogger();
  let app: INestApplication | undefined;
  let baseUrl: string;

  beforeAll(async () => {
    // AppModule reads DUCTAPE_ENV when it is loaded: set it first, then load the sample.
    process.env.DUCTAPE_ENV = 'nats';
    const { bootstrap } = await import('../sample-app/main');
    app = await bootstrap(0, { logger: logs });
    baseUrl = await app.getUrl();
  }, 15_000);

  afterAll(async () => {
    await app?.close();
    if (savedEnv === undefined) delete process.env.DUCTAPE_ENV;
    else process.env.DUCTAPE_ENV = savedEnv;
  });

  it("makes its stream and a durable consumer per group on NATS, and OrdersListener gets the demo order through it", async () => {
    const [published] = logs.lines('Bootstrap', 'published demo order demo-1');
    const messageId = /messageId=(\S+)$/.exec(published ?? '')?.[1];
    expect(messageId).toMatch(UUID);
    await waitFor(() => logs.lines('OrdersListener', `messageId=${messageId}`).length > 0, 'OrdersListener to process the demo order');
    expect(logs.lines('OrdersListener', `messageId=${messageId}`)).toEqual([expect.stringContaining('"orderId":"demo-1"')]);
    // The consumers are the server's, not this process's: each group's filters the topic itself.
    const filters = await consumerFilters(STREAM);
    expect(filters.filter((subject) => subject === TOPIC).length).toBeGreaterThanOrEqual(2);
  });

  it('POST /orders answers 201 { messageId }; OrdersListener receives the order over NATS', async () => {
    const { status, body } = await postJson(baseUrl, { orderId: 'n-1', status: 'pending' });
    expect(status).toBe(201);
    const messageId = messageIdOf(body);
    await waitFor(() => logs.lines('OrdersListener', messageId).length > 0, 'OrdersListener to process the order');
    expect(logs.lines('OrdersListener', messageId)).toEqual([`processed order messageId=${messageId} attempt=1: {"orderId":"n-1","status":"pending"}`]);
  });

  it('the failing invoicing listener is tried 3 times, then its dead-letter listener gets the message from the held stream', async () => {
    const messageId = messageIdOf((await postJson(baseUrl, { orderId: 'n-2' })).body);
    // Retries are the stored message given back with nak(200 ms), then nak(400 ms).
    await waitFor(() => logs.lines('InvoicingListener', `dead letter messageId=${messageId}`).length > 0, 'the dead letter of orders.invoicing', 10_000);
    expect(logs.lines('InvoicingListener', `dead letter messageId=${messageId}`)).toEqual([
      `dead letter messageId=${messageId} group=orders.invoicing attempts=3 ` + `error="Error: invoicing service unavailable (demo)": {"orderId":"n-2"}`,
    ]);
    expect(logs.lines('InvoicingListener', `invoicing order messageId=${messageId}`)).toEqual([1, 2, 3].map((n) => `invoicing order messageId=${messageId} attempt=${n}`));
    const brokerLines = logs.entries.filter((entry) => entry.context === 'DuctapeBroker' && entry.message.includes(messageId));
    expect(brokerLines.map((entry) => entry.level)).toEqual(['warn', 'warn', 'error']);
    expect(logs.lines('OrdersListener', messageId)).toEqual([expect.stringContaining('attempt=1')]);
    expect(await consumerFilters(`${STREAM}_held`)).toContain(`_ductape.dl.orders~invoicing.${TOPIC}`);
  });

  it('closes cleanly, with no error but the dead letters', async () => {
    await app!.close();
    app = undefined;
    const errors = logs.entries.filter((entry) => entry.level === 'error' && !/dead.letter/.test(entry.message));
    expect(errors).toEqual([]);
  });
});

describeWithBroker('nats', 'sample app on NATS (DUCTAPE_ENV=nats) with an unreachable server', () => {
  const saved = { env: process.env.DUCTAPE_ENV, url: process.env.NATS_URL };
  afterAll(() => {
    for (const [name, value] of [['DUCTAPE_ENV', saved.env], ['NATS_URL', saved.url]] as const) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  it('fails to start, and neither the error nor the log shows the token in the server address', async () => {
    const token = 'n0t-the-t0ken';
    process.env.DUCTAPE_ENV = 'nats';
    process.env.NATS_URL = `nats://${token}@127.0.0.1:1`;
    const logs = new CapturingLogger();
    let error: unknown;
    await jest.isolateModulesAsync(async () => {
      const { bootstrap } = await import('../sample-app/main');
      error = await bootstrap(0, { logger: logs }).then(
        (app) => app.close().then(() => undefined),
        (thrown: unknown) => thrown,
      );
    });
    expect(error).toBeInstanceOf(Error);
    const { message, stack } = error as Error;
    expect(message).toContain('nats://127.0.0.1:1');
    expect(`${message}\n${stack}`).not.toContain(token);
    expect(logs.entries.filter((entry) => entry.text.includes(token))).toEqual([]);
  }, 20_000);
});
