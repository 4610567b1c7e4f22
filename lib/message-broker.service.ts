import {
  Inject,
  Injectable,
  Logger,
  type BeforeApplicationShutdown,
  type OnApplicationShutdown,
  type OnModuleDestroy,
} from '@nestjs/common';
import { AdapterRegistry } from './adapters/adapter-registry';
import type { BrokerAdapter, OutboundMessage } from './adapters/broker-adapter';
import { retryPolicy as checkRetryPolicy } from './broker-options.validator';
import {
  DEFAULT_CONCURRENCY,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_SHUTDOWN_TIMEOUT_MS,
  DUCTAPE_BROKER_OPTIONS,
  MAX_TIMER_MS,
  NAME_PATTERN,
} from './constants';
import { reprocessDeadLetters } from './delivery/dead-letters';
import { JSON_CONTENT_TYPE } from './adapters/cloudevents';
import { encodeMessage } from './delivery/message-codec';
import { newMessageId } from './delivery/message-id';
import { resolveRetryPolicy } from './delivery/retry';
import { SubscriptionRunner } from './delivery/subscription-runner';
import { BrokerError, describeError, IncompleteDrainError, redactSecrets, type BrokerErrorCode } from './errors';
import type { BrokerModuleOptions } from './interfaces/broker-options.interface';
import type { StandardSchemaV1 } from './interfaces/standard-schema.interface';
import type { DuctapeEvents, TypedPublishRequest, TypedSubscribeRequest } from './interfaces/typed-events.interface';
import type {
  BrokerHealth,
  PublishRequest,
  PublishResult,
  ReprocessDeadLettersRequest,
  SubscribeRequest,
  Subscription,
} from './interfaces/message-broker.interface';
import { RouteResolver, type Route } from './routing/route-resolver';
import { createBrokerTracing, type BrokerTracing, type TracedConsumer } from './tracing/broker-tracing';
import type { Span } from '@opentelemetry/api';

/**
 * Publishes and subscribes to `brokerTag:topicTag` events on whichever broker serves the
 * requested environment. Validates and routes the request; the delivery layer does the rest.
 */
@Injectable()
export class MessageBrokerService<Events extends object = DuctapeEvents> implements OnModuleDestroy, BeforeApplicationShutdown, OnApplicationShutdown {
  private readonly logger = new Logger('DuctapeBroker');
  private readonly routes: RouteResolver;
  private readonly adapters: AdapterRegistry;
  /** Each running subscription, with its handler's CONSUMER spans when tracing: those its drain gives up on are ended as abandoned. */
  private readonly runners = new Map<SubscriptionRunner, TracedConsumer | undefined>();
  private readonly serviceName: string;
  private readonly maxMessageBytes: number;
  private readonly shutdownTimeoutMs: number;
  /** Undefined when tracing is off or @opentelemetry/api is absent: then one check per publish, nothing per delivery. */
  private readonly tracing: BrokerTracing | undefined;
  private state: 'running' | 'draining' | 'closed' = 'running';
  private drained: Promise<void> = Promise.resolve();

  constructor(@Inject(DUCTAPE_BROKER_OPTIONS) private readonly options: BrokerModuleOptions<string>) {
    this.routes = new RouteResolver(options);
    this.shutdownTimeoutMs = options.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS;
    this.adapters = new AdapterRegistry(this.logger, options.adapters, this.shutdownTimeoutMs);
    this.serviceName = options.service ?? options.product;
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.tracing = createBrokerTracing(options.tracing);
  }

  /** The environment slug and product this module runs as. */
  get env(): string {
    return this.options.env;
  }

  get product(): string {
    return this.options.product;
  }

  /** The service name: the default consumer group (the module's `service`, else its product). */
  get service(): string {
    return this.serviceName;
  }

  /**
   * False with `registerHandlers: false` (a replica that only publishes): the module subscribes no
   * `@OnBrokerEvent` handler, and DuctapeBrokerServer no `@EventPattern` handler.
   */
  get registersHandlers(): boolean {
    return this.options.registerHandlers !== false;
  }

  /** Resolves once the broker has accepted the message. Nothing is sent when it rejects with a validation error. */
  publish<T = unknown, E extends string = string>(typed: TypedPublishRequest<E, Events, T>): Promise<PublishResult> {
    const request = typed as PublishRequest<unknown>;
    try {
      const route = this.route(request);
      const input = request.input;
      if (typeof input !== 'object' || input === null) {
        throw new BrokerError('INVALID_MESSAGE', `publish '${route.event}': input must be an object with a message`);
      }
      checkPublishInput(input, route.event);
      const messageId = input.messageId ?? newMessageId();
      if (this.tracing !== undefined) {
        // Its span covers the rest (a schema check, a first connection): the message carries its context in the headers.
        return this.tracing.send(route, input, messageId, this.publishRouted);
      }
      return this.publishRouted(route, input, messageId, undefined, input.headers);
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }

  /**
   * A checked publish, from its schema check on; `span` is its producer span when tracing, and
   * `headers` what to send: the user's, with the trace context when tracing. Bound: the tracing calls it back.
   */
  private readonly publishRouted = (
    route: Route,
    input: PublishRequest<unknown>['input'],
    messageId: string,
    span: Span | undefined,
    headers: Readonly<Record<string, string>> | undefined,
  ): Promise<PublishResult> => {
    // A schema is checked before anything is encoded or sent, and may be asynchronous.
    if (route.schema) return this.publishValidated(route, input, messageId, span, headers);
    const adapter = this.adapters.connected(route.brokerEnv);
    if (!adapter) return this.publishWhenConnected(route, this.outbound(route, input, messageId, span, headers), messageId);
    // The hot path: no async frame of its own, the adapter's promise chained once.
    return this.send(adapter, route, this.outbound(route, input, messageId, span, headers), messageId);
  };

  private async publishValidated(
    route: Route,
    input: PublishRequest<unknown>['input'],
    messageId: string,
    span: Span | undefined,
    headers: Readonly<Record<string, string>> | undefined,
  ): Promise<PublishResult> {
    await this.validateSchema(route, input.message);
    const message = this.outbound(route, input, messageId, span, headers);
    const adapter = this.adapters.connected(route.brokerEnv) ?? (await this.adapterFor(route, 'PUBLISH_FAILED'));
    return this.send(adapter, route, message, messageId);
  }

  private async publishWhenConnected(route: Route, message: OutboundMessage, messageId: string): Promise<PublishResult> {
    return this.send(await this.adapterFor(route, 'PUBLISH_FAILED'), route, message, messageId);
  }

  /**
   * The message as adapters send it, with `headers`. Refuses what cannot be encoded
   * (INVALID_MESSAGE), and any publish after shutdown. Only the user's own headers count against
   * maxMessageBytes: a publish that passes with tracing off passes with it, whatever the trace
   * context (baggage included) adds.
   */
  private outbound(
    route: Route,
    input: PublishRequest<unknown>['input'],
    messageId: string,
    span: Span | undefined,
    headers: Readonly<Record<string, string>> | undefined,
  ): OutboundMessage {
    const body = encodeMessage(input.message, this.maxMessageBytes - (input.headers === undefined ? 0 : headerBytes(input.headers)));
    if (span !== undefined) this.tracing?.encoded(span, body);
    if (this.state === 'closed') throw new BrokerError('PUBLISH_FAILED', `publish '${route.event}': the broker module is shut down`);
    return {
      body,
      messageId,
      publishedAt: Date.now(),
      type: route.event,
      source: route.source,
      contentType: JSON_CONTENT_TYPE,
      attempt: 1,
      key: input.key,
      correlationId: input.correlationId,
      delayMs: input.delayMs,
      headers: headers ?? NO_HEADERS,
    };
  }

  private send(adapter: BrokerAdapter, route: Route, message: OutboundMessage, messageId: string): Promise<PublishResult> {
    let accepted: Promise<void>;
    try {
      // Promise.resolve hands a native promise back as it is; it also covers an adapter that returned nothing.
      accepted = Promise.resolve(adapter.publish(route.topic, message));
    } catch (error) {
      // An adapter that throws instead of rejecting (a name its broker refuses, say) still fails as PUBLISH_FAILED.
      accepted = Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    return accepted.then(
      () => ({ messageId }),
      (error: unknown) => Promise.reject(this.wrap('PUBLISH_FAILED', `publish '${route.event}' [${route.env}] failed`, error)),
    );
  }

  /** Starts consuming; every message of the topic reaches each group once (more on retry). */
  async subscribe<T = unknown, E extends string = string>(typed: TypedSubscribeRequest<E, Events, T>): Promise<Subscription> {
    const request = typed as SubscribeRequest<unknown>;
    const route = this.route(request);
    const input = request.input;
    if (typeof input !== 'object' || input === null || typeof input.callback !== 'function') {
      throw new BrokerError('INVALID_SUBSCRIPTION', `subscribe '${route.event}': input.callback must be a function`);
    }
    if (input.topicTag !== undefined && input.topicTag !== route.topicTag) {
      throw new BrokerError(
        'INVALID_EVENT',
        `subscribe '${route.event}': input.topicTag '${String(input.topicTag).slice(0, 120)}' is not the topic of the event ('${route.topicTag}')`,
      );
    }
    const problems = checkSubscribeInput(input);
    if (problems.length > 0) {
      throw new BrokerError('INVALID_SUBSCRIPTION', `subscribe '${route.event}': ${problems.join('; ')}`, { problems });
    }
    if (this.state !== 'running') {
      throw new BrokerError('SUBSCRIBE_FAILED', `subscribe '${route.event}': the broker module is shutting down`);
    }
    const group = input.group ?? this.serviceName;
    const adapter = await this.adapterFor(route, 'SUBSCRIBE_FAILED');
    // Wrapped once here, not per message: with tracing off the runner calls the callback itself.
    const traced = this.tracing?.consumer(input.callback, route, group, input.deadLetter === true);
    const runner = new SubscriptionRunner(
      {
        route,
        group,
        concurrency: input.concurrency ?? DEFAULT_CONCURRENCY,
        retry: resolveRetryPolicy(input.retry, route.retry, this.options.retry),
        source: input.deadLetter ? 'dead-letters' : 'messages',
        handler: traced === undefined ? input.callback : traced.handler,
      },
      adapter,
      this.logger,
    );
    try {
      await runner.start();
    } catch (error) {
      throw this.wrap('SUBSCRIBE_FAILED', `subscribe '${route.event}' [${route.env}] group ${group} failed`, error);
    }
    if (this.state !== 'running') {
      // Shutdown began while the consumer was starting: it would be missed by the drain.
      await this.stop(runner, traced);
      throw new BrokerError('SUBSCRIBE_FAILED', `subscribe '${route.event}': the broker module is shutting down`);
    }
    this.runners.set(runner, traced);
    return {
      event: route.event,
      env: route.env,
      group,
      unsubscribe: async () => {
        this.runners.delete(runner);
        await this.stop(runner, traced);
      },
    };
  }

  /**
   * Stops a subscription, its in-flight handlers given shutdownTimeoutMs. The CONSUMER spans of
   * those still running then are ended here, as abandoned: their handlers may never settle, and a
   * span that is not ended is never exported.
   */
  private async stop(runner: SubscriptionRunner, traced: TracedConsumer | undefined): Promise<void> {
    await runner.stop(this.shutdownTimeoutMs);
    traced?.abandon(this.shutdownTimeoutMs);
  }

  /**
   * Each broker env this process has used, up or down by its adapter's own view of its
   * connections (no request to the broker). Empty before the first publish or subscribe.
   */
  health(): BrokerHealth[] {
    return this.adapters.inUse().map(({ brokerTag, env, adapter }) => {
      const own = adapter ? (adapter.health?.() ?? { up: true }) : { up: false, reason: 'not connected: its first connection is under way, or failed' };
      const state: BrokerHealth = { broker: brokerTag, env: env.slug, type: env.type, up: this.state !== 'closed' && own.up };
      const reason = this.state === 'closed' ? 'the broker module is shut down' : own.reason;
      if (reason) state.reason = redactSecrets(reason);
      return state;
    });
  }

  /** Moves dead letters of one group back to that group's queue; resolves with how many moved. */
  async reprocessDeadLetters(request: ReprocessDeadLettersRequest): Promise<number> {
    const route = this.route(request);
    const group = request.group ?? this.serviceName;
    const limit = request.limit ?? Number.MAX_SAFE_INTEGER;
    if (typeof group !== 'string' || !NAME_PATTERN.test(group)) {
      throw new BrokerError('INVALID_REQUEST', `reprocessDeadLetters '${route.event}': group must be a valid name`);
    }
    if (!Number.isInteger(limit) || limit < 1) {
      throw new BrokerError('INVALID_REQUEST', `reprocessDeadLetters '${route.event}': limit must be a positive integer`);
    }
    const adapter = await this.adapterFor(route, 'PUBLISH_FAILED');
    try {
      return await reprocessDeadLetters(adapter, route, group, limit);
    } catch (error) {
      if (error instanceof IncompleteDrainError) {
        throw new BrokerError(
          'REPROCESS_INCOMPLETE',
          `reprocessDeadLetters '${route.event}' [${route.env}] group ${group} moved ${error.moved} dead letters, then stopped (${error.message}); the others are still among the dead letters: call it again`,
          { cause: error },
        );
      }
      throw this.wrap('PUBLISH_FAILED', `reprocessDeadLetters '${route.event}' [${route.env}] group ${group} failed`, error);
    }
  }

  /**
   * Shutdown, step 1, in the first hook Nest calls on close: stop intake and let in-flight handlers
   * finish while the other modules (databases, clients) are still up. Publishing still works.
   */
  async onModuleDestroy(): Promise<void> {
    if (this.state !== 'running') return this.drained;
    this.state = 'draining';
    const runners = [...this.runners];
    this.runners.clear();
    this.drained = Promise.all(runners.map(([runner, traced]) => this.stop(runner, traced))).then(() => undefined);
    return this.drained;
  }

  /** Same as step 1, for a close that skipped onModuleDestroy. */
  beforeApplicationShutdown(): Promise<void> {
    return this.onModuleDestroy();
  }

  /** Shutdown, step 2: close connections. */
  async onApplicationShutdown(): Promise<void> {
    await this.onModuleDestroy();
    if (this.state === 'closed') return;
    this.state = 'closed';
    await this.adapters.closeAll();
  }

  private route(request: { env: string; event: string; product_tag: string }): Route {
    if (typeof request !== 'object' || request === null) {
      throw new BrokerError('INVALID_EVENT', 'the request must be an object with env, event and product_tag');
    }
    return this.routes.resolve(request.env, request.event, request.product_tag);
  }

  private async validateSchema(route: Route, message: unknown): Promise<void> {
    let result: Awaited<ReturnType<StandardSchemaV1['~standard']['validate']>>;
    try {
      result = await route.schema!['~standard'].validate(message);
    } catch (error) {
      throw new BrokerError('INVALID_MESSAGE', `publish '${route.event}': its schema could not validate the message: ${describeError(error)}`, {
        cause: error,
      });
    }
    if (result.issues) {
      const issues = result.issues.map((issue) => `${issuePath(issue.path)}${issue.message}`).join('; ');
      throw new BrokerError('INVALID_MESSAGE', `publish '${route.event}': message fails its schema: ${issues}`);
    }
  }

  private async adapterFor(route: Route, code: BrokerErrorCode): Promise<BrokerAdapter> {
    try {
      return await this.adapters.get(route.brokerTag, route.brokerEnv);
    } catch (error) {
      throw this.wrap(code, `broker '${route.brokerTag}' env '${route.env}' (${route.brokerEnv.type}) is unavailable`, error);
    }
  }

  private wrap(code: BrokerErrorCode, context: string, error: unknown): BrokerError {
    // An adapter refuses what its broker cannot carry as INVALID_MESSAGE, before sending anything.
    if (error instanceof BrokerError && (error.code === code || error.code === 'CONFIG_INVALID' || error.code === 'INVALID_MESSAGE')) return error;
    return new BrokerError(code, `${context}: ${describeError(error)}`, { cause: printableCause(error) });
  }
}

/**
 * A cause that prints no secret: a BrokerError as it is (this module's own text, redacted where it
 * quotes another error); anything else (a client library's or a registered adapter's error, whose
 * text may hold a URL with its password) as its redacted text, with its stack frames, not itself:
 * util.inspect, pino and Nest's logger print the whole cause chain.
 */
function printableCause(error: unknown): Error {
  if (error instanceof BrokerError) return error;
  const text = describeError(error);
  const cause = new Error(text);
  let frames: string | undefined;
  try {
    const stack = (error as { stack?: unknown } | null | undefined)?.stack;
    // The frames only (the first 8 KB): the stack's first lines repeat the message, unredacted.
    const at = typeof stack === 'string' ? stack.search(/\n\s+at /) : -1;
    if (typeof stack === 'string' && at >= 0) frames = redactSecrets(stack.slice(at + 1, at + 1 + 8192));
  } catch {
    // A stack getter that throws: the redacted text is the cause then, without frames.
  }
  cause.stack = frames === undefined ? text : `${text}\n${frames}`;
  return cause;
}

const NO_HEADERS: Readonly<Record<string, string>> = Object.freeze({});

/** What the headers take of the message size limit (their UTF-16 length: close enough for a bound). */
function headerBytes(headers: Readonly<Record<string, string>>): number {
  let bytes = 0;
  for (const name in headers) bytes += name.length + headers[name].length;
  return bytes;
}

/** Checks the optional fields of a publish; allocates nothing when they are well formed (the hot path). */
function checkPublishInput(input: PublishRequest['input'], event: string): void {
  let problems: string[] | undefined;
  const problem = (text: string) => (problems ??= []).push(text);
  if (input.headers !== undefined) {
    if (typeof input.headers !== 'object' || input.headers === null || Array.isArray(input.headers)) {
      problem('input.headers must be an object of strings');
    } else {
      for (const name in input.headers) {
        if (typeof input.headers[name] !== 'string') problem(`input.headers.${name.slice(0, 60)} must be a string`);
      }
    }
  }
  if (!isIdentifierText(input.key)) problem('input.key must be a non-empty string of at most 1024 characters');
  if (!isIdentifierText(input.correlationId)) problem('input.correlationId must be a non-empty string of at most 1024 characters');
  if (!isIdentifierText(input.messageId)) problem('input.messageId must be a non-empty string of at most 1024 characters');
  if (input.delayMs !== undefined && (typeof input.delayMs !== 'number' || !(input.delayMs >= 0 && input.delayMs <= MAX_TIMER_MS))) {
    problem(`input.delayMs must be a number from 0 to ${MAX_TIMER_MS}`);
  }
  if (problems) throw new BrokerError('INVALID_MESSAGE', `publish '${event}': ${problems.join('; ')}`, { problems });
}

/** Absent, or a non-empty string of at most 1024 characters (a key, a correlation or message id). */
function isIdentifierText(value: unknown): boolean {
  return value === undefined || (typeof value === 'string' && value !== '' && value.length <= 1024);
}

function checkSubscribeInput(input: Omit<SubscribeRequest['input'], 'callback'>): string[] {
  const problems: string[] = [];
  if (input.group !== undefined && (typeof input.group !== 'string' || !NAME_PATTERN.test(input.group))) {
    problems.push("input.group must be a valid name (letters, digits, '.', '_' and '-')");
  }
  if (input.concurrency !== undefined && (!Number.isInteger(input.concurrency) || input.concurrency < 1 || input.concurrency > 10_000)) {
    problems.push('input.concurrency must be an integer from 1 to 10000');
  }
  if (input.retry !== undefined) checkRetryPolicy(input.retry, 'input.retry', problems);
  if (input.deadLetter !== undefined && typeof input.deadLetter !== 'boolean') problems.push('input.deadLetter must be a boolean');
  return problems;
}

function issuePath(path: ReadonlyArray<PropertyKey | { key: PropertyKey }> | undefined): string {
  if (!path || path.length === 0) return '';
  return `${path.map((segment) => String(typeof segment === 'object' ? segment.key : segment)).join('.')}: `;
}
