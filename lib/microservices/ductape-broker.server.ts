import { Logger } from '@nestjs/common';
import { Server, type CustomTransportStrategy, type MessageHandler } from '@nestjs/microservices';
import { isObservable, lastValueFrom } from 'rxjs';
import { BrokerError } from '../errors';
import type { RetryPolicy } from '../interfaces/broker-options.interface';
import type { BrokerContext, SubscribeRequest, Subscription } from '../interfaces/message-broker.interface';
import type { MessageBrokerService } from '../message-broker.service';
import type { DuctapeBrokerPort } from './broker-port';
import { DUCTAPE_BROKER_TRANSPORT } from './constants';
import { DuctapeBrokerContext } from './ductape-broker.context';

export interface DuctapeBrokerServerOptions {
  /** Env slug the handlers consume in (default: the module's `env`). */
  env?: string;
  /** Product tag of the events (default: the module's `product`). */
  product?: string;
  /** Base of the default group names (default: the module's `service`, else its `product`). */
  service?: string;
  /**
   * One consumer group for every pattern of this server (groups are per topic, so one name serves
   * all). Default: `<service>.event-pattern.<brokerTag>.<topicTag>` for each pattern.
   */
  group?: string;
  /** Messages handled at once per pattern (default: the module's default, 1). */
  concurrency?: number;
  /** Retry policy of every pattern (default: the topic's, else the module's). */
  retry?: RetryPolicy;
}

/**
 * Per-pattern settings, given as the extras of the decorator:
 * `@EventPattern('orders:new-orders', { group: 'billing', concurrency: 4 })`. They win over the server's.
 */
export interface DuctapeEventPatternExtras {
  group?: string;
  concurrency?: number;
  retry?: RetryPolicy;
}

/** The status values DuctapeBrokerServer reports through `status`. */
export type DuctapeBrokerServerStatus = 'listening' | 'closed';

/**
 * A `@nestjs/microservices` transport over this module: every `@EventPattern('brokerTag:topicTag')`
 * handler of the app's controllers consumes that event through `MessageBrokerService.subscribe`,
 * with the module's delivery semantics. A message is acked once the handler's promise or Observable
 * completes; a handler that throws (or whose Observable errors, or a guard that refuses) gets it
 * again after the retry delay, then it goes to the dead letters of its topic and group.
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
 * All handlers of one pattern (Nest chains them) share one subscription: each delivery runs them
 * all, and when one fails the delivery is retried for all of them.
 */
export class DuctapeBrokerServer extends Server<Record<string, never>, DuctapeBrokerServerStatus> implements CustomTransportStrategy {
  protected override readonly logger = new Logger('DuctapeBrokerServer');
  private readonly objectPatterns = new Set<string>();
  private subscriptions: Subscription[] = [];
  private closing: Promise<void> | undefined;

  constructor(
    private readonly broker: DuctapeBrokerPort,
    private readonly options: DuctapeBrokerServerOptions = {},
  ) {
    super();
    // Handlers bound to another transport (`@EventPattern(p, Transport.TCP)`) are then not registered here.
    this.transportId = DUCTAPE_BROKER_TRANSPORT;
  }

  /** Records which patterns were objects: Nest turns them into JSON strings before they reach the map. */
  override addHandler(pattern: unknown, callback: MessageHandler, isEventHandler = false, extras: Record<string, unknown> = {}): void {
    if (typeof pattern !== 'string') this.objectPatterns.add(this.normalizePattern(pattern as string));
    super.addHandler(pattern, callback, isEventHandler, extras);
  }

  /** Subscribes every handler; calls back with the first error (nothing stays subscribed then). */
  async listen(callback: (error?: unknown) => void): Promise<void> {
    try {
      await this.start();
    } catch (error) {
      callback(error);
      return;
    }
    this._status$.next('listening');
    callback();
  }

  /** Stops intake on every pattern and waits for in-flight handlers (up to the module's shutdownTimeoutMs). */
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
    // Every pattern is checked before any consumer starts, so a refused one leaves nothing running.
    const requests = [...this.messageHandlers].map(([pattern, handler]) => this.request(pattern, handler));
    const results = await Promise.allSettled(requests.map(({ pattern, request }) => this.subscribe(pattern, request)));
    const started = results.filter((result) => result.status === 'fulfilled').map((result) => result.value);
    const failure = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    if (failure || this.closing) {
      await Promise.allSettled(started.map((subscription) => subscription.unsubscribe()));
      if (failure) throw failure.reason;
      return;
    }
    this.subscriptions = started;
  }

  private async stop(): Promise<void> {
    const subscriptions = this.subscriptions;
    this.subscriptions = [];
    await Promise.all(subscriptions.map((subscription) => subscription.unsubscribe()));
    this._status$.next('closed');
  }

  private request(pattern: string, handler: MessageHandler): { pattern: string; request: SubscribeRequest } {
    if (this.objectPatterns.has(pattern)) {
      throw new BrokerError(
        'INVALID_SUBSCRIPTION',
        `pattern ${pattern}: DuctapeBrokerServer takes 'brokerTag:topicTag' string patterns only (an object pattern names no topic)`,
      );
    }
    if (!handler.isEventHandler) {
      throw new BrokerError(
        'INVALID_SUBSCRIPTION',
        `@MessagePattern('${pattern}'): DuctapeBrokerServer does not serve request/response. A broker delivers at least once and has no reply channel, ` +
          `so a caller could wait forever or get two answers. Use @EventPattern('${pattern}') and publish a reply event; ` +
          `in an app with other transports, bind this handler to its own (@MessagePattern(pattern, Transport.TCP)).`,
      );
    }
    const extras = (handler.extras ?? {}) as DuctapeEventPatternExtras;
    const service = this.options.service ?? this.broker.service;
    return {
      pattern,
      request: {
        env: this.options.env ?? this.broker.env,
        event: pattern,
        product_tag: this.options.product ?? this.broker.product,
        input: {
          callback: (message: unknown, ctx: BrokerContext) => this.invoke(handler, message, new DuctapeBrokerContext([ctx])),
          // ':' is not allowed in a group name; a hyphen never appears in a class name, so this never
          // meets the `<service>.<ClassName>.<method>` default of @OnBrokerEvent.
          group: extras.group ?? this.options.group ?? `${service}.event-pattern.${pattern.replace(':', '.')}`,
          concurrency: extras.concurrency ?? this.options.concurrency,
          retry: extras.retry ?? this.options.retry,
        },
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
   * Runs the handler chain Nest registered for the pattern (guards, interceptors, pipes and filters
   * included) and settles when its promise or Observable does. Nest's own handleEvent neither waits
   * for an Observable nor reports its error, so it is not used: the ack depends on both.
   */
  private invoke(handler: MessageHandler, data: unknown, context: DuctapeBrokerContext): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = async (): Promise<void> => {
        try {
          await settle(await handler(data, context));
          resolve();
        } catch (error) {
          reject(handlerError(error));
        } finally {
          this.onProcessingEndHook?.(this.transportId!, context);
        }
      };
      try {
        // The hook (an instrumentation's) runs `done`; its own return value is not waited for.
        this.onProcessingStartHook(this.transportId!, context, done);
      } catch (error) {
        reject(handlerError(error));
      }
    });
  }
}

async function settle(result: unknown): Promise<void> {
  if (isObservable(result)) await lastValueFrom(result, { defaultValue: undefined });
}

/**
 * Nest's RPC exception filters turn a failure into a plain object (`{ status: 'error', message }`;
 * 'Internal server error' for anything but an RpcException). The delivery layer records an Error's
 * message in the dead letter, so the object becomes one.
 */
function handlerError(error: unknown): Error {
  if (error instanceof Error) return error;
  const message = typeof error === 'object' && error !== null && 'message' in error ? (error).message : error;
  let text: string;
  try {
    text = typeof message === 'string' ? message : (JSON.stringify(message) ?? String(message));
  } catch {
    text = String(message);
  }
  return new Error(text, { cause: error });
}

