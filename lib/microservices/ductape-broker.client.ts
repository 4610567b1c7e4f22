import { Logger, type FactoryProvider, type InjectionToken } from '@nestjs/common';
import { ClientProxy, type ReadPacket, type WritePacket } from '@nestjs/microservices';
import { from, Observable, throwError } from 'rxjs';
import { BrokerError, describeError } from '../errors';
import type { PublishInput, PublishResult } from '../interfaces/message-broker.interface';
import { MessageBrokerService } from '../message-broker.service';
import type { DuctapeBrokerPort } from './broker-port';

export interface DuctapeBrokerClientOptions {
  /** Env slug to publish in (default: the module's `env`). */
  env?: string;
  /** Product tag of the events (default: the module's `product`). */
  product?: string;
}

/** What a publish takes besides the message: headers, ordering key, correlation id, message id, delay. */
export type DuctapeBrokerRecordOptions = Omit<PublishInput<unknown>, 'message'>;

/**
 * A message with publish options, for `client.emit(event, new DuctapeBrokerRecord(order, { key: order.customerId }))`
 * (as Nest's RmqRecord is for its RabbitMQ client).
 */
export class DuctapeBrokerRecord<T = unknown> {
  constructor(
    readonly data: T,
    readonly options: DuctapeBrokerRecordOptions = {},
  ) {}
}

/**
 * A `ClientProxy` that publishes through `MessageBrokerService`: `client.emit('orders:new-orders', order)`
 * publishes at once (whether or not the Observable is subscribed, as Nest's clients do) and the
 * Observable emits `{ messageId }` and completes once the broker accepted the message, or errors
 * with the BrokerError that refused it. A failed emit nobody subscribed to is logged.
 *
 * `send()` (request/response) always errors with INVALID_REQUEST: see DuctapeBrokerServer.
 *
 * Register it with `DuctapeBrokerClient.provider('ORDERS_CLIENT')` and inject it with
 * `@Inject('ORDERS_CLIENT') client: ClientProxy`. The module owns the connections: connect() and
 * close() do nothing, `status` never emits and `on()` throws INVALID_REQUEST (the connections'
 * state is `MessageBrokerService.health()`). Logs under the context 'DuctapeBrokerClient'.
 */
export class DuctapeBrokerClient extends ClientProxy {
  private readonly logger = new Logger('DuctapeBrokerClient');

  constructor(
    private readonly broker: DuctapeBrokerPort,
    private readonly options: DuctapeBrokerClientOptions = {},
  ) {
    super();
  }

  /** A provider of a client under `token`, made from the app's MessageBrokerService. */
  static provider(token: InjectionToken, options: DuctapeBrokerClientOptions = {}): FactoryProvider<DuctapeBrokerClient> {
    return { provide: token, useFactory: (broker: MessageBrokerService) => new DuctapeBrokerClient(broker, options), inject: [MessageBrokerService] };
  }

  connect(): Promise<void> {
    return Promise.resolve();
  }

  close(): void {}

  /** The MessageBrokerService it publishes through. */
  unwrap<T = MessageBrokerService>(): T {
    return this.broker as T;
  }

  override on(event: never): never {
    throw new BrokerError(
      'INVALID_REQUEST',
      `DuctapeBrokerClient.on('${String(event)}'): this client emits no events; read the connections' state from MessageBrokerService.health() (or BrokerHealthIndicator)`,
    );
  }

  /** Publishes now; the Observable gives `{ messageId }` once the broker accepted it. */
  override emit<TResult = PublishResult, TInput = unknown>(pattern: unknown, data: TInput): Observable<TResult> {
    let observed = false;
    const published = this.dispatchEvent<TResult>({ pattern: pattern as string, data });
    // A fire-and-forget emit (nobody subscribed) that fails is not lost silently.
    published.catch((error: unknown) => {
      if (!observed) this.logger.error(`emit '${String(pattern)}' failed and nobody subscribed to its result: ${describeError(error)}`);
    });
    return new Observable<TResult>((subscriber) => {
      observed = true;
      return from(published).subscribe(subscriber);
    });
  }

  /** Request/response is not served over the broker: the Observable errors with INVALID_REQUEST. */
  override send<TResult = never, TInput = unknown>(pattern: unknown, _data?: TInput): Observable<TResult> {
    return throwError(() => requestResponseError(pattern));
  }

  protected publish(packet: ReadPacket, callback: (packet: WritePacket) => void): () => void {
    callback({ err: requestResponseError(packet.pattern), isDisposed: true });
    return () => undefined;
  }

  protected dispatchEvent<T = PublishResult>(packet: ReadPacket): Promise<T> {
    const { pattern, data } = packet as { pattern: unknown; data: unknown };
    if (typeof pattern !== 'string') {
      return Promise.reject(
        new BrokerError('INVALID_EVENT', `DuctapeBrokerClient.emit: the pattern must be a 'brokerTag:topicTag' string (got ${describePattern(pattern)})`),
      );
    }
    const input: PublishInput<unknown> = data instanceof DuctapeBrokerRecord ? { ...data.options, message: data.data as unknown } : { message: data };
    const published = this.broker.publish({
      env: this.options.env ?? this.broker.env,
      event: pattern,
      product_tag: this.options.product ?? this.broker.product,
      input,
    });
    return published as Promise<unknown> as Promise<T>;
  }
}

function requestResponseError(pattern: unknown): BrokerError {
  return new BrokerError(
    'INVALID_REQUEST',
    `DuctapeBrokerClient.send(${describePattern(pattern)}): request/response is not served over the broker (at-least-once delivery, no reply channel). ` +
      'Use emit(), and have the handler publish a reply event.',
  );
}

function describePattern(pattern: unknown): string {
  if (typeof pattern === 'string') return `'${pattern.slice(0, 200)}'`;
  try {
    return (JSON.stringify(pattern) ?? String(pattern)).slice(0, 200);
  } catch {
    return typeof pattern;
  }
}
