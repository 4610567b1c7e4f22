import 'reflect-metadata';
import {
  Catch,
  Controller,
  Injectable,
  UseFilters,
  UseGuards,
  UseInterceptors,
  type ArgumentsHost,
  type CallHandler,
  type CanActivate,
  type ExecutionContext,
  type INestApplication,
  type LoggerService,
  type NestInterceptor,
  type RpcExceptionFilter,
  type Type,
} from '@nestjs/common';
import { ClientProxy, Ctx, EventPattern, MessagePattern, Payload, RpcException } from '@nestjs/microservices';
import { EMPTY, lastValueFrom, throwError, type Observable } from 'rxjs';
import {
  BrokerError,
  DEAD_LETTER_HEADERS,
  NonRetryableError,
  type BrokerContext,
  type BrokerEnvConfig,
  type MessageBrokerService,
  type PublishResult,
} from '../../lib';
import {
  DuctapeBrokerClient,
  DuctapeBrokerContext,
  DuctapeBrokerRecord,
  DuctapeBrokerServer,
  type DuctapeBrokerPort,
  type DuctapeBrokerServerOptions,
} from '../../lib/microservices';
import { CapturingLogger, createBrokerApp, silentLogger } from '../support/app';
import { gate, sleep, waitFor } from '../support/wait';

const CLIENT = 'ORDERS_CLIENT';
const SERVICE = 'orders-svc';
/** The documented default group of `@EventPattern('orders:new-orders')` in service orders-svc. */
const NEW_ORDERS_GROUP = `${SERVICE}.event-pattern.orders.new-orders`;

interface Order {
  id: string;
  fail?: boolean;
  blocked?: boolean;
  /** How RefusalsController (and its guard) fails it. */
  kind?: 'non-retryable' | 'plain' | 'foreign-non-retryable' | 'guard' | 'filtered';
}

/** A call of one of several handlers of a pattern: which handler, and the attempt it saw. */
interface Call {
  by: string;
  id: string;
  attempt: number;
}

/** One handler call as the controller saw it. */
interface Seen {
  id: string;
  attempt: number;
  messageId: string;
  pattern: string;
  ctxIsDuctape: boolean;
  headers: Record<string, string>;
  key: string | undefined;
  env: string;
  product: string;
}

/** Shared by the controllers of one test: what they saw, and a gate the slow handler waits on. */
@Injectable()
class Ledger {
  readonly seen: Seen[] = [];
  readonly intercepted: string[] = [];
  readonly calls: Call[] = [];
  slowGate = gate();
  slowDone: string[] = [];

  record(order: Order, ctx: DuctapeBrokerContext): void {
    this.seen.push({
      id: order.id,
      attempt: ctx.getAttempt(),
      messageId: ctx.getMessageId(),
      pattern: ctx.getPattern(),
      ctxIsDuctape: ctx instanceof DuctapeBrokerContext,
      headers: ctx.getHeaders(),
      key: ctx.getKey(),
      env: ctx.getEnv(),
      product: ctx.getProduct(),
    });
  }

  of(id: string): Seen[] {
    return this.seen.filter((entry) => entry.id === id);
  }

  call(by: string, order: Order, ctx: DuctapeBrokerContext): void {
    this.calls.push({ by, id: order.id, attempt: ctx.getAttempt() });
  }

  /** The attempts in which handler `by` got message `id`. */
  attempts(by: string, id: string): number[] {
    return this.calls.filter((call) => call.by === by && call.id === id).map((call) => call.attempt);
  }
}

@Controller()
class OrdersController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:new-orders')
  handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): void {
    this.ledger.record(order, ctx);
    // An RpcException keeps its message through Nest's exception filter, so it names the failure in the dead letter.
    if (order.fail) throw new RpcException(`declined ${order.id}`);
  }
}

@Controller()
class AuditController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:audits', { group: 'audit', retry: { maxAttempts: 1, initialDelayMs: 10 } })
  handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): void {
    this.ledger.record(order, ctx);
    if (order.fail) throw new RpcException(`audit refused ${order.id}`);
  }
}

@Controller()
class SlowController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:slow')
  async handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): Promise<void> {
    this.ledger.record(order, ctx);
    await this.ledger.slowGate.promise;
    this.ledger.slowDone.push(order.id);
  }
}

@Injectable()
class BlockGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    return !context.switchToRpc().getData<Order>().blocked;
  }
}

@Injectable()
class RecordingInterceptor implements NestInterceptor {
  constructor(private readonly ledger: Ledger) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const ctx = context.switchToRpc().getContext<unknown>();
    this.ledger.intercepted.push(ctx instanceof DuctapeBrokerContext ? `${context.getType()} ${ctx.getPattern()} ${ctx.getMessageId()}` : `not a DuctapeBrokerContext`);
    return next.handle();
  }
}

@Controller()
@UseGuards(BlockGuard)
@UseInterceptors(RecordingInterceptor)
class GuardedController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:guarded')
  handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): void {
    this.ledger.record(order, ctx);
  }
}

// Two handlers of one pattern, each with its own group: each acks, retries and dead-letters on its own.
@Controller()
class BillingController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:split', { group: 'billing' })
  handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): void {
    this.ledger.call('billing', order, ctx);
  }
}

@Controller()
class ShippingController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:split', { group: 'shipping' })
  handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): void {
    this.ledger.call('shipping', order, ctx);
    if (order.fail) throw new RpcException(`shipping refused ${order.id}`);
  }
}

@Controller()
class SecondBillingController {
  @EventPattern('orders:split', { group: 'billing' })
  handle(): void {}
}

// Two handlers of one pattern without a group: one returns an Observable that completes at once
// with no value, the other fails later.
@Controller()
class EmptyController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:fanout')
  handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): Observable<never> {
    this.ledger.call('empty', order, ctx);
    return EMPTY;
  }
}

@Controller()
class SlowFailingController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:fanout')
  async handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): Promise<void> {
    this.ledger.call('slow-failing', order, ctx);
    await sleep(100);
    throw new RpcException(`slow-failing refused ${order.id}`);
  }
}

/** Throws what a NonRetryableError becomes, or a plain Error, from a guard or the handler. */
@Injectable()
class KindGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const order = context.switchToRpc().getData<Order>();
    if (order.kind === 'guard') throw new NonRetryableError(`no tenant on ${order.id}`, { reason: 'guard' });
    return true;
  }
}

/** Rethrows what it catches, except that it answers a 'filtered' order's error with a plain one. */
@Catch()
class RewritingFilter implements RpcExceptionFilter<unknown> {
  catch(exception: unknown, host: ArgumentsHost): Observable<never> {
    const order = host.switchToRpc().getData<Order>();
    return throwError(() => (order.kind === 'filtered' ? new Error(`the filter rewrote ${order.id}`) : exception));
  }
}

@Controller()
@UseGuards(KindGuard)
@UseFilters(RewritingFilter)
class RefusalsController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:refusals')
  handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): void {
    this.ledger.call('refusals', order, ctx);
    if (order.kind === 'non-retryable' || order.kind === 'filtered') throw new NonRetryableError(`bad order ${order.id}`);
    if (order.kind === 'plain') throw new Error(`stock service down for ${order.id}`);
    if (order.kind === 'foreign-non-retryable') {
      // A NonRetryableError of another copy of the package: known by its name.
      const error = new Error(`foreign refusal of ${order.id}`);
      error.name = 'NonRetryableError';
      throw error;
    }
  }
}

@Controller()
class StartupController {
  constructor(private readonly ledger: Ledger) {}

  @EventPattern('orders:startup')
  handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): void {
    this.ledger.record(order, ctx);
  }
}

@Controller()
class RequestResponseController {
  @EventPattern('orders:new-orders')
  onOrder(): void {}

  @MessagePattern('orders:quotes')
  quote(): number {
    return 42;
  }
}

@Controller()
class ObjectPatternController {
  @EventPattern({ cmd: 'new-order' })
  onOrder(): void {}
}

export interface BridgeTarget {
  /** The env entry of the `orders` broker for slug 'prd'. */
  env: () => BrokerEnvConfig;
  /** A product of this run's own (what the suite declares on a shared broker is named after it). */
  product: () => string;
  /** How long a message takes to arrive at most (a delivery on a real broker, a retry's delay included). */
  deliveryMs: number;
}

interface Hybrid {
  app: INestApplication;
  broker: MessageBrokerService;
  server: DuctapeBrokerServer;
  client: ClientProxy;
  ledger: Ledger;
}

/**
 * The bridge end to end: a hybrid app whose controllers' `@EventPattern` handlers consume through
 * DuctapeBrokerServer, fed by DuctapeBrokerClient.emit and by MessageBrokerService.publish.
 */
export function bridgeSuite(target: BridgeTarget): void {
  const apps: INestApplication[] = [];
  let product: string;

  beforeAll(() => {
    product = target.product();
  });

  afterEach(async () => {
    await Promise.allSettled(apps.splice(0).map((app) => app.close()));
  });

  async function hybrid(
    controllers: Type[],
    serverOptions: DuctapeBrokerServerOptions = {},
    start = true,
    extra: { logger?: LoggerService; port?: (broker: MessageBrokerService) => DuctapeBrokerPort; registerHandlers?: boolean } = {},
  ): Promise<Hybrid> {
    const { app, broker } = await createBrokerApp(
      {
        env: 'prd',
        product,
        service: SERVICE,
        brokers: [
          {
            tag: 'orders',
            envs: [target.env()],
            topics: ['new-orders', 'slow', 'guarded', 'quotes', 'audits', 'split', 'fanout', 'refusals', 'startup'].map((tag) => ({ tag })),
          },
        ],
        retry: { maxAttempts: 2, initialDelayMs: 20 },
        ...(extra.registerHandlers === undefined ? {} : { registerHandlers: extra.registerHandlers }),
      },
      { controllers, providers: [Ledger, BlockGuard, KindGuard, RecordingInterceptor, DuctapeBrokerClient.provider(CLIENT)] },
      extra.logger ?? silentLogger,
    );
    apps.push(app);
    const server = new DuctapeBrokerServer(extra.port ? extra.port(broker) : broker, serverOptions);
    app.connectMicroservice({ strategy: server });
    if (start) await app.startAllMicroservices();
    return { app, broker, server, client: app.get<ClientProxy>(CLIENT), ledger: app.get(Ledger) };
  }

  function deadLetters(broker: MessageBrokerService, event: string, group: string): { message: unknown; ctx: BrokerContext }[] {
    const dead: { message: unknown; ctx: BrokerContext }[] = [];
    void broker.subscribe({ env: 'prd', event, product_tag: product, input: { group, deadLetter: true, callback: (message, ctx) => void dead.push({ message, ctx }) } });
    return dead;
  }

  it('an @EventPattern handler gets what DuctapeBrokerClient.emit published, with @Payload() and a DuctapeBrokerContext as @Ctx()', async () => {
    const { client, ledger } = await hybrid([OrdersController]);

    const { messageId } = await lastValueFrom(
      client.emit<PublishResult>('orders:new-orders', new DuctapeBrokerRecord({ id: 'o-1' }, { headers: { tenant: 'acme' }, key: 'customer-7' })),
    );

    await waitFor(() => ledger.of('o-1').length > 0, 'the handler to get o-1', target.deliveryMs);
    expect(ledger.of('o-1')).toEqual([
      {
        id: 'o-1',
        attempt: 1,
        messageId,
        pattern: 'orders:new-orders',
        ctxIsDuctape: true,
        headers: expect.objectContaining({ tenant: 'acme' }) as unknown,
        key: 'customer-7',
        env: 'prd',
        product,
      },
    ]);
  });

  it('an @EventPattern handler gets what MessageBrokerService.publish published', async () => {
    const { broker, ledger } = await hybrid([OrdersController]);

    const { messageId } = await broker.publish({ env: 'prd', event: 'orders:new-orders', product_tag: product, input: { message: { id: 'o-2' } } });

    await waitFor(() => ledger.of('o-2').length > 0, 'the handler to get o-2', target.deliveryMs);
    expect(ledger.of('o-2')).toEqual([expect.objectContaining({ messageId, attempt: 1, pattern: 'orders:new-orders' }) as unknown]);
  });

  it('a handler that throws gets the message again, then it is dead-lettered in the default group <service>.event-pattern.<broker>.<topic>', async () => {
    const { client, broker, ledger } = await hybrid([OrdersController]);
    const dead = deadLetters(broker, 'orders:new-orders', NEW_ORDERS_GROUP);

    await lastValueFrom(client.emit('orders:new-orders', { id: 'o-3', fail: true }));

    await waitFor(() => dead.length > 0, 'o-3 among the dead letters', target.deliveryMs * 2);
    expect(ledger.of('o-3').map((entry) => entry.attempt)).toEqual([1, 2]);
    expect(dead[0].message).toEqual({ id: 'o-3', fail: true });
    expect(dead[0].ctx.headers[DEAD_LETTER_HEADERS.error]).toContain('declined o-3');
    expect(dead[0].ctx.headers[DEAD_LETTER_HEADERS.attempts]).toBe('2');
  });

  it('guards and interceptors apply: the interceptor sees the DuctapeBrokerContext, a refused message is retried, then dead-lettered', async () => {
    const { client, broker, ledger } = await hybrid([GuardedController]);
    const dead = deadLetters(broker, 'orders:guarded', `${SERVICE}.event-pattern.orders.guarded`);

    const { messageId } = await lastValueFrom(client.emit<PublishResult>('orders:guarded', { id: 'g-1' }));
    await lastValueFrom(client.emit('orders:guarded', { id: 'g-2', blocked: true }));

    await waitFor(() => dead.length > 0, 'g-2 among the dead letters', target.deliveryMs * 2);
    expect(ledger.of('g-1')).toHaveLength(1);
    expect(ledger.of('g-2')).toEqual([]);
    expect(dead.map((entry) => entry.message)).toEqual([{ id: 'g-2', blocked: true }]);
    expect(ledger.intercepted).toContain(`rpc orders:guarded ${messageId}`);
    expect(ledger.intercepted).not.toContain('not a DuctapeBrokerContext');
  });

  it("the server's group option replaces the default group; @EventPattern extras (group, retry) win over the server's", async () => {
    const { client, broker, ledger } = await hybrid([OrdersController, AuditController], { group: 'billing' });
    const billingDead = deadLetters(broker, 'orders:new-orders', 'billing');
    const auditDead = deadLetters(broker, 'orders:audits', 'audit');

    await lastValueFrom(client.emit('orders:new-orders', { id: 'o-4', fail: true }));
    await lastValueFrom(client.emit('orders:audits', { id: 'a-1', fail: true }));

    await waitFor(() => billingDead.length > 0 && auditDead.length > 0, 'o-4 and a-1 among the dead letters of billing and audit', target.deliveryMs * 2);
    expect(ledger.of('o-4').map((entry) => entry.attempt)).toEqual([1, 2]);
    expect(ledger.of('a-1').map((entry) => entry.attempt)).toEqual([1]);
    expect(auditDead[0].ctx.headers[DEAD_LETTER_HEADERS.error]).toContain('audit refused a-1');
  });

  it('refuses @MessagePattern at listen with INVALID_SUBSCRIPTION naming the pattern and the way out', async () => {
    const { app } = await hybrid([RequestResponseController], {}, false);

    const error = await app.startAllMicroservices().then(
      () => undefined,
      (thrown: unknown) => thrown,
    );

    expect(error).toBeInstanceOf(BrokerError);
    expect((error as BrokerError).code).toBe('INVALID_SUBSCRIPTION');
    expect((error as BrokerError).message).toContain("@MessagePattern('orders:quotes')");
    expect((error as BrokerError).message).toContain('request/response');
    expect((error as BrokerError).message).toContain("@EventPattern('orders:quotes') and publish a reply event");
  });

  it('refuses an object pattern at listen with INVALID_SUBSCRIPTION', async () => {
    const { app } = await hybrid([ObjectPatternController], {}, false);

    const error = await app.startAllMicroservices().then(
      () => undefined,
      (thrown: unknown) => thrown,
    );

    expect(error).toBeInstanceOf(BrokerError);
    expect((error as BrokerError).code).toBe('INVALID_SUBSCRIPTION');
    expect((error as BrokerError).message).toContain('{"cmd":"new-order"}');
    expect((error as BrokerError).message).toContain("'brokerTag:topicTag' string patterns only");
  });

  it('client.send errors with INVALID_REQUEST; emit errors with the BrokerError that refused it', async () => {
    const { client } = await hybrid([OrdersController]);

    const failure = (observable: Observable<unknown>) =>
      lastValueFrom(observable).then(
        () => undefined,
        (thrown: unknown) => thrown as BrokerError,
      );

    const sent = await failure(client.send('orders:new-orders', { id: 'q-1' }));
    expect(sent).toBeInstanceOf(BrokerError);
    expect(sent?.code).toBe('INVALID_REQUEST');
    expect(sent?.message).toContain('request/response is not served over the broker');
    for (const [observable, code] of [
      [client.emit('orders:no-such-topic', { id: 'e-1' }), 'TOPIC_NOT_FOUND'],
      [client.emit('no-colon', { id: 'e-2' }), 'INVALID_EVENT'],
      [client.emit({ cmd: 'x' }, { id: 'e-3' }), 'INVALID_EVENT'],
      [client.emit('orders:new-orders', undefined), 'INVALID_MESSAGE'],
    ] as const) {
      const error = await failure(observable);
      expect(error).toBeInstanceOf(BrokerError);
      expect(error?.code).toBe(code);
    }
  });

  it('close() stops intake and waits for the handler in flight, whose message is acked', async () => {
    const { client, broker, server, ledger } = await hybrid([SlowController]);
    await lastValueFrom(client.emit('orders:slow', { id: 's-1' }));
    await waitFor(() => ledger.of('s-1').length > 0, 'the slow handler to start on s-1', target.deliveryMs);

    const statuses: string[] = [];
    server.status.subscribe((status) => statuses.push(status));
    let closed = false;
    const closing = server.close().then(() => (closed = true));
    await sleep(100);
    expect(closed).toBe(false);
    ledger.slowGate.open();
    await closing;
    expect(ledger.slowDone).toEqual(['s-1']);
    expect(statuses).toEqual(['listening', 'closed']);

    // Nothing more reaches the closed server; the group still gets it, and s-1 (acked) never again.
    await lastValueFrom(client.emit('orders:slow', { id: 's-2' }));
    const later: string[] = [];
    await broker.subscribe({
      env: 'prd',
      event: 'orders:slow',
      product_tag: product,
      input: { group: `${SERVICE}.event-pattern.orders.slow`, callback: (message: Order) => void later.push(message.id) },
    });
    await waitFor(() => later.length > 0, 's-2 on a new subscription of the group', target.deliveryMs);
    await sleep(200);
    expect(later).toEqual(['s-2']);
    expect(ledger.seen.map((entry) => entry.id)).toEqual(['s-1']);
  });

  it('two handlers of one pattern, each with its own { group }: a failure retries and dead-letters the failing one alone, in its group', async () => {
    const { client, broker, ledger } = await hybrid([BillingController, ShippingController]);
    const billingDead = deadLetters(broker, 'orders:split', 'billing');
    const shippingDead = deadLetters(broker, 'orders:split', 'shipping');

    await lastValueFrom(client.emit('orders:split', { id: 'p-1', fail: true }));

    await waitFor(() => shippingDead.length > 0, "p-1 among the dead letters of group 'shipping'", target.deliveryMs * 2);
    await sleep(200);
    expect(ledger.attempts('shipping', 'p-1')).toEqual([1, 2]);
    // Billing succeeded once: shipping's failure does not run it again.
    expect(ledger.attempts('billing', 'p-1')).toEqual([1]);
    expect(shippingDead.map((entry) => entry.message)).toEqual([{ id: 'p-1', fail: true }]);
    expect(shippingDead[0].ctx.headers[DEAD_LETTER_HEADERS.error]).toContain('shipping refused p-1');
    expect(billingDead).toEqual([]);
  });

  it('two handlers of one pattern in one group are refused at listen with INVALID_SUBSCRIPTION (each would get only some messages)', async () => {
    const { app } = await hybrid([BillingController, SecondBillingController], {}, false);

    const error = await app.startAllMicroservices().then(
      () => undefined,
      (thrown: unknown) => thrown,
    );

    expect(error).toBeInstanceOf(BrokerError);
    expect((error as BrokerError).code).toBe('INVALID_SUBSCRIPTION');
    expect((error as BrokerError).message).toContain("@EventPattern('orders:split'): two handlers in group 'billing'");
  });

  it("handlers of one pattern without a group consume in '<default>' and '<default>.2' (with a warning): an Observable that completes empty is acked, its sibling's later failure is retried and dead-lettered", async () => {
    const logger = new CapturingLogger();
    const { client, broker, ledger } = await hybrid([EmptyController, SlowFailingController], {}, true, { logger });
    const base = `${SERVICE}.event-pattern.orders.fanout`;
    const firstDead = deadLetters(broker, 'orders:fanout', base);
    const secondDead = deadLetters(broker, 'orders:fanout', `${base}.2`);

    await lastValueFrom(client.emit('orders:fanout', { id: 'f-1' }));

    await waitFor(() => secondDead.length > 0, `f-1 among the dead letters of group '${base}.2'`, target.deliveryMs * 2);
    await sleep(200);
    expect(ledger.attempts('slow-failing', 'f-1')).toEqual([1, 2]);
    expect(secondDead[0].ctx.headers[DEAD_LETTER_HEADERS.error]).toContain('slow-failing refused f-1');
    // EMPTY alone is a success: acked once, never again, no dead letter.
    expect(ledger.attempts('empty', 'f-1')).toEqual([1]);
    expect(firstDead).toEqual([]);
    expect(logger.lines('DuctapeBrokerServer', "@EventPattern('orders:fanout') has 2 handlers without a { group }")).toEqual([
      expect.stringContaining(`'${base}', '${base}.2'`) as unknown,
    ]);
  });

  it("a NonRetryableError (from the handler or a guard, by its name, rewritten by a filter) is dead-lettered at once; any other error keeps its text, not Nest's 'Internal server error'", async () => {
    const { client, broker, ledger } = await hybrid([RefusalsController]);
    const dead = deadLetters(broker, 'orders:refusals', `${SERVICE}.event-pattern.orders.refusals`);

    for (const kind of ['non-retryable', 'plain', 'foreign-non-retryable', 'guard', 'filtered'] as const) {
      await lastValueFrom(client.emit('orders:refusals', { id: `r-${kind}`, kind }));
    }

    await waitFor(() => dead.length >= 5, 'the five refusals among the dead letters', target.deliveryMs * 2);
    const byId = new Map(dead.map((entry) => [(entry.message as Order).id, entry.ctx.headers]));
    const summary = (id: string) => {
      const headers = byId.get(id) ?? {};
      return { reason: headers[DEAD_LETTER_HEADERS.reason], attempts: headers[DEAD_LETTER_HEADERS.attempts], error: headers[DEAD_LETTER_HEADERS.error] };
    };
    expect(summary('r-non-retryable')).toEqual({ reason: 'non-retryable', attempts: '1', error: expect.stringContaining('bad order r-non-retryable') as unknown });
    expect(summary('r-plain')).toEqual({ reason: 'max-attempts', attempts: '2', error: expect.stringContaining('stock service down for r-plain') as unknown });
    expect(summary('r-foreign-non-retryable')).toEqual({
      reason: 'non-retryable',
      attempts: '1',
      error: expect.stringContaining('foreign refusal of r-foreign-non-retryable') as unknown,
    });
    expect(summary('r-guard')).toEqual({ reason: 'guard', attempts: '1', error: expect.stringContaining('no tenant on r-guard') as unknown });
    // An exception filter's answer does not turn a NonRetryableError into a retry.
    expect(summary('r-filtered')).toEqual({ reason: 'non-retryable', attempts: '1', error: expect.stringContaining('bad order r-filtered') as unknown });
    expect(ledger.attempts('refusals', 'r-non-retryable')).toEqual([1]);
    expect(ledger.attempts('refusals', 'r-plain')).toEqual([1, 2]);
    expect(ledger.attempts('refusals', 'r-foreign-non-retryable')).toEqual([1]);
    expect(ledger.attempts('refusals', 'r-guard')).toEqual([]);
    expect(ledger.attempts('refusals', 'r-filtered')).toEqual([1]);
  });

  it('with registerHandlers: false (a publish-only replica) it checks the handlers, subscribes none, says so once and reports listening', async () => {
    const logger = new CapturingLogger();
    const { app, broker, server, ledger } = await hybrid([OrdersController, AuditController], {}, false, { logger, registerHandlers: false });
    const statuses: string[] = [];
    server.status.subscribe((status) => statuses.push(status));
    await app.startAllMicroservices();
    expect(statuses).toEqual(['listening']);
    expect(logger.lines('DuctapeBrokerServer', 'registerHandlers is false')).toEqual([
      'registerHandlers is false: none of the 2 @EventPattern handler(s) is subscribed (this replica only publishes)',
    ]);
    // The handlers' group has one consumer, in code: every message reaches it, none the handler.
    const inCode: string[] = [];
    await broker.subscribe({ env: 'prd', event: 'orders:new-orders', product_tag: product, input: { group: NEW_ORDERS_GROUP, callback: (order: Order) => void inCode.push(order.id) } });
    const ids = ['r-1', 'r-2', 'r-3', 'r-4'];
    for (const id of ids) await broker.publish({ env: 'prd', event: 'orders:new-orders', product_tag: product, input: { message: { id } } });
    const mine = () => inCode.filter((id) => ids.includes(id)).sort();
    await waitFor(() => mine().length === ids.length, 'the four messages in the in-code subscription', target.deliveryMs);
    await sleep(200);
    expect(mine()).toEqual(ids);
    expect(ledger.seen).toEqual([]);
  });

  it('with registerHandlers: false a @MessagePattern is still refused at listen', async () => {
    const { app } = await hybrid([RequestResponseController], {}, false, { registerHandlers: false });

    const error = await app.startAllMicroservices().then(
      () => undefined,
      (thrown: unknown) => thrown,
    );

    expect(error).toBeInstanceOf(BrokerError);
    expect((error as BrokerError).code).toBe('INVALID_SUBSCRIPTION');
    expect((error as BrokerError).message).toContain("@MessagePattern('orders:quotes')");
  });

  it('close() during listen(): close waits for the consumers being started and stops them, listen fails with INVALID_REQUEST, the status never says listening; listen after close fails too', async () => {
    const subscribing = gate();
    let asked = 0;
    const gated = (broker: MessageBrokerService): DuctapeBrokerPort => ({
      env: broker.env,
      product: broker.product,
      service: broker.service,
      publish: (request) => broker.publish(request),
      subscribe: async (request) => {
        asked += 1;
        await subscribing.promise;
        return broker.subscribe(request);
      },
    });
    const { app, broker, server, ledger } = await hybrid([StartupController], {}, false, { port: gated });
    const statuses: string[] = [];
    server.status.subscribe((status) => statuses.push(status));

    const starting = app.startAllMicroservices().then(
      () => undefined,
      (thrown: unknown) => thrown,
    );
    await waitFor(() => asked > 0, 'listen() to subscribe', 2000);
    let closed = false;
    const closing = server.close().then(() => (closed = true));
    await sleep(100);
    expect(closed).toBe(false);
    subscribing.open();
    await closing;

    const error = await starting;
    expect(error).toBeInstanceOf(BrokerError);
    expect((error as BrokerError).code).toBe('INVALID_REQUEST');
    expect((error as BrokerError).message).toContain('close() while listen() was starting');
    expect(statuses).toEqual(['closed']);

    // Its consumer was stopped: a message published now reaches no handler of this server.
    await broker.publish({ env: 'prd', event: 'orders:startup', product_tag: product, input: { message: { id: 'c-1' } } });
    await sleep(300);
    expect(ledger.of('c-1')).toEqual([]);

    const again = await new Promise<unknown>((resolve) => void server.listen(resolve));
    expect(again).toBeInstanceOf(BrokerError);
    expect((again as BrokerError).message).toContain('listen() after close()');
    expect(statuses).toEqual(['closed']);
  });
}
