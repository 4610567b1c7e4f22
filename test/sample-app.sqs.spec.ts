import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { ListSubscriptionsByTopicCommand, ListTopicsCommand } from '@aws-sdk/client-sns';
import type * as SampleBrokerConfig from '../sample-app/broker.config';
import { CapturingLogger } from './support/app';
import { describeWithBroker } from './support/broker-availability';
import { runUnique } from './support/names';
import { deleteCreatedSqsResourcesAfterAll, snsClient } from './support/sqs';
import { waitFor } from './support/wait';

/**
 * The sample as it is, but under a product of this run's own (the README's `my_product` may be a
 * user's, on an SQS_ENDPOINT of theirs). Its topic in prd is `<PRODUCT>.prd.new-orders`: on SQS the
 * SNS topic `<PRODUCT>_prd_new-orders`, with one queue per group subscribed to it. The file deletes
 * exactly the queues, topic and subscriptions it created.
 */
const PRODUCT = runUnique('sample-app');
// doMock, not hoisted: the sample is first loaded (dynamically) by the tests below.
jest.doMock('../sample-app/broker.config', () => {
  const actual = jest.requireActual<typeof SampleBrokerConfig>('../sample-app/broker.config');
  return { ...actual, brokerConfig: (env?: string) => ({ ...actual.brokerConfig(env), product: PRODUCT }) };
});
deleteCreatedSqsResourcesAfterAll();

const TOPIC = `${PRODUCT}_prd_new-orders`;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describeWithBroker('sqs', 'sample app on AWS SQS with SNS fan-out (DUCTAPE_ENV=prd)', () => {
  const saved = { env: process.env.DUCTAPE_ENV, key: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
  const logs = new CapturingLogger();
  let app: INestApplication | undefined;
  let baseUrl: string;

  beforeAll(async () => {
    // The sample takes the SDK's default credentials: here, from the environment, as on a laptop.
    process.env.AWS_ACCESS_KEY_ID = 'sample-key';
    process.env.AWS_SECRET_ACCESS_KEY = 'sample-secret-access-key';
    process.env.DUCTAPE_ENV = 'prd';
    // AppModule reads DUCTAPE_ENV when it is loaded: set above, then load the sample (in this file's
    // module registry, where the SDK records what it creates).
    const { bootstrap } = await import('../sample-app/main');
    app = await bootstrap(0, { logger: logs });
    baseUrl = await app.getUrl();
  }, 15_000);

  afterAll(async () => {
    await app?.close();
    for (const [name, value] of [['DUCTAPE_ENV', saved.env], ['AWS_ACCESS_KEY_ID', saved.key], ['AWS_SECRET_ACCESS_KEY', saved.secret]] as const) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  it('fans out through one SNS topic to a queue per group, and OrdersListener gets the demo order', async () => {
    const [published] = logs.lines('Bootstrap', 'published demo order demo-1');
    const messageId = /messageId=(\S+)$/.exec(published ?? '')?.[1];
    expect(messageId).toMatch(UUID);
    await waitFor(() => logs.lines('OrdersListener', `messageId=${messageId}`).length > 0, 'OrdersListener to process the demo order', 5000);

    const { Topics = [] } = await snsClient().send(new ListTopicsCommand({}));
    const topicArn = Topics.map((topic) => topic.TopicArn!).find((arn) => arn.endsWith(`:${TOPIC}`));
    expect(topicArn).toBeDefined();
    const { Subscriptions = [] } = await snsClient().send(new ListSubscriptionsByTopicCommand({ TopicArn: topicArn }));
    expect(Subscriptions.map((subscription) => subscription.Endpoint!.split(':').pop()).sort()).toEqual([
      `${TOPIC}__orders_OrdersListener_handleNewOrder`,
      `${TOPIC}__orders_invoicing`,
    ]);
  });

  it('POST /orders: OrdersListener processes it once; the invoicing listener fails 3 times and its dead-letter listener gets it', async () => {
    const response = await fetch(`${baseUrl}/orders`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ orderId: 's-1' }) });
    expect(response.status).toBe(201);
    const { messageId } = (await response.json()) as { messageId: string };
    expect(messageId).toMatch(UUID);
    // Retries wait whole seconds on SQS (its visibility timeout): 200 ms and 400 ms become 1 s each.
    await waitFor(() => logs.lines('InvoicingListener', `dead letter messageId=${messageId}`).length > 0, 'the dead letter of orders.invoicing', 10_000);
    expect(logs.lines('InvoicingListener', `invoicing order messageId=${messageId}`)).toEqual(
      [1, 2, 3].map((n) => `invoicing order messageId=${messageId} attempt=${n}`),
    );
    expect(logs.lines('OrdersListener', messageId)).toEqual([`processed order messageId=${messageId} attempt=1: {"orderId":"s-1"}`]);
  }, 15_000);

  it('closes cleanly, and no log line carries the secret access key', async () => {
    await app!.close();
    app = undefined;
    const errors = logs.entries.filter((entry) => entry.level === 'error' && !/dead.letter/.test(entry.message));
    expect(errors).toEqual([]);
    expect(logs.entries.filter((entry) => entry.text.includes('sample-secret-access-key'))).toEqual([]);
  });
});
