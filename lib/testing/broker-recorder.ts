import { MemoryBrokerServer } from '../adapters/memory';
import type { MemoryMessage } from '../adapters/memory/memory-queue';
import { DEAD_LETTER_HEADERS } from '../constants';
import type { DeadLetterReason } from '../delivery/dead-letters';
import { decodeInbound, undecoded, type DecodedMessage } from '../delivery/message-codec';
import { resolveRetryPolicy } from '../delivery/retry';
import { describeError, NonRetryableError } from '../errors';
import type { BrokerModuleOptions } from '../interfaces/broker-options.interface';
import type {
  BrokerContext,
  BrokerMessageHandler,
  PublishRequest,
  PublishResult,
  SubscribeRequest,
  Subscription,
} from '../interfaces/message-broker.interface';
import { RouteResolver } from '../routing/route-resolver';
import type {
  BrokerTestHarness,
  DeadLetter,
  EnvFilter,
  HandledMessage,
  PublishedMessage,
  WaitForHandledOptions,
  WaitForPublishedOptions,
} from './broker-test-harness';
import { releaseServer, testingServerName } from './testing-servers';

const DEFAULT_WAIT_MS = 4000;
/** How many of the calls seen a timeout's message lists. */
const LISTED_ON_TIMEOUT = 10;

interface ActiveSubscription {
  readonly event: string;
  readonly env: string;
  readonly group: string;
  readonly deadLetter: boolean;
}

interface Waiter {
  /** Settles the wait if it can; true once settled. */
  check(): boolean;
  fail(error: Error): void;
}

type Check<R> = () => { value: R } | { error: Error } | undefined;

/**
 * The harness behind `getBrokerTestHarness`: fed by TestingMessageBrokerService, which wraps
 * `publish` and every subscription's handler of one module instance.
 */
export class BrokerRecorder implements BrokerTestHarness {
  readonly env: string;
  readonly product: string;
  private readonly routes: RouteResolver;
  private readonly service: string;
  private readonly publishedRecords: { sequence: number; record: PublishedMessage }[] = [];
  private readonly handledRecords: HandledMessage[] = [];
  private readonly subscriptions = new Set<ActiveSubscription>();
  /** Every (event, env, group) subscribed since the start, whose dead letters reset() empties. */
  private readonly groups = new Map<string, { event: string; env: string; group: string }>();
  private readonly waiters = new Set<Waiter>();
  private sequence = 0;
  private closed = false;
  private checkScheduled = false;

  constructor(private readonly options: BrokerModuleOptions<string>) {
    this.env = options.env;
    this.product = options.product;
    this.service = options.service ?? options.product;
    this.routes = new RouteResolver(options);
  }

  // ---- fed by TestingMessageBrokerService ----

  /** Called before a publish: what to record once the broker accepts it, or nothing for a malformed request (publish refuses it). */
  publishing(request: PublishRequest<unknown>): ((result: PublishResult) => void) | undefined {
    if (typeof request !== 'object' || request === null || typeof request.input !== 'object' || request.input === null) return undefined;
    const { input } = request;
    let message: unknown;
    try {
      // What consumers will receive, frozen now: a caller may change its object once publish returns.
      const text = JSON.stringify(input.message);
      if (text === undefined) return undefined;
      message = JSON.parse(text);
    } catch {
      return undefined;
    }
    const sequence = this.sequence++;
    const event = request.event;
    const env = request.env;
    const headers = { ...(input.headers ?? {}) };
    const { key, correlationId, delayMs } = input;
    return (result) => {
      const record: PublishedMessage = { event, env, messageId: result.messageId, message, headers, key, correlationId, delayMs, acceptedAt: new Date() };
      // In the order of the publish calls, whatever order the broker accepted them in.
      let at = this.publishedRecords.length;
      while (at > 0 && this.publishedRecords[at - 1].sequence > sequence) at--;
      this.publishedRecords.splice(at, 0, { sequence, record });
      this.changed();
    };
  }

  /**
   * The same subscription with its handler recorded, and what to call once it is subscribed; nothing
   * for a request that subscribe refuses (the request then goes to subscribe as it was).
   */
  watching<T>(request: SubscribeRequest<T>): { request: SubscribeRequest<T>; subscribed: (subscription: Subscription) => Subscription } | undefined {
    if (typeof request !== 'object' || request === null || typeof request.input !== 'object' || request.input === null) return undefined;
    const { input } = request;
    if (typeof input.callback !== 'function') return undefined;
    let route: ReturnType<RouteResolver['resolve']>;
    try {
      route = this.routes.resolve(request.env, request.event, request.product_tag);
    } catch {
      return undefined;
    }
    const group = input.group ?? this.service;
    const deadLetter = input.deadLetter === true;
    const maxAttempts = resolveRetryPolicy(input.retry, route.retry, this.options.retry).maxAttempts;
    const callback = input.callback as BrokerMessageHandler;
    // lastAttempt follows the delivery layer of this copy of the package, which skips the retries on
    // `instanceof NonRetryableError` only. (The bridge turns another copy's NonRetryableError, known by
    // its name, into one of this copy before the delivery layer, so this sees that too.)
    const record = (message: unknown, context: BrokerContext, startedAt: number, outcome: 'succeeded' | 'failed', error?: unknown): void => {
      this.handledRecords.push({
        event: route.event,
        env: route.env,
        group,
        deadLetter,
        messageId: context.messageId,
        attempt: context.attempt,
        message,
        context,
        outcome,
        ...(outcome === 'failed' ? { error } : {}),
        // A NonRetryableError (the handler's, or a guard's or pipe's refusal) is dead-lettered at this attempt.
        lastAttempt: deadLetter || (outcome === 'failed' && error instanceof NonRetryableError) || context.attempt >= maxAttempts,
        durationMs: Date.now() - startedAt,
      });
      this.changed();
    };
    // Synchronous handlers stay synchronous: the delivery layer treats them differently.
    const recorded: BrokerMessageHandler = (message, context) => {
      const startedAt = Date.now();
      let result: unknown;
      try {
        result = callback(message, context);
      } catch (error) {
        record(message, context, startedAt, 'failed', error);
        throw error;
      }
      if (!isThenable(result)) {
        record(message, context, startedAt, 'succeeded');
        return result;
      }
      return Promise.resolve(result).then(
        (value) => {
          record(message, context, startedAt, 'succeeded');
          return value;
        },
        (error: unknown) => {
          record(message, context, startedAt, 'failed', error);
          throw error;
        },
      );
    };
    return {
      request: { ...request, input: { ...input, callback: recorded } },
      subscribed: (subscription) => {
        const active: ActiveSubscription = { event: route.event, env: route.env, group, deadLetter };
        this.subscriptions.add(active);
        this.groups.set(`${route.env}\n${route.event}\n${group}`, { event: route.event, env: route.env, group });
        return {
          event: subscription.event,
          env: subscription.env,
          group: subscription.group,
          unsubscribe: async () => {
            this.subscriptions.delete(active);
            await subscription.unsubscribe();
          },
        };
      },
    };
  }

  /** The application closed: pending waits fail, the in-memory servers are let go. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.subscriptions.clear();
    for (const waiter of [...this.waiters]) waiter.fail(new Error('the application closed before it happened'));
    this.waiters.clear();
    for (const broker of this.options.brokers) {
      for (const env of broker.envs) {
        const name = testingServerName(env);
        if (name !== undefined) releaseServer(name);
      }
    }
  }

  // ---- BrokerTestHarness ----

  published<T = unknown>(event?: string, filter: EnvFilter = {}): PublishedMessage<T>[] {
    return this.publishedRecords
      .map(({ record }) => record as PublishedMessage<T>)
      .filter((record) => (event === undefined || record.event === event) && (filter.env === undefined || record.env === filter.env));
  }

  waitForPublished<T = unknown>(event: string, options: WaitForPublishedOptions<T> = {}): Promise<PublishedMessage<T>> {
    const env = options.env ?? this.env;
    const what = `waitForPublished('${event}'${describeFilter({ env: options.env, messageId: options.messageId, where: options.where })})`;
    return this.wait<PublishedMessage<T>>(
      what,
      options.timeoutMs,
      () => {
        const found = this.published<T>(event, { env }).find(
          (record) => (options.messageId === undefined || record.messageId === options.messageId) && (!options.where || options.where(record.message, record)),
        );
        return found && { value: found };
      },
      () => {
        const seen = this.published(event, { env });
        return `published to it meanwhile: ${seen.length === 0 ? 'nothing' : listed(seen.map((record) => `message ${record.messageId}: ${JSON.stringify(record.message)}`))}`;
      },
    );
  }

  handled<T = unknown>(event?: string, filter: EnvFilter = {}): HandledMessage<T>[] {
    return this.handledRecords.filter(
      (record) => (event === undefined || record.event === event) && (filter.env === undefined || record.env === filter.env),
    ) as HandledMessage<T>[];
  }

  waitForHandled<T = unknown>(event: string, options: WaitForHandledOptions<T> = {}): Promise<HandledMessage<T>> {
    const env = options.env ?? this.env;
    const outcome = options.outcome ?? 'succeeded';
    const deadLetter = options.deadLetter ?? false;
    const what = `waitForHandled('${event}'${describeFilter({ ...options, outcome: options.outcome })})`;
    const matches = (record: HandledMessage<T>): boolean =>
      record.deadLetter === deadLetter &&
      (options.group === undefined || record.group === options.group) &&
      (options.messageId === undefined || record.messageId === options.messageId) &&
      (!options.where || options.where(record.message, record));
    return this.wait<HandledMessage<T>>(
      what,
      options.timeoutMs,
      () => {
        const candidates = this.handled<T>(event, { env }).filter(matches);
        const found = candidates.find((record) => record.outcome === outcome);
        if (found) return { value: found };
        if (outcome === 'succeeded') {
          const error = this.failedForGood(what, candidates, event, env, deadLetter, options.group);
          if (error) return { error };
        }
        return undefined;
      },
      () => {
        const seen = this.handled(event, { env }).filter((record) => record.deadLetter === deadLetter);
        const subscribed = [...this.subscriptions].some((subscription) => subscription.event === event && subscription.env === env && subscription.deadLetter === deadLetter);
        const handlers = subscribed
          ? ''
          : `; no handler of ${deadLetter ? 'its dead letters' : 'it'} is subscribed in env '${env}' (was app.init() called? is registerHandlers false?)`;
        return `handled meanwhile: ${seen.length === 0 ? 'nothing' : listed(seen.map(describeHandled))}${handlers}`;
      },
    );
  }

  deadLetters<T = unknown>(event: string, group: string, filter: EnvFilter = {}): DeadLetter<T>[] {
    const { server, topic } = this.serverOf(event, filter.env ?? this.env, 'deadLetters');
    if (server.deadLetterCount(topic, group) === 0) return [];
    return server
      .queue(topic, group, 'dead-letters')
      .snapshot()
      .map((message) => deadLetterOf<T>(message));
  }

  reset(): void {
    this.publishedRecords.length = 0;
    this.handledRecords.length = 0;
    if (this.closed) return;
    for (const { event, env, group } of this.groups.values()) {
      const { server, topic } = this.serverOf(event, env, 'reset');
      if (server.deadLetterCount(topic, group) === 0) continue;
      const deadLetters = server.queue(topic, group, 'dead-letters');
      while (deadLetters.dropOldest()) {
        // emptied one by one: the queue keeps its consumers
      }
    }
  }

  // ---- internals ----

  /**
   * The error of a wait for success that can no longer succeed: one matching message failed its
   * last attempt in every group subscribed to the event (or in the one group asked for).
   */
  private failedForGood<T>(
    what: string,
    candidates: HandledMessage<T>[],
    event: string,
    env: string,
    deadLetter: boolean,
    group: string | undefined,
  ): Error | undefined {
    const groups = new Set<string>();
    if (group !== undefined) groups.add(group);
    else {
      for (const subscription of this.subscriptions) {
        if (subscription.event === event && subscription.env === env && subscription.deadLetter === deadLetter) groups.add(subscription.group);
      }
    }
    if (groups.size === 0) return undefined;
    const failuresById = new Map<string, HandledMessage<T>[]>();
    for (const record of candidates) {
      if (record.outcome !== 'failed' || !record.lastAttempt || !groups.has(record.group)) continue;
      const list = failuresById.get(record.messageId) ?? [];
      if (!list.some((failure) => failure.group === record.group)) list.push(record);
      failuresById.set(record.messageId, list);
    }
    for (const [messageId, failures] of failuresById) {
      if (failures.length < groups.size) continue;
      const causes = failures.map((failure) => `group ${failure.group}, attempt ${failure.attempt}: ${describeError(failure.error)}`).join('; ');
      return new Error(`${what}: message ${messageId} failed for good (${causes})`, { cause: failures[0].error });
    }
    return undefined;
  }

  private serverOf(event: string, env: string, caller: string): { server: MemoryBrokerServer; topic: string } {
    if (this.closed) throw new Error(`${caller}('${event}'): the application is closed`);
    const route = this.routes.resolve(env, event, this.product);
    const name = testingServerName(route.brokerEnv);
    if (name === undefined) throw new Error(`${caller}('${event}'): env '${env}' is not served by the testing brokers`);
    return { server: MemoryBrokerServer.shared(name), topic: route.topic.name };
  }

  private wait<R>(what: string, timeoutMs: number | undefined, check: Check<R>, seen: () => string): Promise<R> {
    const limit = timeoutMs ?? DEFAULT_WAIT_MS;
    return new Promise<R>((resolve, reject) => {
      const pending: { timer?: NodeJS.Timeout } = {};
      const waiter: Waiter = {
        check: () => {
          let result: ReturnType<Check<R>>;
          try {
            result = check();
          } catch (error) {
            result = { error: error instanceof Error ? error : new Error(String(error)) };
          }
          if (!result) return false;
          this.waiters.delete(waiter);
          clearTimeout(pending.timer);
          if ('error' in result) reject(result.error);
          else resolve(result.value);
          return true;
        },
        fail: (error) => {
          this.waiters.delete(waiter);
          clearTimeout(pending.timer);
          reject(new Error(`${what}: ${error.message}`));
        },
      };
      if (this.closed) return waiter.fail(new Error('the application is closed'));
      this.waiters.add(waiter);
      // What already happened is checked after this turn too, once the broker is done with it.
      this.changed();
      pending.timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new Error(`${what} timed out after ${limit} ms; ${seen()}`));
      }, limit);
    });
  }

  /**
   * Checks the waits after the current turn of the event loop: by then the delivery layer has
   * acked the message, scheduled its retry or dead-lettered it, so a test that goes on from a
   * wait sees the broker in the state that follows.
   */
  private changed(): void {
    if (this.checkScheduled || this.waiters.size === 0) return;
    this.checkScheduled = true;
    setImmediate(() => {
      this.checkScheduled = false;
      for (const waiter of [...this.waiters]) waiter.check();
    });
  }
}

const DEAD_LETTER_REASONS: ReadonlySet<string> = new Set<DeadLetterReason>(['max-attempts', 'poison', 'schema', 'non-retryable', 'guard', 'validation']);

function isDeadLetterReason(value: string | undefined): value is DeadLetterReason {
  return value !== undefined && DEAD_LETTER_REASONS.has(value);
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (typeof value === 'object' || typeof value === 'function') && value !== null && typeof (value as { then?: unknown }).then === 'function';
}

function deadLetterOf<T>(message: MemoryMessage): DeadLetter<T> {
  const inbound = { body: message.body, headers: message.headers, metadata: message, raw: message };
  let decoded: DecodedMessage;
  try {
    decoded = decodeInbound(inbound);
  } catch {
    decoded = undecoded(inbound);
  }
  const headers = decoded.headers;
  const reason = headers[DEAD_LETTER_HEADERS.reason];
  return {
    messageId: decoded.id,
    message: decoded.message as T,
    headers: { ...headers },
    error: headers[DEAD_LETTER_HEADERS.error] ?? '',
    attempts: Number(headers[DEAD_LETTER_HEADERS.attempts] ?? decoded.attempt),
    reason: isDeadLetterReason(reason) ? reason : 'max-attempts',
    failedAt: new Date(headers[DEAD_LETTER_HEADERS.failedAt] ?? decoded.publishedAt),
    publishedAt: new Date(decoded.publishedAt),
    ...(decoded.key !== undefined ? { key: decoded.key } : {}),
    ...(decoded.correlationId !== undefined ? { correlationId: decoded.correlationId } : {}),
  };
}

function describeHandled(record: HandledMessage): string {
  const ending = record.outcome === 'succeeded' ? 'succeeded' : `failed (${describeError(record.error)})`;
  return `group ${record.group}, message ${record.messageId}, attempt ${record.attempt}: ${ending}`;
}

function listed(items: string[]): string {
  const shown = items.slice(-LISTED_ON_TIMEOUT);
  return `${items.length > shown.length ? `${items.length} calls, the last ${shown.length}: ` : ''}${shown.join('; ')}`;
}

function describeFilter(filter: Record<string, unknown>): string {
  const parts = Object.entries(filter)
    .filter(([name, value]) => value !== undefined && name !== 'timeoutMs')
    .map(([name, value]) => (typeof value === 'function' ? `${name}: <function>` : `${name}: ${JSON.stringify(value)}`));
  return parts.length === 0 ? '' : `, { ${parts.join(', ')} }`;
}
