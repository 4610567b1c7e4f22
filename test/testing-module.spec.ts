import 'reflect-metadata';
import { Controller, Inject, Injectable, Module, UseGuards, type CanActivate, type ExecutionContext, type INestApplication, type ModuleMetadata } from '@nestjs/common';
import { EventPattern, Payload } from '@nestjs/microservices';
import { Test } from '@nestjs/testing';
import {
  DEAD_LETTER_HEADERS,
  DUCTAPE_BROKER_OPTIONS,
  DuctapeBrokerModule,
  MessageBrokerService,
  NonRetryableError,
  OnBrokerEvent,
  isBrokerError,
  type BrokerContext,
  type BrokerModuleOptions,
} from '../lib';
import { DuctapeBrokerServer } from '../lib/microservices';
import { getBrokerTestHarness, useInMemoryBrokers, type BrokerTestHarness } from '../lib/testing';
import { CapturingLogger, createBrokerApp, silentLogger } from './support/app';

const ORDERS = 'shop:orders';
const INVOICES = 'billing:invoices';
const FAST_RETRY = { maxAttempts: 3, initialDelayMs: 5, multiplier: 1 };

/** Options on real brokers nothing listens on here: the app could not start unless they are swapped. */
function unreachableOptions(): BrokerModuleOptions {
  return {
    env: 'prd',
    product: 'testing_helper',
    service: 'orders',
    retry: FAST_RETRY,
    brokers: [
      {
        tag: 'shop',
        envs: [
          { slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://guest:guest@127.0.0.1:1', connectTimeoutMs: 200 } },
          { slug: 'stg', type: 'kafka', config: { brokers: ['127.0.0.1:1'] } },
        ],
        topics: [{ tag: 'orders', name: 'shop-orders-topic', whenNoGroup: 'reject' }],
      },
      {
        tag: 'billing',
        // An unset variable: a real app would fail on first use of this env.
        envs: [{ slug: 'prd', type: 'sqs', config: { region: undefined } }],
        topics: [{ tag: 'invoices', retry: { maxAttempts: 2, initialDelayMs: 5 } }],
      },
    ],
  };
}

interface Order {
  orderId: string;
  total: number;
  fail?: 'once' | 'always';
}

/** Handles orders (failing on demand), and publishes an invoice for each. */
@Injectable()
class OrdersListener {
  readonly seen: string[] = [];

  constructor(private readonly broker: MessageBrokerService) {}

  @OnBrokerEvent(ORDERS, { group: 'orders.listener' })
  async onOrder(order: Order, ctx: BrokerContext): Promise<void> {
    this.seen.push(`${order.orderId}#${ctx.attempt}`);
    if (order.fail === 'always' || (order.fail === 'once' && ctx.attempt === 1)) throw new Error(`cannot take order ${order.orderId}`);
    await this.broker.publish({
      env: this.broker.env,
      event: INVOICES,
      product_tag: this.broker.product,
      input: { message: { orderId: order.orderId, amount: order.total }, correlationId: ctx.messageId },
    });
  }
}

/** A second group on the orders topic, synchronous, that never fails. */
@Injectable()
class AuditListener {
  readonly seen: string[] = [];

  @OnBrokerEvent(ORDERS, { group: 'orders.audit' })
  onOrder(order: Order): void {
    this.seen.push(order.orderId);
  }
}

/** Invoices fail when their amount is negative (billing's topic retries twice). */
@Injectable()
class BillingListener {
  @OnBrokerEvent(INVOICES, { group: 'billing.mailer' })
  onInvoice(invoice: { amount: number }): void {
    if (invoice.amount < 0) throw new Error('negative amount');
  }
}

@Module({
  imports: [DuctapeBrokerModule.forRoot(unreachableOptions())],
  providers: [OrdersListener, AuditListener, BillingListener],
})
class ShopModule {}

async function startTestingApp(imports: NonNullable<ModuleMetadata['imports']> = [ShopModule], server?: string): Promise<INestApplication> {
  const builder = Test.createTestingModule({ imports }).setLogger(silentLogger);
  const moduleRef = await useInMemoryBrokers(builder, server === undefined ? {} : { server }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  return app;
}

function publishOrder(app: INestApplication, order: Order, extra: { key?: string; headers?: Record<string, string> } = {}): Promise<string> {
  const broker = app.get(MessageBrokerService);
  return broker.publish({ env: broker.env, event: ORDERS, product_tag: broker.product, input: { message: order, ...extra } }).then((r) => r.messageId);
}

describe('useInMemoryBrokers', () => {
  const apps: INestApplication[] = [];
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
  });

  async function start(...args: Parameters<typeof startTestingApp>): Promise<{ app: INestApplication; harness: BrokerTestHarness }> {
    const app = await startTestingApp(...args);
    apps.push(app);
    return { app, harness: getBrokerTestHarness(app) };
  }

  it('without it, the same module does not start (an unset AWS region) nor reach its RabbitMQ', async () => {
    const error: unknown = await createBrokerApp(unreachableOptions()).catch((thrown: unknown) => thrown);
    expect(isBrokerError(error, 'CONFIG_INVALID')).toBe(true);
    expect((error as Error).message).toContain('brokers[1].envs[0].config.region');
    const withRegion = unreachableOptions();
    withRegion.brokers[1].envs = [{ slug: 'prd', type: 'sqs', config: { region: 'eu-west-1' } }];
    const { app, broker } = await createBrokerApp(withRegion);
    apps.push(app);
    await expect(broker.publish({ env: 'prd', event: ORDERS, product_tag: 'testing_helper', input: { message: {} } })).rejects.toThrow(
      /PUBLISH_FAILED|unavailable|connect/i,
    );
  });

  it('swaps every env of every broker for the embedded one, keeping topics, env, product, service and retry', async () => {
    const { app } = await start();
    const options = app.get<BrokerModuleOptions>(DUCTAPE_BROKER_OPTIONS);
    expect(options).toMatchObject({ env: 'prd', product: 'testing_helper', service: 'orders', retry: FAST_RETRY });
    const envs = options.brokers.flatMap((broker) => broker.envs.map((env) => ({ broker: broker.tag, env })));
    expect(envs.map(({ broker, env }) => `${broker}/${env.slug}/${env.type}`)).toEqual(['shop/prd/memory', 'shop/stg/memory', 'billing/prd/memory']);
    const servers = envs.map(({ env }) => (env.config as { server: string }).server);
    expect(new Set(servers).size).toBe(3);
    expect(options.brokers[0].topics).toEqual(unreachableOptions().brokers[0].topics);
    expect(options.brokers[1].topics).toEqual(unreachableOptions().brokers[1].topics);
  });

  it('each testing module has brokers of its own; the server option shares them between two', async () => {
    const first = await start();
    const second = await start();
    await publishOrder(first.app, { orderId: 'only-first', total: 1 });
    await first.harness.waitForHandled(ORDERS, { group: 'orders.audit' });
    expect(first.app.get(AuditListener).seen).toEqual(['only-first']);
    expect(second.app.get(AuditListener).seen).toEqual([]);
    expect(second.harness.handled()).toEqual([]);

    // Two replicas on one broker: the groups' consumers compete, each message handled once.
    const a = await start([ShopModule], 'replicas');
    const b = await start([ShopModule], 'replicas');
    for (let i = 0; i < 6; i++) await publishOrder(i % 2 ? a.app : b.app, { orderId: `r${i}`, total: i });
    await waitUntil(() => a.app.get(AuditListener).seen.length + b.app.get(AuditListener).seen.length === 6);
    expect([...a.app.get(AuditListener).seen, ...b.app.get(AuditListener).seen].sort()).toEqual(['r0', 'r1', 'r2', 'r3', 'r4', 'r5']);
    expect(a.app.get(AuditListener).seen.length).toBeGreaterThan(0);
    expect(b.app.get(AuditListener).seen.length).toBeGreaterThan(0);
  });

  it('works with forRootAsync, and with a module that is not global', async () => {
    @Injectable()
    class Settings {
      readonly url = 'amqp://127.0.0.1:1';
    }
    @Module({ providers: [Settings], exports: [Settings] })
    class SettingsModule {}
    @Module({
      imports: [
        DuctapeBrokerModule.forRootAsync({
          isGlobal: false,
          imports: [SettingsModule],
          inject: [Settings],
          useFactory: (settings: Settings) => ({
            env: 'prd',
            product: 'testing_helper',
            brokers: [{ tag: 'shop', envs: [{ slug: 'prd', type: 'rabbitmq', config: { url: settings.url } }] }],
          }),
        }),
      ],
      providers: [AuditListener],
    })
    class AsyncModule {}

    const { app, harness } = await start([AsyncModule]);
    const messageId = await publishOrder(app, { orderId: 'async', total: 2 });
    await expect(harness.waitForHandled(ORDERS, { messageId })).resolves.toMatchObject({ group: 'orders.audit', outcome: 'succeeded' });
  });

  it('closing the application discards its private brokers, delayed messages with them (logged)', async () => {
    const logs = new CapturingLogger();
    const moduleRef = await useInMemoryBrokers(Test.createTestingModule({ imports: [ShopModule] }).setLogger(logs)).compile();
    const app = moduleRef.createNestApplication({ logger: logs });
    await app.init();
    const broker = app.get(MessageBrokerService);
    await broker.publish({ env: 'prd', event: ORDERS, product_tag: 'testing_helper', input: { message: { orderId: 'late', total: 1 }, delayMs: 60_000 } });
    await app.close();
    expect(logs.lines('DuctapeBroker:Memory', 'discarded as the broker closes')).toEqual([expect.stringContaining('1 delayed message(s)')]);
  });

  it('getBrokerTestHarness refuses an application whose brokers were not swapped', async () => {
    const { app } = await createBrokerApp({ env: 'dev', product: 'p', brokers: [{ tag: 'b', envs: [{ slug: 'dev', type: 'memory' }] }] });
    apps.push(app);
    expect(() => getBrokerTestHarness(app)).toThrow(/useInMemoryBrokers/);
    const empty = await Test.createTestingModule({}).compile();
    expect(() => getBrokerTestHarness(empty)).toThrow(/no DuctapeBrokerModule/);
    await empty.close();
  });
});

describe('BrokerTestHarness', () => {
  let app: INestApplication;
  let harness: BrokerTestHarness;

  beforeEach(async () => {
    app = await startTestingApp();
    harness = getBrokerTestHarness(app);
  });

  afterEach(async () => {
    await app.close();
  });

  it('published(): what was accepted, in the order of the publish calls, as consumers get it', async () => {
    const order: Order = { orderId: 'p1', total: 10 };
    const first = await publishOrder(app, order, { key: 'k1', headers: { 'x-tenant': 't1' } });
    order.total = 999; // changed after publishing: not what was published
    const broker = app.get(MessageBrokerService);
    // Refused by the broker: never listed.
    await expect(broker.publish({ env: 'prd', event: ORDERS, product_tag: 'testing_helper', input: { message: undefined } })).rejects.toThrow();
    const [second, third] = await Promise.all([
      publishOrder(app, { orderId: 'p2', total: 20 }),
      broker.publish({ env: 'prd', event: INVOICES, product_tag: 'testing_helper', input: { message: { when: new Date(0) }, delayMs: 60_000 } }),
    ]);

    expect(harness.published(ORDERS)).toEqual([
      {
        event: ORDERS,
        env: 'prd',
        messageId: first,
        message: { orderId: 'p1', total: 10 },
        headers: { 'x-tenant': 't1' },
        key: 'k1',
        correlationId: undefined,
        delayMs: undefined,
        acceptedAt: expect.any(Date) as unknown,
      },
      expect.objectContaining({ messageId: second, message: { orderId: 'p2', total: 20 } }),
    ]);
    // Every event, in call order; a Date arrives as JSON carries it.
    // (the orders listener publishes an invoice per order, too)
    const mine = new Set([first, second, third.messageId]);
    const all = harness.published().filter((record) => mine.has(record.messageId));
    expect(all.map((record) => record.messageId)).toEqual([first, second, third.messageId]);
    expect(all[2]).toMatchObject({ event: INVOICES, message: { when: '1970-01-01T00:00:00.000Z' }, delayMs: 60_000 });
    expect(harness.published(ORDERS, { env: 'stg' })).toEqual([]);
  });

  it('waitForPublished(): resolves with a publish made later (by a handler), or one made before', async () => {
    const invoice = harness.waitForPublished<{ orderId: string; amount: number }>(INVOICES, { where: (message) => message.orderId === 'w1' });
    const messageId = await publishOrder(app, { orderId: 'w1', total: 42 });
    await expect(invoice).resolves.toMatchObject({ message: { orderId: 'w1', amount: 42 }, correlationId: messageId });
    // Already published: resolves at once.
    await expect(harness.waitForPublished(ORDERS, { messageId, timeoutMs: 20 })).resolves.toMatchObject({ messageId });
    await expect(harness.waitForPublished(ORDERS, { messageId: 'no-such-id', timeoutMs: 50 })).rejects.toThrow(
      /waitForPublished\('shop:orders', \{ messageId: "no-such-id" \}\) timed out after 50 ms; published to it meanwhile: message /,
    );
  });

  it('waitForHandled(): a success, past or future, per group, with the message and context', async () => {
    const messageId = await publishOrder(app, { orderId: 'h1', total: 5 });
    const audit = await harness.waitForHandled<Order>(ORDERS, { group: 'orders.audit', messageId });
    expect(audit).toMatchObject({
      event: ORDERS,
      env: 'prd',
      group: 'orders.audit',
      deadLetter: false,
      messageId,
      attempt: 1,
      message: { orderId: 'h1', total: 5 },
      outcome: 'succeeded',
      lastAttempt: false,
    });
    expect(audit.context).toMatchObject({ messageId, event: ORDERS, attempt: 1 });
    expect(audit.error).toBeUndefined();
    // The listener's handler published an invoice before it resolved.
    await harness.waitForHandled(ORDERS, { group: 'orders.listener', messageId });
    expect(harness.published(INVOICES)).toEqual([expect.objectContaining({ correlationId: messageId })]);
    // where: the message decides.
    const later = harness.waitForHandled<Order>(ORDERS, { where: (order) => order.orderId === 'h2' });
    await publishOrder(app, { orderId: 'h2', total: 6 });
    await expect(later).resolves.toMatchObject({ message: { orderId: 'h2' } });
  });

  it('waitForHandled(): a handler that fails once resolves on its retry; outcome "failed" gets the failure', async () => {
    const messageId = await publishOrder(app, { orderId: 'f1', total: 1, fail: 'once' });
    const handled = await harness.waitForHandled(ORDERS, { group: 'orders.listener', messageId });
    expect(handled.attempt).toBe(2);
    const failure = await harness.waitForHandled(ORDERS, { group: 'orders.listener', messageId, outcome: 'failed' });
    expect(failure).toMatchObject({ attempt: 1, outcome: 'failed', lastAttempt: false });
    expect(failure.error).toEqual(new Error('cannot take order f1'));
    expect(app.get(OrdersListener).seen).toEqual(['f1#1', 'f1#2']);
  });

  it('waitForHandled(): rejects as soon as the message failed for good, with the handler error, not at its timeout', async () => {
    const messageId = await publishOrder(app, { orderId: 'bad', total: 1, fail: 'always' });
    const startedAt = Date.now();
    const error = await harness.waitForHandled(ORDERS, { group: 'orders.listener', messageId, timeoutMs: 3000 }).catch((e: unknown) => e);
    expect(Date.now() - startedAt).toBeLessThan(1500);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toBe(
      `waitForHandled('shop:orders', { group: "orders.listener", messageId: "${messageId}" }): message ${messageId} failed for good ` +
        '(group orders.listener, attempt 3: Error: cannot take order bad)',
    );
    // Without a group it still waits while another group can succeed: the audit group does.
    await expect(harness.waitForHandled(ORDERS, { messageId })).resolves.toMatchObject({ group: 'orders.audit' });
    const failures = harness.handled(ORDERS).filter((record) => record.outcome === 'failed');
    expect(failures.map((record) => [record.attempt, record.lastAttempt])).toEqual([
      [1, false],
      [2, false],
      [3, true],
    ]);
  });

  it('waitForHandled(): times out saying what was handled instead, and rejects when the app closes', async () => {
    await publishOrder(app, { orderId: 'other', total: 1 });
    await harness.waitForHandled(ORDERS, { group: 'orders.listener' });
    await expect(harness.waitForHandled(ORDERS, { where: (order: Order) => order.orderId === 'missing', timeoutMs: 100 })).rejects.toThrow(
      /timed out after 100 ms; handled meanwhile: group orders\.(listener|audit), message [0-9a-f-]+, attempt 1: succeeded; group/,
    );
    await expect(harness.waitForHandled(INVOICES, { deadLetter: true, timeoutMs: 50 })).rejects.toThrow(
      /handled meanwhile: nothing; no handler of its dead letters is subscribed in env 'prd'/,
    );
    const pending = harness.waitForHandled(ORDERS, { messageId: 'never', timeoutMs: 5000 });
    await app.close();
    await expect(pending).rejects.toThrow(/the application closed before it happened/);
    app = await startTestingApp(); // for afterEach
  });

  it('deadLetters(): a handler that fails into the dead letters; read without draining, then reprocessed', async () => {
    const broker = app.get(MessageBrokerService);
    const { messageId } = await broker.publish({
      env: 'prd',
      event: INVOICES,
      product_tag: 'testing_helper',
      input: { message: { orderId: 'd1', amount: -5 }, key: 'd1', correlationId: 'corr-1' },
    });
    // The topic's own retry policy (2 attempts) applies: the second failure is the last.
    const last = await harness.waitForHandled(INVOICES, { messageId, outcome: 'failed', where: (_m, handled) => handled.lastAttempt });
    expect(last).toMatchObject({ attempt: 2, group: 'billing.mailer' });
    await waitUntil(() => harness.deadLetters(INVOICES, 'billing.mailer').length > 0);

    const [deadLetter, ...others] = harness.deadLetters<{ orderId: string; amount: number }>(INVOICES, 'billing.mailer');
    expect(others).toEqual([]);
    expect(deadLetter).toEqual({
      messageId,
      message: { orderId: 'd1', amount: -5 },
      headers: expect.objectContaining({ [DEAD_LETTER_HEADERS.reason]: 'max-attempts' }) as unknown,
      error: 'Error: negative amount',
      attempts: 2,
      reason: 'max-attempts',
      failedAt: expect.any(Date) as unknown,
      publishedAt: expect.any(Date) as unknown,
      key: 'd1',
      correlationId: 'corr-1',
    });
    // Reading does not drain: still there, and the module's own reprocessing moves it back.
    expect(harness.deadLetters(INVOICES, 'billing.mailer')).toHaveLength(1);
    expect(harness.deadLetters(INVOICES, 'no.such.group')).toEqual([]);
    await expect(broker.reprocessDeadLetters({ env: 'prd', event: INVOICES, product_tag: 'testing_helper', group: 'billing.mailer' })).resolves.toBe(1);
    await harness.waitForHandled(INVOICES, { messageId, outcome: 'failed', where: (_m, handled) => handled.lastAttempt && handled.durationMs >= 0 && handled !== last });
    await waitUntil(() => harness.deadLetters(INVOICES, 'billing.mailer').length === 1);
    expect(() => harness.deadLetters('billing:nope', 'g')).toThrow(/no topic 'nope'/);
  });

  it('deadLetters(): a poison message (not JSON) shows its text and reason', async () => {
    const options = app.get<BrokerModuleOptions>(DUCTAPE_BROKER_OPTIONS);
    const server = (options.brokers[0].envs[0].config as { server: string }).server;
    const { MemoryBrokerServer } = await import('../lib');
    MemoryBrokerServer.shared(server).publishRaw('shop-orders-topic', 'not json');
    await waitUntil(() => harness.deadLetters(ORDERS, 'orders.audit').length === 1);
    expect(harness.deadLetters(ORDERS, 'orders.audit')[0]).toMatchObject({ message: 'not json', reason: 'poison', attempts: 1 });
  });

  it('reset(): forgets what was published and handled, and empties the dead letters', async () => {
    const broker = app.get(MessageBrokerService);
    const { messageId } = await broker.publish({ env: 'prd', event: INVOICES, product_tag: 'testing_helper', input: { message: { amount: -1 } } });
    await waitUntil(() => harness.deadLetters(INVOICES, 'billing.mailer').length === 1);
    expect(harness.published()).toHaveLength(1);
    expect(harness.handled(INVOICES).map((record) => record.messageId)).toEqual([messageId, messageId]);

    harness.reset();
    expect(harness.published()).toEqual([]);
    expect(harness.handled()).toEqual([]);
    expect(harness.deadLetters(INVOICES, 'billing.mailer')).toEqual([]);
    // Still recording afterwards.
    const next = await publishOrder(app, { orderId: 'after-reset', total: 1 });
    await harness.waitForHandled(ORDERS, { messageId: next, group: 'orders.audit' });
    expect(harness.published(ORDERS).map((record) => record.messageId)).toEqual([next]);
    expect(harness.published()).toHaveLength(2); // and the invoice its listener published
  });

  it('subscribe() in code is recorded too, until unsubscribed', async () => {
    const broker = app.get(MessageBrokerService);
    const subscription = await broker.subscribe<Order>({
      env: 'prd',
      event: ORDERS,
      product_tag: 'testing_helper',
      input: { group: 'code.subscriber', callback: async () => undefined },
    });
    expect(subscription).toMatchObject({ event: ORDERS, env: 'prd', group: 'code.subscriber' });
    const messageId = await publishOrder(app, { orderId: 's1', total: 1 });
    await expect(harness.waitForHandled(ORDERS, { group: 'code.subscriber', messageId })).resolves.toMatchObject({ outcome: 'succeeded' });
    await subscription.unsubscribe();
    // A refused subscription is refused as without the harness.
    await expect(
      broker.subscribe({ env: 'prd', event: ORDERS, product_tag: 'testing_helper', input: { group: 'bad group', callback: () => undefined } }),
    ).rejects.toThrow(/input.group must be a valid name/);
  });
});

const REFUSALS = 'shop:refusals';
const BRIDGED = 'shop:bridged';

interface Refusal {
  id: string;
  blocked?: boolean;
  bad?: boolean;
  /** Fails its first attempt with an error only named NonRetryableError (as another copy of the package's is). */
  foreign?: boolean;
}

/** The shop options with two more topics, for the messages that skip the retries. */
function refusalOptions(): BrokerModuleOptions {
  const options = unreachableOptions();
  const [shop, ...others] = options.brokers;
  return { ...options, brokers: [{ ...shop, topics: [...(shop.topics ?? []), { tag: 'refusals' }, { tag: 'bridged' }] }, ...others] };
}

@Injectable()
class RefusingGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    return context.switchToRpc().getData<Refusal>().blocked !== true;
  }
}

/** One group behind a guard, one whose handler says a message can never succeed. */
@Injectable()
class RefusalsListener {
  @OnBrokerEvent(REFUSALS, { group: 'refusals.guarded' })
  @UseGuards(RefusingGuard)
  onGuarded(): void {}

  @OnBrokerEvent(REFUSALS, { group: 'refusals.strict' })
  onStrict(message: Refusal): void {
    if (message.bad) throw new NonRetryableError(`no such customer in ${message.id}`);
  }

  @OnBrokerEvent(REFUSALS, { group: 'refusals.foreign' })
  onForeign(message: Refusal, ctx: BrokerContext): void {
    if (!message.foreign || ctx.attempt > 1) return;
    const error = new Error(`foreign refusal of ${message.id}`);
    error.name = 'NonRetryableError';
    throw error;
  }
}

@Controller()
class BridgedController {
  @EventPattern(BRIDGED)
  handle(@Payload() message: Refusal): void {
    throw new NonRetryableError(`cannot bridge ${message.id}`);
  }
}

@Module({
  imports: [DuctapeBrokerModule.forRoot(refusalOptions())],
  providers: [RefusingGuard, RefusalsListener],
  controllers: [BridgedController],
})
class RefusalsModule {}

describe('BrokerTestHarness and a NonRetryableError (the retry policy would allow 3 attempts)', () => {
  let app: INestApplication;
  let harness: BrokerTestHarness;

  beforeEach(async () => {
    app = await startTestingApp([RefusalsModule]);
    harness = getBrokerTestHarness(app);
  });

  afterEach(async () => {
    await app.close();
  });

  async function publish(event: string, message: Refusal): Promise<string> {
    const broker = app.get(MessageBrokerService);
    return (await broker.publish({ env: broker.env, event, product_tag: broker.product, input: { message } })).messageId;
  }

  /** What waitForHandled rejected with, and how long it took (its timeout is 3000 ms). */
  async function failure(event: string, group: string, messageId: string): Promise<{ error: unknown; ms: number }> {
    const startedAt = Date.now();
    const error = await harness.waitForHandled(event, { group, messageId, timeoutMs: 3000 }).then(
      () => undefined,
      (thrown: unknown) => thrown,
    );
    return { error, ms: Date.now() - startedAt };
  }

  it('a message a guard refused failed for good at attempt 1: waitForHandled rejects at once, its dead letter says guard', async () => {
    const messageId = await publish(REFUSALS, { id: 'n1', blocked: true });
    const { error, ms } = await failure(REFUSALS, 'refusals.guarded', messageId);
    expect(ms).toBeLessThan(1500);
    expect((error as Error).message).toMatch(new RegExp(`message ${messageId} failed for good \\(group refusals\\.guarded, attempt 1: NonRetryableError: refused by a guard`));
    expect(harness.handled(REFUSALS).filter((record) => record.group === 'refusals.guarded')).toEqual([
      expect.objectContaining({ attempt: 1, outcome: 'failed', lastAttempt: true }),
    ]);
    await waitUntil(() => harness.deadLetters(REFUSALS, 'refusals.guarded').length > 0);
    expect(harness.deadLetters(REFUSALS, 'refusals.guarded')).toEqual([expect.objectContaining({ messageId, reason: 'guard', attempts: 1 })]);
  });

  it('a handler that threw a NonRetryableError failed for good at attempt 1: waitForHandled rejects at once, its dead letter says non-retryable', async () => {
    const messageId = await publish(REFUSALS, { id: 'n2', bad: true });
    const { error, ms } = await failure(REFUSALS, 'refusals.strict', messageId);
    expect(ms).toBeLessThan(1500);
    expect((error as Error).message).toContain(`message ${messageId} failed for good (group refusals.strict, attempt 1: NonRetryableError: no such customer in n2)`);
    await waitUntil(() => harness.deadLetters(REFUSALS, 'refusals.strict').length > 0);
    expect(harness.deadLetters(REFUSALS, 'refusals.strict')).toEqual([
      expect.objectContaining({ messageId, reason: 'non-retryable', attempts: 1, error: 'NonRetryableError: no such customer in n2' }),
    ]);
  });

  it('an @OnBrokerEvent error only named NonRetryableError is retried by the delivery layer, and the harness says so (not failed for good)', async () => {
    const messageId = await publish(REFUSALS, { id: 'n4', foreign: true });
    await expect(harness.waitForHandled(REFUSALS, { group: 'refusals.foreign', messageId })).resolves.toMatchObject({ attempt: 2 });
    expect(harness.handled(REFUSALS).filter((record) => record.group === 'refusals.foreign' && record.outcome === 'failed')).toEqual([
      expect.objectContaining({ attempt: 1, lastAttempt: false }),
    ]);
  });

  it('an @EventPattern handler (DuctapeBrokerServer) that threw a NonRetryableError: the same', async () => {
    app.connectMicroservice({ strategy: new DuctapeBrokerServer(app.get(MessageBrokerService)) });
    await app.startAllMicroservices();
    const group = 'orders.event-pattern.shop.bridged';
    const messageId = await publish(BRIDGED, { id: 'n3' });
    const { error, ms } = await failure(BRIDGED, group, messageId);
    expect(ms).toBeLessThan(1500);
    expect((error as Error).message).toContain(`message ${messageId} failed for good (group ${group}, attempt 1: NonRetryableError: cannot bridge n3)`);
    await waitUntil(() => harness.deadLetters(BRIDGED, group).length > 0);
    expect(harness.deadLetters(BRIDGED, group)).toEqual([expect.objectContaining({ messageId, reason: 'non-retryable', attempts: 1 })]);
  });
});

/** A service that injects the options, to show the override reaches every consumer of them. */
@Injectable()
class OptionsReader {
  constructor(@Inject(DUCTAPE_BROKER_OPTIONS) readonly options: BrokerModuleOptions) {}
}

describe('useInMemoryBrokers with a bad configuration', () => {
  it('still fails startup with CONFIG_INVALID for what is wrong beside the connections', async () => {
    @Module({
      imports: [DuctapeBrokerModule.forRoot({ env: 'prd', product: 'has space', brokers: [{ tag: 'b', envs: [{ slug: 'prd', type: 'memory' }] }] })],
      providers: [OptionsReader],
    })
    class BadModule {}
    const error: unknown = await startTestingApp([BadModule]).catch((thrown: unknown) => thrown);
    expect(isBrokerError(error, 'CONFIG_INVALID')).toBe(true);
    expect((error as Error).message).toContain('product');
  });
});

async function waitUntil(condition: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
