import { Logger } from '@nestjs/common';
import { Server, type CustomTransportStrategy, type MessageHandler } from '@nestjs/microservices';
import { observableResult } from '../support/observable-result';
import { BrokerError } from '../errors';
import type { RetryPolicy } from '../interfaces/broker-options.interface';
import type { BrokerContext, SubscribeRequest, Subscription } from '../interfaces/message-broker.interface';
import type { MessageBrokerService } from '../message-broker.service';
import type { DuctapeBrokerPort } from './broker-port';
import { DUCTAPE_BROKER_TRANSPORT } from './constants';
import { DuctapeBrokerContext } from './ductape-broker.context';
import { forgetCaptured, installRpcErrorCapture, settledError } from './rpc-error-capture';

export interface DuctapeBrokerServerOptions {
  /** Env slug the handlers consume in (default: the module's `env`). */
  env?: string;
  /** Product tag of the events (default: the module's `product`). */
  product?: string;
  /** Base of the default group names (default: the module's `service`, else its `product`). */
  service?: string;
  /**
   * The group of every handler without a `{ group }` of its own, for every pattern (groups are per
   * topic, so one name serves all). Default: `<service>.event-pattern.<brokerTag>.<topicTag>`.
   * A second handler of one pattern without a group gets this name + `.2`, a third `.3`, ...
   */
  group?: string;
  /** Messages handled at once per handler (default: the module's default, 1). */
  concurrency?: number;
  /** Retry policy of every handler (default: the topic's, else the module's). */
  retry?: RetryPolicy;
}

/**
 * Per-handler settings, given as the extras of the decorator:
 * `@EventPattern('orders:new-orders', { group: 'billing', concurrency: 4 })`. They win over the server's.
 */
export interface DuctapeEventPatternExtras {
  group?: string;
  concurrency?: number;
  retry?: RetryPolicy;
}

/** The status values DuctapeBrokerServer reports through `status`. */
export type DuctapeBrokerServerStatus = 'listening' | 'closed';

/** One handler of one pattern, and the group it consumes in. */
interface PlannedHandler {
  pattern: string;
  handler: MessageHandler;
  group: string;
}

/**
 * A `@nestjs/microservices` transport over this module: every `@EventPattern('brokerTag:topicTag')`
 * handler of the app's controllers consumes that event through `MessageBrokerService.subscribe`,
 * with the module's delivery semantics. A message is acked once the handler's promise or Observable
 * completes; a handler that throws (or whose Observable errors, or a guard that refuses) gets it
 * again after the retry delay, then it goes to the dead letters of its topic and group. A
 * NonRetryableError (thrown by the handler, a guard, a pipe or an interceptor) sends it to the
 * dead letters at once.
 *
 * Each handler has a subscription, and a group, of its own (Nest would chain the handlers of one
 * pattern and run them as one): each one acks, retries and dead-letters on its own.
 *
 * Request/response is refused: `listen()` fails with INVALID_SUBSCRIPTION on any `@MessagePattern`
 * handler, and on object patterns. A broker delivers at least once and has no reply channel, so a
 * caller waiting for an answer could wait forever or get two; publish a reply event instead.
 *
 * ```ts
 * app.connectMicroservice({ strategy: new DuctapeBrokerServer(app.get(MessageBrokerService)) });
 * await app.startAllMicroservices();
 * ```
 *
 * With the module's `registerHandlers: false` (a replica that only publishes) it checks the
 * handlers as usual but subscribes none, and reports 'listening'.
 *
 * Logs under the context 'DuctapeBrokerServer'.
 */
export class DuctapeBrokerServer extends Server<Record<string, never>, DuctapeBrokerServerStatus> implements CustomTransportStrategy {
  protected override readonly logger = new Logger('DuctapeBrokerServer');
  private readonly objectPatterns = new Set<string>();
  /** Every handler of each pattern, in the order Nest registered them (never chained). */
  private readonly handlers = new Map<string, MessageHandler[]>();
  private subscriptions: Subscription[] = [];
  private starting: Promise<void> | undefined;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly broker: DuctapeBrokerPort,
    private readonly options: DuctapeBrokerServerOptions = {},
  ) {
    super();
    // Handlers bound to another transport (`@EventPattern(p, Transport.TCP)`) are then not registered here.
    this.transportId = DUCTAPE_BROKER_TRANSPORT;
    installRpcErrorCapture();
  }

  /**
   * Keeps each handler in the pattern's list. Nest's own addHandler chains a second event handler
   * of a pattern to the first (`.next`), and its wrapper then runs both as one forkJoin: one
   * subscription, one group, one settlement for both. Unchained, each runs alone. Object patterns
   * are recorded: Nest turns them into JSON strings before they reach the map.
   */
  override addHandler(pattern: unknown, callback: MessageHandler, isEventHandler = false, extras: Record<string, unknown> = {}): void {
    const route = this.normalizePattern(pattern as string);
    if (typeof pattern !== 'string') this.objectPatterns.add(route);
    callback.isEventHandler = isEventHandler;
    callback.extras = extras;
    const list = this.handlers.get(route);
    if (list) list.push(callback);
    else this.handlers.set(route, [callback]);
    // getHandlers() still lists the pattern (its first handler), with nothing chained to it.
    if (!this.messageHandlers.has(route)) this.messageHandlers.set(route, callback);
  }

  /**
   * Subscribes every handler; calls back with the first error (nothing stays subscribed then).
   * Fails with INVALID_REQUEST on a server that was closed (or closes while it starts): a closed
   * server does not start again, make a new one.
   */
  async listen(callback: (error?: unknown) => void): Promise<void> {
    if (this.closing) return callback(closedError('listen() after close()'));
    if (this.starting) return callback(new BrokerError('INVALID_REQUEST', 'DuctapeBrokerServer.listen(): it is already listening (or starting)'));
    const starting = this.start();
    this.starting = starting;
    try {
      await starting;
    } catch (error) {
      this.starting = undefined;
      return callback(error);
    }
    // close() came while the consumers started: it stops them (it waited for this start), and the
    // server never reports 'listening'.
    if (this.closing) return callback(closedError('close() while listen() was starting'));
    this._status$.next('listening');
    callback();
  }

  /**
   * Stops intake on every handler and waits for in-flight handlers (up to the module's
   * shutdownTimeoutMs). A start in progress is waited for first, so its consumers are stopped too.
   */
  close(): Promise<void> {
    this.closing ??= this.stop();
    return this.closing;
  }

  /** This transport emits no events; the broker connections' state is `MessageBrokerService.health()`. */
  on(event: string): never {
    throw new BrokerError(
      'INVALID_REQUEST',
      `DuctapeBrokerServer.on('${String(event)}'): this transport emits no events; read the connections' state from MessageBrokerService.health() (or BrokerHealthIndicator)`,
    );
  }

  /** The MessageBrokerService it consumes through. */
  unwrap<T = MessageBrokerService>(): T {
    return this.broker as T;
  }

  private async start(): Promise<void> {
    // Every handler is checked before any consumer starts, so a refused one leaves nothing running.
    const planned = this.plan();
    if (this.broker.registersHandlers === false) {
      // A publish-only replica runs the same modules: its handlers are checked (above), not consumed.
      this.logger.log(
        `registerHandlers is false: none of the ${planned.length} @EventPattern handler(s) is subscribed (this replica only publishes)`,
      );
      return;
    }
    const requests = planned.map((handler) => ({ pattern: handler.pattern, request: this.request(handler) }));
    const results = await Promise.allSettled(requests.map(({ pattern, request }) => this.subscribe(pattern, request)));
    const started = results.filter((result) => result.status === 'fulfilled').map((result) => result.value);
    const failure = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    if (failure) {
      await Promise.allSettled(started.map((subscription) => subscription.unsubscribe()));
      throw failure.reason;
    }
    this.subscriptions = started;
  }

  private async stop(): Promise<void> {
    await this.starting?.catch(() => undefined);
    const subscriptions = this.subscriptions;
    this.subscriptions = [];
    await Promise.all(subscriptions.map((subscription) => subscription.unsubscribe()));
    this._status$.next('closed');
  }

  /**
   * The group of each handler: its `{ group }`, else the server's `group`, else
   * `<service>.event-pattern.<brokerTag>.<topicTag>`; the second handler of a pattern without a
   * group of its own gets that name + '.2', the third '.3', in the order Nest registered them
   * (modules, then controllers, then methods). Two handlers of a pattern in one group would share
   * its messages (each getting some): refused.
   */
  private plan(): PlannedHandler[] {
    const planned: PlannedHandler[] = [];
    const warnings: string[] = [];
    const service = this.options.service ?? this.broker.service;
    for (const [pattern, handlers] of this.handlers) {
      this.check(pattern, handlers);
      const base = this.options.group ?? `${service}.event-pattern.${pattern.replace(':', '.')}`;
      const groups = new Set<string>();
      const derived: string[] = [];
      for (const handler of handlers) {
        const extras = (handler.extras ?? {}) as DuctapeEventPatternExtras;
        let group = extras.group;
        if (group === undefined) {
          // ':' is not allowed in a group name; a hyphen never appears in a class name, so this never
          // meets the `<service>.<ClassName>.<method>` default of @OnBrokerEvent.
          group = derived.length === 0 ? base : `${base}.${derived.length + 1}`;
          derived.push(group);
        }
        if (groups.has(group)) {
          throw new BrokerError(
            'INVALID_SUBSCRIPTION',
            `@EventPattern('${pattern}'): two handlers in group '${group}' would share its messages (each getting only some of them); give each its own { group }`,
          );
        }
        groups.add(group);
        planned.push({ pattern, handler, group });
      }
      if (derived.length > 1) {
        warnings.push(
          `@EventPattern('${pattern}') has ${derived.length} handlers without a { group }: they consume in ${derived.map((group) => `'${group}'`).join(', ')}, ` +
            'in the order Nest registered them (modules, controllers, methods). Give each a { group } of its own, so that reordering them never swaps their groups.',
        );
      }
    }
    for (const warning of warnings) this.logger.warn(warning);
    return planned;
  }

  private check(pattern: string, handlers: MessageHandler[]): void {
    if (this.objectPatterns.has(pattern)) {
      throw new BrokerError(
        'INVALID_SUBSCRIPTION',
        `pattern ${pattern}: DuctapeBrokerServer takes 'brokerTag:topicTag' string patterns only (an object pattern names no topic)`,
      );
    }
    if (handlers.some((handler) => !handler.isEventHandler)) {
      throw new BrokerError(
        'INVALID_SUBSCRIPTION',
        `@MessagePattern('${pattern}'): DuctapeBrokerServer does not serve request/response. A broker delivers at least once and has no reply channel, ` +
          `so a caller could wait forever or get two answers. Use @EventPattern('${pattern}') and publish a reply event; ` +
          `in an app with other transports, bind this handler to its own (@MessagePattern(pattern, Transport.TCP)).`,
      );
    }
  }

  private request({ pattern, handler, group }: PlannedHandler): SubscribeRequest {
    const extras = (handler.extras ?? {}) as DuctapeEventPatternExtras;
    return {
      env: this.options.env ?? this.broker.env,
      event: pattern,
      product_tag: this.options.product ?? this.broker.product,
      input: {
        callback: (message: unknown, ctx: BrokerContext) => this.invoke(handler, message, new DuctapeBrokerContext([ctx])),
        group,
        concurrency: extras.concurrency ?? this.options.concurrency,
        retry: extras.retry ?? this.options.retry,
      },
    };
  }

  private async subscribe(pattern: string, request: SubscribeRequest): Promise<Subscription> {
    try {
      return await this.broker.subscribe(request);
    } catch (error) {
      if (!(error instanceof BrokerError)) throw error;
      throw new BrokerError(error.code, `@EventPattern('${pattern}'): ${error.message}`, { cause: error, problems: [...error.problems] });
    }
  }

  /**
   * Runs the handler Nest registered (guards, interceptors, pipes and filters included) and
   * settles when its promise or Observable does (an Observable that completes without a value
   * too). Nest's own handleEvent neither waits for an Observable nor reports its error, so it is
   * not used: the ack depends on both.
   */
  private invoke(handler: MessageHandler, data: unknown, context: DuctapeBrokerContext): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = async (): Promise<void> => {
        try {
          await observableResult(await handler(data, context));
          forgetCaptured(context);
          resolve();
        } catch (error) {
          reject(settledError(error, context));
        } finally {
          this.onProcessingEndHook?.(this.transportId!, context);
        }
      };
      try {
        // The hook (an instrumentation's) runs `done`; its own return value is not waited for.
        this.onProcessingStartHook(this.transportId!, context, done);
      } catch (error) {
        reject(settledError(error, context));
      }
    });
  }
}

function closedError(what: string): BrokerError {
  return new BrokerError('INVALID_REQUEST', `DuctapeBrokerServer: ${what}; a closed server does not start again (make a new one), and nothing consumes through it`);
}
