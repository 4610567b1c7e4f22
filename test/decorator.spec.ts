import 'reflect-metadata';
import { Controller, Global, Inject, Injectable, Module, Scope, type INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import {
  BrokerHandlerInvoker,
  DuctapeBrokerModule,
  MemoryBrokerServer,
  MessageBrokerService,
  OnBrokerEvent,
  type BrokerContext,
  type BrokerHandlerDescriptor,
  type BrokerMessageHandler,
  type BrokerModuleOptions,
} from '../lib';
import { createBrokerApp, startupError } from './support/app';
import { waitFor } from './support/wait';

const SERVER = 'decorator-spec';
const server = () => MemoryBrokerServer.shared(SERVER);

const options = (overrides: Partial<BrokerModuleOptions> = {}): BrokerModuleOptions => ({
  env: 'prd',
  product: 'shop',
  service: 'orders',
  brokers: [
    {
      tag: 'sqsbroker',
      envs: [
        { slug: 'prd', type: 'memory', config: { server: SERVER } },
        { slug: 'stg', type: 'memory', config: { server: SERVER } },
      ],
      topics: [{ tag: 'new-orders' }, { tag: 'refunds' }, { tag: 'audits' }],
    },
  ],
  retry: { maxAttempts: 2, initialDelayMs: 10 },
  ...overrides,
});

@Injectable()
class Ledger {
  readonly entries: string[] = [];
  record(entry: string): void {
    this.entries.push(entry);
  }
}

@Injectable()
class OrdersListener {
  constructor(private readonly ledger: Ledger) {}

  @OnBrokerEvent('sqsbroker:new-orders')
  async onOrder(message: { id: string }, ctx: BrokerContext): Promise<void> {
    // `this` is the provider instance: its injected dependencies are there.
    this.ledger.record(`order ${message.id} attempt ${ctx.attempt} env ${ctx.env}`);
  }

  @OnBrokerEvent('sqsbroker:new-orders', { group: 'audit-trail' })
  @OnBrokerEvent('sqsbroker:refunds', { group: 'audit-trail' })
  async audit(message: { id: string }, ctx: BrokerContext): Promise<void> {
    this.ledger.record(`audit ${ctx.event} ${message.id}`);
  }

  @OnBrokerEvent('sqsbroker:new-orders', { env: 'stg' })
  async onStagingOrder(message: { id: string }): Promise<void> {
    this.ledger.record(`stg order ${message.id}`);
  }

  notAHandler(): void {
    this.ledger.record('never called by the broker');
  }
}

@Controller()
class RefundsController {
  constructor(private readonly ledger: Ledger) {}

  @OnBrokerEvent('sqsbroker:refunds', { retry: { maxAttempts: 3, initialDelayMs: 5 } })
  async onRefund(message: { id: string }, ctx: BrokerContext): Promise<void> {
    this.ledger.record(`refund ${message.id} attempt ${ctx.attempt}`);
    if (ctx.attempt < 3) throw new Error('flaky');
  }
}

@Module({ providers: [Ledger, OrdersListener], controllers: [RefundsController], exports: [Ledger] })
class ShopModule {}

describe('@OnBrokerEvent', () => {
  let app: INestApplication | undefined;

  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('is discovered on providers and controllers, stacks, and runs on the provider instance', async () => {
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(), { imports: [ShopModule] }));
    const ledger = app.get(Ledger);
    await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { id: 'o1' } } });
    await broker.publish({ env: 'prd', event: 'sqsbroker:refunds', product_tag: 'shop', input: { message: { id: 'r1' } } });
    await broker.publish({ env: 'stg', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { id: 's1' } } });
    await waitFor(() => ledger.entries.length === 7, `7 ledger entries (have ${ledger.entries.join(' | ')})`);
    expect([...ledger.entries].sort()).toEqual(
      [
        'order o1 attempt 1 env prd',
        'audit sqsbroker:new-orders o1',
        'audit sqsbroker:refunds r1',
        'refund r1 attempt 1',
        'refund r1 attempt 2',
        'refund r1 attempt 3',
        'stg order s1',
      ].sort(),
    );
  });

  it('has every consumer running when app.init() resolves, in groups named <service>.<Class>.<method>', async () => {
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(), { imports: [ShopModule] }));
    expect(server().consumerCount('shop.prd.new-orders', 'orders.OrdersListener.onOrder')).toBe(1);
    expect(server().consumerCount('shop.prd.new-orders', 'audit-trail')).toBe(1);
    expect(server().consumerCount('shop.prd.refunds', 'audit-trail')).toBe(1);
    expect(server().consumerCount('shop.prd.refunds', 'orders.RefundsController.onRefund')).toBe(1);
    expect(server().consumerCount('shop.stg.new-orders', 'orders.OrdersListener.onStagingOrder')).toBe(1);
    // Published in the same tick as init resolved: both groups of the topic get it.
    await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { id: 'first' } } });
    const ledger = app.get(Ledger);
    await waitFor(() => ledger.entries.length === 2, 'both groups');
    expect([...ledger.entries].sort()).toEqual(['audit sqsbroker:new-orders first', 'order first attempt 1 env prd']);
  });

  it('with registerHandlers: false, subscribes none of them (a publish-only replica); subscribe() in code still works', async () => {
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options({ registerHandlers: false }), { imports: [ShopModule] }));
    expect(server().consumerCount('shop.prd.new-orders', 'orders.OrdersListener.onOrder')).toBe(0);
    expect(server().consumerCount('shop.prd.refunds', 'orders.RefundsController.onRefund')).toBe(0);
    const seen: string[] = [];
    await broker.subscribe({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { group: 'in-code', callback: (message: { id: string }) => void seen.push(message.id) } });
    await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { id: 'o2' } } });
    await waitFor(() => seen.length === 1, 'the in-code subscription');
    expect(app.get(Ledger).entries).toEqual([]);
  });

  it('refuses a registerHandlers that is not a boolean', async () => {
    const error = await startupError(options({ registerHandlers: 'no' as unknown as boolean }), { imports: [ShopModule] });
    expect(error).toMatchObject({ code: 'CONFIG_INVALID', problems: ['registerHandlers: must be true or false'] });
  });

  it('runs every handler through the module\'s handlerInvoker: it wraps each once, knows which it wraps, and what it throws is the handler\'s failure', async () => {
    const seen: string[] = [];
    @Injectable()
    class CountingInvoker extends BrokerHandlerInvoker {
      override decorate(handler: BrokerMessageHandler, descriptor: BrokerHandlerDescriptor): BrokerMessageHandler {
        return async (message, ctx) => {
          seen.push(`${descriptor.className}.${descriptor.methodName} ${descriptor.group} ${ctx.event} attempt ${ctx.attempt}`);
          // A refusal of the invoker's own: retried, then dead-lettered, as a handler's error.
          if ((message as { id: string }).id === 'refused') throw new Error('refused by the invoker');
          return handler(message, ctx);
        };
      }
    }
    const moduleRef = await Test.createTestingModule({
      imports: [DuctapeBrokerModule.forRoot({ ...options(), handlerInvoker: CountingInvoker }), ShopModule],
    }).compile();
    app = moduleRef.createNestApplication({ logger: false });
    await app.init();
    const broker = app.get(MessageBrokerService);
    const ledger = app.get(Ledger);
    await broker.publish({ env: 'prd', event: 'sqsbroker:refunds', product_tag: 'shop', input: { message: { id: 'r9' } } });
    await waitFor(() => ledger.entries.filter((entry) => entry.includes('r9')).length === 4, 'the refund (three attempts) and its audit');
    expect(seen.filter((line) => line.startsWith('RefundsController')).sort()).toEqual(
      ['RefundsController.onRefund orders.RefundsController.onRefund sqsbroker:refunds attempt 1', 'RefundsController.onRefund orders.RefundsController.onRefund sqsbroker:refunds attempt 2', 'RefundsController.onRefund orders.RefundsController.onRefund sqsbroker:refunds attempt 3'],
    );
    expect(seen).toContain('OrdersListener.audit audit-trail sqsbroker:refunds attempt 1');
    await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { id: 'refused' } } });
    await waitFor(() => seen.filter((line) => line.startsWith('OrdersListener.onOrder ')).length === 2, 'two attempts refused by the invoker (maxAttempts 2)');
    expect(ledger.entries.filter((entry) => entry.includes('refused'))).toEqual([]);
  });

  it("a handlerInvoker may inject global providers, and what the modules given to forRootAsync({ imports }) export; not another module's providers", async () => {
    @Injectable()
    class Counter {
      readonly ids: string[] = [];
    }
    @Module({ providers: [Counter], exports: [Counter] })
    class MetricsModule {}
    @Global()
    @Module({ providers: [Counter], exports: [Counter] })
    class GlobalMetricsModule {}
    @Injectable()
    class CountingInvoker extends BrokerHandlerInvoker {
      constructor(private readonly counter: Counter) {
        super();
      }

      override decorate(handler: BrokerMessageHandler): BrokerMessageHandler {
        return (message, ctx) => {
          this.counter.ids.push((message as { id: string }).id);
          return handler(message, ctx);
        };
      }
    }
    const invokedOnce = async (id: string, imports: Parameters<typeof Test.createTestingModule>[0]['imports']): Promise<void> => {
      const moduleRef = await Test.createTestingModule({ imports }).compile();
      app = moduleRef.createNestApplication({ logger: false });
      await app.init();
      const counter = app.get(Counter, { strict: false });
      await app.get(MessageBrokerService).publish({ env: 'prd', event: 'sqsbroker:refunds', product_tag: 'shop', input: { message: { id } } });
      // The audit handler once, the refund handler three times (it fails twice).
      await waitFor(() => counter.ids.filter((seen) => seen === id).length === 4, 'four handler calls through the invoker');
      await app.close();
      app = undefined;
    };

    // forRoot: the broker module imports none of your modules.
    const refused: unknown = await Test.createTestingModule({
      imports: [DuctapeBrokerModule.forRoot({ ...options(), handlerInvoker: CountingInvoker }), MetricsModule, ShopModule],
    })
      .compile()
      .catch((error: unknown) => error);
    expect((refused as Error).message).toContain("Nest can't resolve dependencies of the CountingInvoker (?)");

    await invokedOnce('i1', [DuctapeBrokerModule.forRootAsync({ imports: [MetricsModule], useFactory: () => options(), handlerInvoker: CountingInvoker }), ShopModule]);
    await invokedOnce('i2', [DuctapeBrokerModule.forRoot({ ...options(), handlerInvoker: CountingInvoker }), GlobalMetricsModule, ShopModule]);
  });

  it('subscribes an aliased provider (useExisting) once, not twice', async () => {
    @Module({ providers: [Ledger, OrdersListener, { provide: 'ALIAS', useExisting: OrdersListener }] })
    class AliasModule {}
    ({ app } = await createBrokerApp(options(), { imports: [AliasModule] }));
    expect(server().consumerCount('shop.prd.new-orders', 'orders.OrdersListener.onOrder')).toBe(1);
  });

  it('uses the decorator options: concurrency, retry and dead letters', async () => {
    const events: string[] = [];
    @Injectable()
    class Fragile {
      @OnBrokerEvent('sqsbroker:audits', { group: 'fragile', concurrency: 2, retry: { maxAttempts: 2, initialDelayMs: 5 } })
      fail(_message: unknown, ctx: BrokerContext): void {
        events.push(`attempt ${ctx.attempt}`);
        throw new Error('always');
      }

      @OnBrokerEvent('sqsbroker:audits', { group: 'fragile', deadLetter: true })
      dead(_message: unknown, ctx: BrokerContext): void {
        events.push(`dead after ${ctx.headers['x-ductape-attempts']}`);
      }
    }
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(), { providers: [Fragile] }));
    await broker.publish({ env: 'prd', event: 'sqsbroker:audits', product_tag: 'shop', input: { message: {} } });
    await waitFor(() => events.length === 3, 'two attempts and the dead letter');
    expect(events).toEqual(['attempt 1', 'attempt 2', 'dead after 2']);
  });

  it.each([
    ['request-scoped', Scope.REQUEST],
    ['transient', Scope.TRANSIENT],
  ])('refuses a %s provider at startup with a clear error', async (scope, value) => {
    @Injectable({ scope: value })
    class Scoped {
      @OnBrokerEvent('sqsbroker:new-orders')
      handle(): void {}
    }
    const error = await startupError(options(), { providers: [Scoped] });
    expect(error.code).toBe('INVALID_SUBSCRIPTION');
    expect(error.message).toContain(`Scoped.handle: the provider is ${scope}`);
  });

  it.each([
    ['BROKER_NOT_FOUND', 'nobroker:new-orders', {}],
    ['BROKER_ENV_NOT_FOUND', 'sqsbroker:new-orders', { env: 'qa' }],
    ['TOPIC_NOT_FOUND', 'sqsbroker:unlisted', {}],
    ['INVALID_EVENT', 'no colon here', {}],
    ['PRODUCT_NOT_FOUND', 'sqsbroker:new-orders', { product: 'blog' }],
  ])('fails startup with %s for a decorated event it cannot route', async (code, event, extra) => {
    @Injectable()
    class Misrouted {
      @OnBrokerEvent(event, extra)
      handle(): void {}
    }
    const error = await startupError(options(), { providers: [Misrouted] });
    expect(error.code).toBe(code);
  });

  it('refuses to decorate something that is not a method', () => {
    const decorator = OnBrokerEvent('sqsbroker:new-orders');
    // What plain JavaScript (or a cast) could hand it: TypeScript refuses a non-method here.
    expect(() => decorator({}, 'field', { value: 42 } as unknown as TypedPropertyDescriptor<() => void>)).toThrow(/can only decorate a method/);
  });
});

describe('the injected MessageBrokerService', () => {
  it('is available to any module without importing DuctapeBrokerModule again (global)', async () => {
    @Injectable()
    class Checkout {
      constructor(@Inject(MessageBrokerService) readonly broker: MessageBrokerService) {}
    }
    @Module({ providers: [Checkout] })
    class CheckoutModule {}
    const { app } = await createBrokerApp(options(), { imports: [CheckoutModule] });
    expect(app.get(Checkout).broker).toBe(app.get(MessageBrokerService));
    await app.close();
  });
});

describe('a failed startup', () => {
  it('detaches the consumers it had already started', async () => {
    @Injectable()
    class HalfRouted {
      @OnBrokerEvent('sqsbroker:new-orders', { group: 'half-routed' })
      good(): void {}

      @OnBrokerEvent('sqsbroker:unlisted')
      bad(): void {}
    }
    await expect(createBrokerApp(options(), { providers: [HalfRouted] })).rejects.toMatchObject({ code: 'TOPIC_NOT_FOUND' });
    expect(server().consumerCount('shop.prd.new-orders', 'half-routed')).toBe(0);
  });
});

describe('a decorated method replaced by a test spy', () => {
  it('stays subscribed, and the spy sees the calls', async () => {
    @Injectable()
    class Spied {
      @OnBrokerEvent('sqsbroker:new-orders', { group: 'spied' })
      handle(_message: unknown): void {}
    }
    const before = jest.spyOn(Spied.prototype, 'handle');
    const { app, broker } = await createBrokerApp(options(), { providers: [Spied] });
    try {
      const after = jest.spyOn(app.get(Spied), 'handle');
      await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { id: 'x' } } });
      await waitFor(() => after.mock.calls.length === 1, 'the spy to be called');
      expect(after.mock.calls[0][0]).toEqual({ id: 'x' });
      expect(before).toHaveBeenCalledTimes(1);
    } finally {
      await app.close();
    }
  });
});

describe('dead-letter consumers and groups', () => {
  it('refuses @OnBrokerEvent({ deadLetter: true }) without the group whose dead letters it consumes', async () => {
    @Injectable()
    class Orphan {
      @OnBrokerEvent('sqsbroker:new-orders', { deadLetter: true })
      dead(): void {}
    }
    await expect(createBrokerApp(options(), { providers: [Orphan] })).rejects.toMatchObject({
      code: 'INVALID_SUBSCRIPTION',
      message: expect.stringContaining('name the group whose dead letters it consumes') as unknown,
    });
  });

  it('reading dead letters or reprocessing for a group never subscribes that group to the topic', async () => {
    const { app, broker } = await createBrokerApp(options());
    try {
      const event = 'sqsbroker:audits';
      await broker.subscribe({ env: 'prd', event, product_tag: 'shop', input: { group: 'ghost-reader', deadLetter: true, callback: () => undefined } });
      expect(await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: 'shop', group: 'ghost-reprocessed' })).toBe(0);
      const got: unknown[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: 'shop', input: { group: 'real', callback: (m) => void got.push(m) } });
      await broker.publish({ env: 'prd', event, product_tag: 'shop', input: { message: { n: 1 } } });
      await waitFor(() => got.length === 1, 'the real group');
      expect(server().depth('shop.prd.audits', 'ghost-reader')).toBe(0);
      expect(server().depth('shop.prd.audits', 'ghost-reprocessed')).toBe(0);
    } finally {
      await app.close();
    }
  });
});

describe('default group names', () => {
  it('come from the instance class, also for providers made by a factory', async () => {
    @Injectable()
    class Mailer {
      @OnBrokerEvent('sqsbroker:refunds')
      handle(): void {}
    }
    @Injectable()
    class Archiver {
      @OnBrokerEvent('sqsbroker:refunds')
      handle(): void {}
    }
    const { app } = await createBrokerApp(options(), {
      providers: [
        { provide: 'MAILER', useFactory: () => new Mailer() },
        { provide: 'ARCHIVER', useFactory: () => new Archiver() },
      ],
    });
    try {
      expect(server().consumerCount('shop.prd.refunds', 'orders.Mailer.handle')).toBe(1);
      expect(server().consumerCount('shop.prd.refunds', 'orders.Archiver.handle')).toBe(1);
    } finally {
      await app.close();
    }
  });
});
