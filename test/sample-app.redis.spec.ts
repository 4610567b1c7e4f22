import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import type * as SampleBrokerConfig from '../sample-app/broker.config';
import { CapturingLogger } from './support/app';
import { describeWithBroker } from './support/broker-availability';
import { runUnique } from './support/names';
import { deleteCreatedRedisKeysAfterAll, withRawRedis } from './support/redis';
import { waitFor } from './support/wait';

/**
 * The sample as it is, on Redis Streams (DUCTAPE_ENV=redis), but under a product of this run's
 * own: `my_product` is what a user who followed the README has on their server. So the topic's
 * stream is `<PRODUCT>.redis.new-orders`, and the file deletes exactly the keys under that product.
 */
const PRODUCT = runUnique('sample-app-redis');
// doMock, not hoisted: the sample is first loaded (dynamically) by the tests below.
jest.doMock('../sample-app/broker.config', () => {
  const actual = jest.requireActual<typeof SampleBrokerConfig>('../sample-app/broker.config');
  return { ...actual, brokerConfig: (env?: string) => ({ ...actual.brokerConfig(env), product: PRODUCT }) };
});
deleteCreatedRedisKeysAfterAll([`${PRODUCT}.*`]);

const TOPIC = `${PRODUCT}.redis.new-orders`;
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

describeWithBroker('redis', 'sample app on Redis Streams (DUCTAPE_ENV=redis)', () => {
  const savedEnv = process.env.DUCTAPE_ENV;
  const logs = new CapturingLogger();
  let app: INestApplication | undefined;
  let baseUrl: string;

  beforeAll(async () => {
    // AppModule reads DUCTAPE_ENV when it is loaded: set it first, then load the sample.
    process.env.DUCTAPE_ENV = 'redis';
    const { bootstrap } = await import('../sample-app/main');
    app = await bootstrap(0, { logger: logs });
    baseUrl = await app.getUrl();
  }, 15_000);

  afterAll(async () => {
    await app?.close();
    if (savedEnv === undefined) delete process.env.DUCTAPE_ENV;
    else process.env.DUCTAPE_ENV = savedEnv;
  });

  it('makes its stream and consumer groups on Redis, and OrdersListener gets the demo order through them', async () => {
    const [published] = logs.lines('Bootstrap', 'published demo order demo-1');
    const messageId = /messageId=(\S+)$/.exec(published ?? '')?.[1];
    expect(messageId).toMatch(UUID);
    await waitFor(() => logs.lines('OrdersListener', `messageId=${messageId}`).length > 0, 'OrdersListener to process the demo order');
    expect(logs.lines('OrdersListener', `messageId=${messageId}`)).toEqual([expect.stringContaining('"orderId":"demo-1"')]);
    // The groups are the server's, not this process's: one consumer group per subscription group on the topic's stream.
    const groups = (await withRawRedis((client) => client.xinfo('GROUPS', TOPIC))) as unknown[][];
    const names = groups.map((group) => String(group[group.indexOf('name') + 1]));
    expect(names).toEqual(expect.arrayContaining(['orders.OrdersListener.handleNewOrder', 'orders.invoicing']));
  });

  it('POST /orders answers 201 { messageId }; OrdersListener receives the order over Redis', async () => {
    const { status, body } = await postJson(baseUrl, { orderId: 'x-1', status: 'pending' });

    expect(status).toBe(201);
    const messageId = messageIdOf(body);
    await waitFor(() => logs.lines('OrdersListener', messageId).length > 0, 'OrdersListener to process the order');
    expect(logs.lines('OrdersListener', messageId)).toEqual([`processed order messageId=${messageId} attempt=1: {"orderId":"x-1","status":"pending"}`]);
  });

  it('the failing invoicing listener is tried 3 times, then its dead-letter listener gets the message', async () => {
    const messageId = messageIdOf((await postJson(baseUrl, { orderId: 'x-2' })).body);

    // Retries wait 200 ms, then 400 ms, in the group's sorted set on Redis.
    await waitFor(() => logs.lines('InvoicingListener', `dead letter messageId=${messageId}`).length > 0, 'the dead letter of orders.invoicing', 10_000);
    expect(logs.lines('InvoicingListener', `dead letter messageId=${messageId}`)).toEqual([
      `dead letter messageId=${messageId} group=orders.invoicing attempts=3 ` + `error="Error: invoicing service unavailable (demo)": {"orderId":"x-2"}`,
    ]);
    expect(logs.lines('InvoicingListener', `invoicing order messageId=${messageId}`)).toEqual([1, 2, 3].map((n) => `invoicing order messageId=${messageId} attempt=${n}`));
    // Other listeners are unaffected: the order was processed once, first time.
    expect(logs.lines('OrdersListener', messageId)).toEqual([expect.stringContaining('attempt=1')]);
  });

  it('closes cleanly, with no error but the invoicing demo\'s dead letters', async () => {
    await app!.close();
    app = undefined;
    const errors = logs.entries.filter((entry) => entry.level === 'error' && !/dead.letter/.test(entry.message));
    expect(errors).toEqual([]);
  });
});
