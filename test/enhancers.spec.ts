import 'reflect-metadata';
import {
  BadRequestException,
  Catch,
  Inject,
  Injectable,
  Module,
  UseFilters,
  UseGuards,
  UseInterceptors,
  UsePipes,
  ValidationPipe,
  type ArgumentsHost,
  type CallHandler,
  type CanActivate,
  type ExceptionFilter,
  type ExecutionContext,
  type INestApplication,
  type NestInterceptor,
  type PipeTransform,
  Scope,
} from '@nestjs/common';
import { APP_FILTER, APP_GUARD, APP_PIPE, ExternalContextCreator, REQUEST, Reflector } from '@nestjs/core';
import { BaseRpcExceptionFilter } from '@nestjs/microservices';
import { Test } from '@nestjs/testing';
import { IsPositive, IsString } from 'class-validator';
import { EMPTY, throwError, tap, type Observable } from 'rxjs';
import {
  DEAD_LETTER_HEADERS,
  DuctapeBrokerModule,
  MemoryBrokerServer,
  MessageBrokerService,
  OnBrokerEvent,
  type BrokerContext,
  type BrokerModuleOptions,
} from '../lib';
import { BROKER_CONTEXT_TYPE } from '../lib/constants';
import { BrokerCtx, BrokerMessage } from '../lib/decorators';
import { BrokerHandlerEnhancer, brokerArgumentsOf, type BrokerRequest } from '../lib/enhancers/broker-handler-enhancer';
import { NonRetryableError } from '../lib/errors';
import { createBrokerApp, startupError } from './support/app';
import { describeWithBroker } from './support/broker-availability';
import { holdExclusively } from './support/exclusive';
import { rabbitEnv, recordDeclarations, runUnique } from './support/rabbitmq';
import { sleep, waitFor } from './support/wait';

const SERVER = 'enhancers-spec';
const TOPICS = ['guarded', 'validated', 'property', 'intercepted', 'plain', 'swallowed', 'rethrown', 'observed', 'fatal', 'global', 'scoped', 'rpc', 'skipped', 'partial'];

const options = (server = SERVER): BrokerModuleOptions => ({
  env: 'prd',
  product: 'shop',
  service: 'orders',
  brokers: [{ tag: 'mem', envs: [{ slug: 'prd', type: 'memory', config: { server } }], topics: TOPICS.map((tag) => ({ tag })) }],
  retry: { maxAttempts: 3, initialDelayMs: 5 },
});

/** What the handlers, guards, interceptors and filters saw, in order. */
@Injectable()
class Journal {
  readonly lines: string[] = [];
  readonly values: unknown[] = [];
  add(line: string, value?: unknown): void {
    this.lines.push(line);
    if (value !== undefined) this.values.push(value);
  }
  count(prefix: string): number {
    return this.lines.filter((line) => line.startsWith(prefix)).length;
  }
}

/** Refuses a message whose `blocked` is true; records what kind of host it was given. */
@Injectable()
class BlockingGuard implements CanActivate {
  constructor(private readonly journal: Journal) {}
  canActivate(context: ExecutionContext): boolean {
    const message = context.switchToRpc().getData<{ blocked?: boolean; outage?: boolean }>();
    this.journal.add(`guard ${context.getType()} ${context.getHandler().name} ${context.getClass().name}`);
    // Not a refusal: a failure that may pass on a later attempt.
    if (message.outage) throw new Error('tenant lookup failed');
    return message.blocked !== true;
  }
}

/** Records the host's type and BrokerContext, and the handler's time, around the handler. */
@Injectable()
class TimingInterceptor implements NestInterceptor {
  constructor(private readonly journal: Journal) {}
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const args = brokerArgumentsOf(context);
    const ctx = context.switchToRpc().getContext<BrokerContext>();
    this.journal.add(`before ${context.getType()} ${ctx.event} attempt ${ctx.attempt} same-args ${String(args?.context === ctx)}`);
    const started = process.hrtime.bigint();
    return next.handle().pipe(tap(() => this.journal.add(`after ${process.hrtime.bigint() >= started ? 'timed' : 'untimed'}`)));
  }
}

/** Handles every error: the filter swallows it (returns an answer). */
@Catch()
class SwallowingFilter implements ExceptionFilter {
  static seen: string[] = [];
  catch(exception: unknown, host: ArgumentsHost): string {
    SwallowingFilter.seen.push(`${host.getType()} ${(exception as Error).message} ${host.switchToRpc().getContext<BrokerContext>().event}`);
    return 'handled';
  }
}

/** Looks at every error and gives it back: the message is retried as without the filter. */
@Catch()
class RethrowingFilter implements ExceptionFilter {
  static seen = 0;
  catch(exception: unknown): never {
    RethrowingFilter.seen++;
    throw exception;
  }
}

/** An RPC-style filter: answers with an observable that errors (what BaseRpcExceptionFilter returns). */
@Catch()
class ObservableFilter implements ExceptionFilter {
  catch(exception: unknown): Observable<never> {
    return throwError(() => exception);
  }
}

class OrderDto {
  @IsString()
  orderId!: string;

  @IsPositive()
  amount!: number;
}

const VALIDATE = new ValidationPipe({ transform: true });

@Injectable()
class Listeners {
  constructor(private readonly journal: Journal) {}

  @OnBrokerEvent('mem:guarded', { group: 'guarded' })
  @UseGuards(BlockingGuard)
  onGuarded(message: { id: string }, ctx: BrokerContext): void {
    this.journal.add(`guarded ${message.id} ${ctx.event}`);
  }

  @OnBrokerEvent('mem:validated', { group: 'validated' })
  @UsePipes(VALIDATE)
  onValidated(@BrokerMessage() order: OrderDto): void {
    this.journal.add(`validated ${order.orderId} ${order instanceof OrderDto ? 'OrderDto' : 'plain'}`, order);
  }

  @OnBrokerEvent('mem:property', { group: 'property' })
  onProperty(@BrokerMessage('orderId') orderId: string, @BrokerCtx() ctx: BrokerContext): void {
    this.journal.add(`property ${orderId} ${ctx.event} attempt ${ctx.attempt}`);
  }

  @OnBrokerEvent('mem:intercepted', { group: 'intercepted' })
  @UseInterceptors(TimingInterceptor)
  onIntercepted(message: { id: string }, ctx: BrokerContext): void {
    this.journal.add(`intercepted ${message.id} ${ctx.messageId ? 'with-ctx' : 'no-ctx'}`);
  }

  @OnBrokerEvent('mem:plain', { group: 'plain' })
  onPlain(message: { id: string }, ctx: BrokerContext): void {
    this.journal.add(`plain ${message.id} ${ctx.event}`);
    if (message.id === 'fatal') throw new NonRetryableError('order o-fatal can never be shipped');
  }

  @OnBrokerEvent('mem:swallowed', { group: 'swallowed' })
  @UseFilters(SwallowingFilter)
  onSwallowed(message: { id: string }, ctx: BrokerContext): void {
    this.journal.add(`swallowed ${message.id} attempt ${ctx.attempt}`);
    throw new Error(`cannot handle ${message.id}`);
  }

  @OnBrokerEvent('mem:rethrown', { group: 'rethrown' })
  @UseFilters(RethrowingFilter)
  onRethrown(message: { id: string }, ctx: BrokerContext): void {
    this.journal.add(`rethrown ${message.id} attempt ${ctx.attempt}`);
    throw new Error(`cannot handle ${message.id}`);
  }

  @OnBrokerEvent('mem:observed', { group: 'observed' })
  @UseFilters(ObservableFilter)
  onObserved(message: { id: string }, ctx: BrokerContext): void {
    this.journal.add(`observed ${message.id} attempt ${ctx.attempt}`);
    throw new Error(`cannot handle ${message.id}`);
  }
}

@Module({ providers: [Journal, Listeners, BlockingGuard, TimingInterceptor] })
class ListenersModule {}

interface DeadLetter {
  message: unknown;
  headers: Record<string, string>;
}
const collectors = new WeakMap<MessageBrokerService, Map<string, DeadLetter[]>>();

/**
 * The dead letters of `group` on `topic` from now on, as they arrive. One consumer per group and
 * application, made at the first call (a second would share the dead letters with the first).
 */
async function deadLetters(broker: MessageBrokerService, topic: string, group: string): Promise<DeadLetter[]> {
  const byGroup = collectors.get(broker) ?? new Map<string, DeadLetter[]>();
  collectors.set(broker, byGroup);
  const existing = byGroup.get(`${topic}/${group}`);
  if (existing) {
    existing.length = 0;
    return existing;
  }
  const dead: DeadLetter[] = [];
  byGroup.set(`${topic}/${group}`, dead);
  await broker.subscribe({ env: 'prd', event: `mem:${topic}`, product_tag: 'shop', input: { group, deadLetter: true, callback: (message, ctx) => void dead.push({ message, headers: ctx.headers }) } });
  return dead;
}

const publish = (broker: MessageBrokerService, topic: string, message: unknown) => broker.publish({ env: 'prd', event: `mem:${topic}`, product_tag: 'shop', input: { message } });

describe('enhancers on @OnBrokerEvent handlers (memory broker)', () => {
  let app: INestApplication;
  let broker: MessageBrokerService;
  let journal: Journal;

  beforeAll(async () => {
    ({ app, broker } = await createBrokerApp(options(), { imports: [ListenersModule] }));
    journal = app.get(Journal);
  });

  afterAll(() => app.close());

  beforeEach(() => {
    journal.lines.length = 0;
    journal.values.length = 0;
  });

  it('a guard sees a ductape-broker host; one that refuses sends the message to the dead letters at once, reason guard, the handler not called', async () => {
    const dead = await deadLetters(broker, 'guarded', 'guarded');
    await publish(broker, 'guarded', { id: 'o1' });
    await publish(broker, 'guarded', { id: 'o2', blocked: true });
    await waitFor(() => dead.length === 1 && journal.count('guarded ') === 1, 'o1 handled and o2 dead-lettered');
    await sleep(50); // a retry of o2 would reach the guard again
    expect(journal.lines.filter((line) => line.startsWith('guard ')).sort()).toEqual(['guard ductape-broker onGuarded Listeners', 'guard ductape-broker onGuarded Listeners']);
    expect(journal.lines).toContain('guarded o1 mem:guarded');
    expect(dead[0].message).toEqual({ id: 'o2', blocked: true });
    expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('guard');
    expect(dead[0].headers[DEAD_LETTER_HEADERS.attempts]).toBe('1');
    expect(dead[0].headers[DEAD_LETTER_HEADERS.error]).toBe('NonRetryableError: refused by a guard: ForbiddenException: Forbidden resource');
  });

  it('a guard that fails with an error that is not a refusal (an outage) is retried like a handler, then dead-lettered (max-attempts)', async () => {
    const dead = await deadLetters(broker, 'guarded', 'guarded');
    await publish(broker, 'guarded', { id: 'o10', outage: true });
    await waitFor(() => dead.length === 1, 'the dead letter');
    expect(journal.count('guard ')).toBe(3);
    expect(journal.count('guarded ')).toBe(0);
    expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('max-attempts');
    expect(dead[0].headers[DEAD_LETTER_HEADERS.error]).toBe('Error: tenant lookup failed');
  });

  it('@BrokerMessage() with a ValidationPipe: a good message arrives as its DTO, a bad one goes to the dead letters, reason validation, with what failed', async () => {
    const dead = await deadLetters(broker, 'validated', 'validated');
    await publish(broker, 'validated', { orderId: 'o3', amount: 10 });
    await publish(broker, 'validated', { orderId: 42, amount: -1 });
    await waitFor(() => dead.length === 1 && journal.count('validated ') === 1, 'o3 handled and the bad order dead-lettered');
    await sleep(50);
    expect(journal.lines).toEqual(['validated o3 OrderDto']);
    expect(journal.values[0]).toBeInstanceOf(OrderDto);
    expect(dead[0].message).toEqual({ orderId: 42, amount: -1 });
    expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('validation');
    expect(dead[0].headers[DEAD_LETTER_HEADERS.attempts]).toBe('1');
    expect(dead[0].headers[DEAD_LETTER_HEADERS.error]).toBe(
      'NonRetryableError: refused by a pipe: BadRequestException: Bad Request Exception (orderId must be a string; amount must be a positive number)',
    );
  });

  it('@BrokerMessage(property) gives that property, @BrokerCtx() the BrokerContext, and a spy on the method sees the call', async () => {
    const spy = jest.spyOn(app.get(Listeners), 'onProperty');
    try {
      await publish(broker, 'property', { orderId: 'o4', amount: 3 });
      await waitFor(() => journal.count('property ') === 1, 'o4 handled');
      expect(journal.lines).toEqual(['property o4 mem:property attempt 1']);
      expect(spy).toHaveBeenCalledTimes(1);
      expect(spy.mock.calls[0][0]).toBe('o4');
      expect(spy.mock.calls[0][1]).toMatchObject({ event: 'mem:property', env: 'prd', product: 'shop', attempt: 1 });
    } finally {
      spy.mockRestore();
    }
  });

  it('an interceptor sees the ductape-broker host with the BrokerContext, and wraps the handler, which still gets (message, ctx)', async () => {
    await publish(broker, 'intercepted', { id: 'o5' });
    await waitFor(() => journal.count('after ') === 1, 'the interceptor after the handler');
    expect(journal.lines).toEqual(['before ductape-broker mem:intercepted attempt 1 same-args true', 'intercepted o5 with-ctx', 'after timed']);
  });

  it('a handler without enhancers keeps its direct (message, ctx) call; a spy on it sees the call', async () => {
    const spy = jest.spyOn(app.get(Listeners), 'onPlain');
    try {
      await publish(broker, 'plain', { id: 'o6' });
      await waitFor(() => journal.count('plain ') === 1, 'o6 handled');
      expect(spy).toHaveBeenCalledWith({ id: 'o6' }, expect.objectContaining({ event: 'mem:plain', attempt: 1 }));
    } finally {
      spy.mockRestore();
    }
    const enhancer = new BrokerHandlerEnhancer(app.get(ExternalContextCreator));
    const listeners = app.get(Listeners);
    expect(enhancer.isEnhanced(listeners, 'onPlain', Listeners.prototype.onPlain)).toBe(false);
    expect(enhancer.isEnhanced(listeners, 'onProperty', Listeners.prototype.onProperty)).toBe(true);
    expect(enhancer.isEnhanced(listeners, 'onIntercepted', Listeners.prototype.onIntercepted)).toBe(true);
    expect(enhancer.isEnhanced(listeners, 'onGuarded', Listeners.prototype.onGuarded)).toBe(true);
    expect(enhancer.isEnhanced(listeners, 'onSwallowed', Listeners.prototype.onSwallowed)).toBe(true);
  });

  it('a NonRetryableError from a handler skips the retries: dead letter at once, reason non-retryable', async () => {
    const dead = await deadLetters(broker, 'plain', 'plain');
    await publish(broker, 'plain', { id: 'fatal' });
    await waitFor(() => dead.length === 1, 'the dead letter');
    await sleep(50);
    expect(journal.lines).toEqual(['plain fatal mem:plain']);
    expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('non-retryable');
    expect(dead[0].headers[DEAD_LETTER_HEADERS.attempts]).toBe('1');
    expect(dead[0].headers[DEAD_LETTER_HEADERS.error]).toBe('NonRetryableError: order o-fatal can never be shipped');
  });

  it('a filter that handles the error (returns an answer) has the message acked: no retry, no dead letter', async () => {
    SwallowingFilter.seen = [];
    await publish(broker, 'swallowed', { id: 'o7' });
    await waitFor(() => SwallowingFilter.seen.length === 1, 'the filter');
    await sleep(80); // a retry comes after 5 ms
    expect(journal.lines).toEqual(['swallowed o7 attempt 1']);
    expect(SwallowingFilter.seen).toEqual(['ductape-broker cannot handle o7 mem:swallowed']);
    expect(MemoryBrokerServer.shared(SERVER).deadLetterCount('shop.prd.swallowed', 'swallowed')).toBe(0);
  });

  it('a filter that rethrows, or answers with an observable that errors, leaves the failure: retries, then dead letters (max-attempts)', async () => {
    RethrowingFilter.seen = 0;
    const rethrown = await deadLetters(broker, 'rethrown', 'rethrown');
    const observed = await deadLetters(broker, 'observed', 'observed');
    await publish(broker, 'rethrown', { id: 'o8' });
    await publish(broker, 'observed', { id: 'o9' });
    await waitFor(() => rethrown.length === 1 && observed.length === 1, 'both dead letters');
    expect(journal.lines.filter((line) => line.startsWith('rethrown')).sort()).toEqual(['rethrown o8 attempt 1', 'rethrown o8 attempt 2', 'rethrown o8 attempt 3']);
    expect(journal.lines.filter((line) => line.startsWith('observed')).sort()).toEqual(['observed o9 attempt 1', 'observed o9 attempt 2', 'observed o9 attempt 3']);
    expect(RethrowingFilter.seen).toBe(3);
    for (const dead of [rethrown[0], observed[0]]) {
      expect(dead.headers[DEAD_LETTER_HEADERS.reason]).toBe('max-attempts');
      expect(dead.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    }
    expect(rethrown[0].headers[DEAD_LETTER_HEADERS.error]).toBe('Error: cannot handle o8');
  });
});

describe('global enhancers on @OnBrokerEvent handlers', () => {
  const Roles = Reflector.createDecorator<string[]>();

  @Injectable()
  class GlobalListener {
    readonly seen: string[] = [];

    @OnBrokerEvent('mem:global', { group: 'global' })
    @Roles(['auditor'])
    onGlobal(message: { id: string }, ctx: BrokerContext): void {
      this.seen.push(`global ${message.id} attempt ${ctx.attempt}`);
    }
  }

  /** An APP_GUARD that reads the handler's metadata through the Reflector, as role guards do. */
  @Injectable()
  class RolesGuard implements CanActivate {
    static seen: string[] = [];
    constructor(private readonly reflector: Reflector) {}
    canActivate(context: ExecutionContext): boolean {
      if (context.getType<string>() !== BROKER_CONTEXT_TYPE) return true;
      const required = this.reflector.get(Roles, context.getHandler());
      const message = context.switchToRpc().getData<{ role?: string }>();
      RolesGuard.seen.push(`${context.getHandler().name} needs ${String(required)}`);
      return required?.includes(message.role ?? '') ?? true;
    }
  }

  let app: INestApplication | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('an APP_GUARD and app.useGlobalInterceptors apply to a handler with none of its own; the guard reads its metadata', async () => {
    RolesGuard.seen = [];
    const intercepted: string[] = [];
    const moduleRef = await Test.createTestingModule({
      imports: [DuctapeBrokerModule.forRoot(options(`${SERVER}-app-guard`))],
      providers: [GlobalListener, { provide: APP_GUARD, useClass: RolesGuard }],
    }).compile();
    app = moduleRef.createNestApplication({ logger: false });
    app.useGlobalInterceptors({
      intercept: (context: ExecutionContext, next: CallHandler) => {
        intercepted.push(`${context.getType()} ${context.switchToRpc().getContext<BrokerContext>().event}`);
        return next.handle();
      },
    });
    await app.init();
    const broker = app.get(MessageBrokerService);
    const listener = app.get(GlobalListener);
    const dead = await deadLetters(broker, 'global', 'global');
    await publish(broker, 'global', { id: 'g1', role: 'auditor' });
    await publish(broker, 'global', { id: 'g2', role: 'intern' });
    await waitFor(() => listener.seen.length === 1 && dead.length === 1, 'g1 handled, g2 refused');
    expect(listener.seen).toEqual(['global g1 attempt 1']);
    expect(RolesGuard.seen).toEqual(['onGlobal needs auditor', 'onGlobal needs auditor']);
    expect(intercepted).toEqual(['ductape-broker mem:global']);
    expect(dead[0].message).toEqual({ id: 'g2', role: 'intern' });
    expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('guard');
  });

  it('app.useGlobalGuards applies too (set before init)', async () => {
    const moduleRef = await Test.createTestingModule({ imports: [DuctapeBrokerModule.forRoot(options(`${SERVER}-global-guard`))], providers: [GlobalListener] }).compile();
    app = moduleRef.createNestApplication({ logger: false });
    app.useGlobalGuards({ canActivate: (context: ExecutionContext) => context.switchToRpc().getData<{ id: string }>().id !== 'g4' });
    await app.init();
    const broker = app.get(MessageBrokerService);
    const listener = app.get(GlobalListener);
    const dead = await deadLetters(broker, 'global', 'global');
    await publish(broker, 'global', { id: 'g3' });
    await publish(broker, 'global', { id: 'g4' });
    await waitFor(() => listener.seen.length === 1 && dead.length === 1, 'g3 handled, g4 refused');
    expect(listener.seen).toEqual(['global g3 attempt 1']);
    expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('guard');
    expect(new BrokerHandlerEnhancer(app.get(ExternalContextCreator)).isEnhanced(listener, 'onGlobal', GlobalListener.prototype.onGlobal)).toBe(true);
  });
});

describe('request-scoped and transient enhancers, RPC filters, interceptors that skip, dead-letter consumers', () => {
  /** What the scoped enhancers saw: one line per delivery and instance. */
  const trail: string[] = [];
  let constructed = 0;

  /** A request-scoped guard, as an auth guard that reads its request: it refuses a message whose `blocked` is true. */
  @Injectable({ scope: Scope.REQUEST })
  class RequestGuard implements CanActivate {
    private readonly serial = ++constructed;
    constructor(@Inject(REQUEST) private readonly request: BrokerRequest<{ id: string; blocked?: boolean }>) {}
    canActivate(context: ExecutionContext): boolean {
      const args = brokerArgumentsOf(context);
      trail.push(`request-guard ${this.request.message.id} #${this.serial} same-ctx ${String(args?.context === this.request.context)}`);
      return this.request.message.blocked !== true;
    }
  }

  @Injectable({ scope: Scope.TRANSIENT })
  class TransientGuard implements CanActivate {
    canActivate(context: ExecutionContext): boolean {
      const message = context.switchToRpc().getData<{ id: string; blocked?: boolean }>();
      trail.push(`transient-guard ${message.id}`);
      return message.blocked !== true;
    }
  }

  @Injectable({ scope: Scope.REQUEST })
  class RequestPipe implements PipeTransform {
    constructor(@Inject(REQUEST) private readonly request: BrokerRequest<{ id: string; bad?: boolean }>) {}
    transform(value: unknown): unknown {
      trail.push(`request-pipe ${String(value)} ${this.request.context.event}`);
      if (this.request.message.bad) throw new BadRequestException('not an order');
      return value;
    }
  }

  @Injectable()
  class Scoped {
    readonly seen: string[] = [];

    @OnBrokerEvent('mem:scoped', { group: 'scoped' })
    onScoped(message: { id: string }): void {
      this.seen.push(`scoped ${message.id}`);
    }

    @OnBrokerEvent('mem:partial', { group: 'partial' })
    onPartial(@BrokerMessage('id') id: string, ctx: BrokerContext | undefined): void {
      this.seen.push(`partial ${id} ctx ${ctx === undefined ? 'undefined' : 'given'}`);
    }
  }

  /** A guard of its own, request-scoped: it makes the provider request-scoped too (Nest's rule), one instance per delivery. */
  @Injectable()
  class OwnScopedGuard {
    static seen: string[] = [];
    static made = 0;
    constructor(private readonly journal: Journal) {
      OwnScopedGuard.made++;
    }

    @OnBrokerEvent('mem:scoped', { group: 'own-guard' })
    @UseGuards(RequestGuard)
    onScoped(message: { id: string }): void {
      OwnScopedGuard.seen.push(`own ${message.id} journal ${String(this.journal instanceof Journal)}`);
    }
  }

  const dead = (broker: MessageBrokerService, topic: string, group: string) => deadLetters(broker, topic, group);
  let app: INestApplication | undefined;
  beforeEach(() => {
    trail.length = 0;
    constructed = 0;
  });
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('a request-scoped APP_GUARD runs for each message, with REQUEST bound to its message and context; what it refuses is dead-lettered (guard)', async () => {
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(`${SERVER}-request-guard`), { providers: [Scoped, { provide: APP_GUARD, useClass: RequestGuard, scope: Scope.REQUEST }] }));
    const refused = await dead(broker, 'scoped', 'scoped');
    await publish(broker, 'scoped', { id: 's1' });
    await publish(broker, 'scoped', { id: 's2', blocked: true });
    const scoped = app.get(Scoped);
    await waitFor(() => scoped.seen.length === 1 && refused.length === 1, 's1 handled and s2 refused');
    expect(scoped.seen).toEqual(['scoped s1']);
    // One guard per message (#1, #2), each with its own REQUEST: the message and the host's BrokerContext.
    expect(trail.map((line) => line.replace(/#\d/, '#n')).sort()).toEqual(['request-guard s1 #n same-ctx true', 'request-guard s2 #n same-ctx true']);
    expect(new Set(trail.map((line) => line.split(' ')[2]))).toEqual(new Set(['#1', '#2']));
    expect(refused[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('guard');
    expect(refused[0].message).toEqual({ id: 's2', blocked: true });
  });

  it('a transient APP_GUARD applies too', async () => {
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(`${SERVER}-transient-guard`), { providers: [Scoped, { provide: APP_GUARD, useClass: TransientGuard, scope: Scope.TRANSIENT }] }));
    const refused = await dead(broker, 'scoped', 'scoped');
    await publish(broker, 'scoped', { id: 't1' });
    await publish(broker, 'scoped', { id: 't2', blocked: true });
    const scoped = app.get(Scoped);
    await waitFor(() => scoped.seen.length === 1 && refused.length === 1, 't1 handled and t2 refused');
    expect(trail.sort()).toEqual(['transient-guard t1', 'transient-guard t2']);
    expect(refused[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('guard');
  });

  it('a request-scoped APP_PIPE applies to decorated parameters; what it refuses is dead-lettered (validation)', async () => {
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(`${SERVER}-request-pipe`), { providers: [Scoped, { provide: APP_PIPE, useClass: RequestPipe, scope: Scope.REQUEST }] }));
    const refused = await dead(broker, 'partial', 'partial');
    await publish(broker, 'partial', { id: 'p1' });
    await publish(broker, 'partial', { id: 'p2', bad: true });
    const scoped = app.get(Scoped);
    await waitFor(() => scoped.seen.length === 1 && refused.length === 1, 'p1 handled and p2 refused');
    expect(trail.sort()).toEqual(['request-pipe p1 mem:partial', 'request-pipe p2 mem:partial']);
    expect(scoped.seen).toEqual(['partial p1 ctx undefined']);
    expect(refused[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('validation');
    expect(refused[0].message).toEqual({ id: 'p2', bad: true });
  });

  it('a request-scoped guard on the method makes its provider request-scoped: it starts, runs per message, and refuses', async () => {
    OwnScopedGuard.seen = [];
    OwnScopedGuard.made = 0;
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(`${SERVER}-own-guard`), { providers: [Journal, OwnScopedGuard] }));
    const refused = await dead(broker, 'scoped', 'own-guard');
    await publish(broker, 'scoped', { id: 'm1' });
    await publish(broker, 'scoped', { id: 'm2', blocked: true });
    await waitFor(() => OwnScopedGuard.seen.length === 1 && refused.length === 1, 'm1 handled and m2 refused');
    expect(OwnScopedGuard.seen).toEqual(['own m1 journal true']);
    expect(OwnScopedGuard.made).toBe(2);
    expect(refused[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('guard');
  });

  it('a provider that depends on a request-scoped one still fails startup, naming the dependency', async () => {
    @Injectable({ scope: Scope.REQUEST })
    class PerRequest {}
    @Injectable()
    class NeedsPerRequest {
      constructor(readonly perRequest: PerRequest) {}
      @OnBrokerEvent('mem:scoped')
      handle(): void {}
    }
    const error = await startupError(options(`${SERVER}-scoped-dependency`), { providers: [PerRequest, NeedsPerRequest] });
    expect(error.code).toBe('INVALID_SUBSCRIPTION');
    expect(error.message).toContain('NeedsPerRequest.handle: the provider depends on PerRequest, which is request-scoped');
  });

  it("a global BaseRpcExceptionFilter does not turn a handler's NonRetryableError into a retry: dead letter at once, its own text", async () => {
    @Catch()
    class RpcFilter extends BaseRpcExceptionFilter {}
    @Injectable()
    class Fatal {
      attempts = 0;
      @OnBrokerEvent('mem:rpc', { group: 'rpc' })
      onRpc(message: { id: string }): void {
        this.attempts++;
        if (message.id === 'fatal') throw new NonRetryableError('order can never ship');
      }
    }
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(`${SERVER}-rpc-filter`), { providers: [Fatal, { provide: APP_FILTER, useClass: RpcFilter }] }));
    const refused = await dead(broker, 'rpc', 'rpc');
    await publish(broker, 'rpc', { id: 'fatal' });
    await waitFor(() => refused.length === 1, 'the dead letter');
    await sleep(50);
    expect(app.get(Fatal).attempts).toBe(1);
    expect(refused[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('non-retryable');
    expect(refused[0].headers[DEAD_LETTER_HEADERS.attempts]).toBe('1');
    expect(refused[0].headers[DEAD_LETTER_HEADERS.error]).toBe('NonRetryableError: order can never ship');
  });

  it('an interceptor that returns EMPTY (a duplicate skipped) has handled the message: acked, no retry, no dead letter', async () => {
    @Injectable()
    class SkipDuplicates implements NestInterceptor {
      intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
        return context.switchToRpc().getData<{ duplicate?: boolean }>().duplicate ? EMPTY : next.handle();
      }
    }
    @Injectable()
    class Skipping {
      readonly seen: string[] = [];
      @OnBrokerEvent('mem:skipped', { group: 'skipped' })
      @UseInterceptors(SkipDuplicates)
      onSkipped(message: { id: string }): void {
        this.seen.push(message.id);
      }
    }
    const server = `${SERVER}-empty`;
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(server), { providers: [Skipping, SkipDuplicates] }));
    await publish(broker, 'skipped', { id: 'k1', duplicate: true });
    await publish(broker, 'skipped', { id: 'k2' });
    const skipping = app.get(Skipping);
    await waitFor(() => skipping.seen.length === 1, 'k2 handled');
    await sleep(80); // a retry of k1 would come after 5 ms
    expect(skipping.seen).toEqual(['k2']);
    expect(MemoryBrokerServer.shared(server).deadLetterCount('shop.prd.skipped', 'skipped')).toBe(0);
  });

  it('a method with only some parameters decorated gets undefined for the others (Nest rule)', async () => {
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(`${SERVER}-partial`), { providers: [Scoped] }));
    await publish(broker, 'partial', { id: 'q1' });
    const scoped = app.get(Scoped);
    await waitFor(() => scoped.seen.length === 1, 'q1 handled');
    expect(scoped.seen).toEqual(['partial q1 ctx undefined']);
  });

  it("global guards do not apply to a dead-letter consumer: it receives what they refused instead of putting it back for ever", async () => {
    @Injectable()
    class Audited {
      readonly handled: string[] = [];
      readonly deadLetters: string[] = [];
      @OnBrokerEvent('mem:scoped', { group: 'audited' })
      onMessage(message: { id: string }): void {
        this.handled.push(message.id);
      }
      @OnBrokerEvent('mem:scoped', { group: 'audited', deadLetter: true })
      onDeadLetter(message: { id: string }, ctx: BrokerContext): void {
        this.deadLetters.push(`${message.id} ${ctx.headers[DEAD_LETTER_HEADERS.reason]}`);
      }
    }
    /** An HTTP-minded auth guard: refuses what has no authorization header. */
    @Injectable()
    class AuthGuard implements CanActivate {
      static calls = 0;
      canActivate(): boolean {
        AuthGuard.calls++;
        return false;
      }
    }
    AuthGuard.calls = 0;
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options(`${SERVER}-dead-letter-guard`), { providers: [Audited, { provide: APP_GUARD, useClass: AuthGuard }] }));
    await publish(broker, 'scoped', { id: 'd1' });
    const audited = app.get(Audited);
    await waitFor(() => audited.deadLetters.length === 1, 'the dead letter handled');
    expect(audited.handled).toEqual([]);
    expect(audited.deadLetters).toEqual(['d1 guard']);
    expect(AuthGuard.calls).toBe(1);
  });
});

/** A ValidationPipe given to @BrokerMessage itself, on RabbitMQ: what it refuses is a dead letter there too. */
@Injectable()
class RabbitOrders {
  readonly seen: unknown[] = [];

  @OnBrokerEvent('rmq:orders', { group: 'validated' })
  onOrder(@BrokerMessage(VALIDATE) order: OrderDto, @BrokerCtx() ctx: BrokerContext): void {
    this.seen.push({ order, attempt: ctx.attempt });
  }
}

// Every queue and exchange this file declares on RabbitMQ is deleted, by name, at the end.
const declared = recordDeclarations();

describeWithBroker('rabbitmq', 'enhancers on @OnBrokerEvent handlers (RabbitMQ)', () => {
  // Other RabbitMQ files restart the broker or close its connections: never alongside this block.
  holdExclusively('rabbitmq', { cleanup: () => declared.deleteAll() });

  it('a message the ValidationPipe refuses is dead-lettered at once (reason validation); a good one arrives as its DTO', async () => {
    const product = runUnique('enhancers');
    const { app, broker } = await createBrokerApp(
      { env: 'prd', product, brokers: [{ tag: 'rmq', envs: [rabbitEnv('prd')] }], retry: { maxAttempts: 3, initialDelayMs: 50 } },
      { providers: [RabbitOrders] },
    );
    try {
      const dead: DeadLetter[] = [];
      await broker.subscribe({ env: 'prd', event: 'rmq:orders', product_tag: product, input: { group: 'validated', deadLetter: true, callback: (message, ctx) => void dead.push({ message, headers: ctx.headers }) } });
      await broker.publish({ env: 'prd', event: 'rmq:orders', product_tag: product, input: { message: { orderId: 'r1', amount: 5 } } });
      await broker.publish({ env: 'prd', event: 'rmq:orders', product_tag: product, input: { message: { orderId: 'r2', amount: 0 } } });
      const orders = app.get(RabbitOrders);
      await waitFor(() => orders.seen.length === 1 && dead.length === 1, 'r1 handled and r2 dead-lettered', 10_000);
      await sleep(200); // a retry of r2 would come after 50 ms
      expect(orders.seen).toEqual([{ order: expect.any(OrderDto) as unknown, attempt: 1 }]);
      expect((orders.seen[0] as { order: OrderDto }).order.orderId).toBe('r1');
      expect(dead).toHaveLength(1);
      expect(dead[0].message).toEqual({ orderId: 'r2', amount: 0 });
      expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('validation');
      expect(dead[0].headers[DEAD_LETTER_HEADERS.attempts]).toBe('1');
      expect(dead[0].headers[DEAD_LETTER_HEADERS.error]).toContain('amount must be a positive number');
    } finally {
      await app.close();
    }
  });
});
