import 'reflect-metadata';
import { Module, type INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { DEAD_LETTER_HEADERS, DuctapeBrokerModule } from '../lib';
import { getBrokerTestHarness, useInMemoryBrokers, type BrokerTestHarness } from '../lib/testing';
import { AppModule } from '../sample-app/app.module';
import { brokerConfig, INVOICING_GROUP, NEW_ORDERS_EVENT } from '../sample-app/broker.config';
import { InvoicingListener } from '../sample-app/invoicing.listener';
import { bootstrap } from '../sample-app/main';
import { OrdersController } from '../sample-app/orders.controller';
import { OrdersListener } from '../sample-app/orders.listener';
import { CapturingLogger, silentLogger } from './support/app';

/** The default group of OrdersListener.handleNewOrder: `<service>.<class>.<method>`. */
const ORDERS_GROUP = 'orders.OrdersListener.handleNewOrder';

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

describe('sample app: AppModule, on the testing brokers', () => {
  let app: INestApplication | undefined;
  let logs: CapturingLogger;
  let broker: BrokerTestHarness;
  let baseUrl: string;

  beforeEach(async () => {
    logs = new CapturingLogger();
    // The application's own module, unchanged: useInMemoryBrokers swaps its brokers.
    const moduleRef = await useInMemoryBrokers(Test.createTestingModule({ imports: [AppModule] }).setLogger(logs)).compile();
    app = moduleRef.createNestApplication({ logger: logs });
    await app.listen(0, '127.0.0.1');
    baseUrl = await app.getUrl();
    broker = getBrokerTestHarness(app);
  });

  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('POST /orders publishes the order and answers 201 { messageId }; OrdersListener processes it', async () => {
    const { status, body } = await postJson(baseUrl, { orderId: 'o-1', status: 'pending' });

    expect(status).toBe(201);
    const messageId = messageIdOf(body);
    expect(broker.published(NEW_ORDERS_EVENT)).toEqual([expect.objectContaining({ messageId, message: { orderId: 'o-1', status: 'pending' } })]);
    const handled = await broker.waitForHandled(NEW_ORDERS_EVENT, { group: ORDERS_GROUP, messageId });
    expect(handled).toMatchObject({ attempt: 1, message: { orderId: 'o-1', status: 'pending' } });
    expect(logs.lines('OrdersListener', messageId)).toEqual([
      `processed order messageId=${messageId} attempt=1: {"orderId":"o-1","status":"pending"}`,
    ]);
  });

  it('the failing invoicing listener is tried 3 times, then its dead-letter listener gets the message', async () => {
    const messageId = messageIdOf((await postJson(baseUrl, { orderId: 'o-2' })).body);

    // Its handler fails for good: the harness says so at once, with the handler's error.
    await expect(broker.waitForHandled(NEW_ORDERS_EVENT, { group: INVOICING_GROUP, messageId })).rejects.toThrow(
      `message ${messageId} failed for good (group ${INVOICING_GROUP}, attempt 3: Error: invoicing service unavailable (demo))`,
    );
    const deadLetter = await broker.waitForHandled(NEW_ORDERS_EVENT, { group: INVOICING_GROUP, deadLetter: true, messageId });
    expect(deadLetter).toMatchObject({ attempt: 3, message: { orderId: 'o-2' } });
    expect(deadLetter.context.headers).toMatchObject({ [DEAD_LETTER_HEADERS.reason]: 'max-attempts', [DEAD_LETTER_HEADERS.attempts]: '3' });
    expect(logs.lines('InvoicingListener', `dead letter messageId=${messageId}`)).toEqual([
      `dead letter messageId=${messageId} group=orders.invoicing attempts=3 ` + `error="Error: invoicing service unavailable (demo)": {"orderId":"o-2"}`,
    ]);
    const attempts = broker.handled(NEW_ORDERS_EVENT).filter((record) => record.group === INVOICING_GROUP && !record.deadLetter);
    expect(attempts.map((record) => [record.attempt, record.outcome, record.lastAttempt])).toEqual([
      [1, 'failed', false],
      [2, 'failed', false],
      [3, 'failed', true],
    ]);
    // The broker itself reports two retries (warn) and the dead-lettering (error).
    const brokerLines = logs.entries.filter((entry) => entry.context === 'DuctapeBroker' && entry.message.includes(messageId));
    expect(brokerLines.map((entry) => entry.level)).toEqual(['warn', 'warn', 'error']);
    // Other listeners are unaffected: the order was processed once, first time.
    expect(broker.handled(NEW_ORDERS_EVENT).filter((record) => record.group === ORDERS_GROUP)).toEqual([
      expect.objectContaining({ messageId, attempt: 1, outcome: 'succeeded' }),
    ]);
    // Its dead-letter listener took the dead letter: none is left.
    expect(broker.deadLetters(NEW_ORDERS_EVENT, INVOICING_GROUP)).toEqual([]);
  });

  it('answers 400 with the broker error code when the broker refuses the message, and publishes nothing', async () => {
    // No JSON body: Express leaves the body undefined, which the broker refuses (INVALID_MESSAGE).
    const noBody = await postOrder(baseUrl, {});
    const textBody = await postOrder(baseUrl, { headers: { 'content-type': 'text/plain' }, body: 'an order' });

    for (const { status, body } of [noBody, textBody]) {
      expect(status).toBe(400);
      expect(body).toEqual({ statusCode: 400, code: 'INVALID_MESSAGE', message: 'message must be JSON-serialisable (got undefined)' });
    }
    expect(broker.published()).toEqual([]);
    const messageId = messageIdOf((await postJson(baseUrl, { orderId: 'o-3' })).body);
    await broker.waitForHandled(NEW_ORDERS_EVENT, { group: ORDERS_GROUP, messageId });
    expect(broker.handled(NEW_ORDERS_EVENT).filter((record) => record.group === ORDERS_GROUP).map((record) => record.messageId)).toEqual([messageId]);
  });

  it('runs its prd configuration (SQS with SNS fan-out) on the testing brokers too, with no AWS', async () => {
    @Module({
      imports: [DuctapeBrokerModule.forRoot(brokerConfig('prd'))],
      controllers: [OrdersController],
      providers: [OrdersListener, InvoicingListener],
    })
    class PrdAppModule {}
    const moduleRef = await useInMemoryBrokers(Test.createTestingModule({ imports: [PrdAppModule] }).setLogger(silentLogger)).compile();
    const prd = moduleRef.createNestApplication({ logger: false });
    try {
      await prd.listen(0, '127.0.0.1');
      const harness = getBrokerTestHarness(prd);
      expect(harness.env).toBe('prd');
      const messageId = messageIdOf((await postJson(await prd.getUrl(), { orderId: 'p-1' })).body);
      await expect(harness.waitForHandled(NEW_ORDERS_EVENT, { group: ORDERS_GROUP, messageId })).resolves.toMatchObject({ env: 'prd' });
    } finally {
      await prd.close();
    }
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
