import type { RetryPolicy } from './broker-options.interface';

export interface PublishInput<T> {
  message: T;
  headers?: Record<string, string>;
  /** Ordering key: messages with one key keep their order where the broker offers it. */
  key?: string;
  correlationId?: string;
  /** Default: a fresh UUID. Give one to make retries of a publish recognisable downstream. */
  messageId?: string;
  /** Deliver no sooner than this many milliseconds from now. */
  delayMs?: number;
}

export interface PublishRequest<T = unknown> {
  env: string;
  /** `brokerTag:topicTag` */
  event: string;
  product_tag: string;
  input: PublishInput<T>;
}

export interface PublishResult {
  messageId: string;
}

/** What a handler gets besides the message. */
export interface BrokerContext {
  messageId: string;
  event: string;
  env: string;
  product: string;
  /** 1 on the first delivery, n on the n-th. */
  attempt: number;
  headers: Record<string, string>;
  correlationId?: string;
  key?: string;
  publishedAt: Date;
  /** The broker client's own message object. */
  raw: unknown;
}

export type BrokerMessageHandler<T = unknown> = (message: T, ctx: BrokerContext) => unknown;

export interface SubscribeInput<T> {
  callback: BrokerMessageHandler<T>;
  /** When given, must equal the topic part of `event`. */
  topicTag?: string;
  /** Consumer group: subscriptions of one group share the messages, groups each get all of them. Default: the service name. */
  group?: string;
  /** Messages handled at once by this subscription (default 1). */
  concurrency?: number;
  retry?: RetryPolicy;
  /** Consume the dead letters of `group` on this topic instead of its messages. */
  deadLetter?: boolean;
}

export interface SubscribeRequest<T = unknown> {
  env: string;
  event: string;
  product_tag: string;
  input: SubscribeInput<T>;
}

export interface ReprocessDeadLettersRequest {
  env: string;
  event: string;
  product_tag: string;
  /** Default: the service name, the default group of `subscribe`. */
  group?: string;
  /** At most this many (default: all there are). */
  limit?: number;
}

/** One broker env this process uses, as a health check reports it; never a credential. */
export interface BrokerHealth {
  /** The broker tag. */
  broker: string;
  /** The env slug. */
  env: string;
  /** The broker type of that env (`rabbitmq`, `kafka`, ...). */
  type: string;
  up: boolean;
  /** Why it is down. */
  reason?: string;
}

export interface Subscription {
  readonly event: string;
  readonly env: string;
  readonly group: string;
  /** Stops intake, waits for in-flight handlers (up to shutdownTimeoutMs), then detaches. */
  unsubscribe(): Promise<void>;
}

export interface OnBrokerEventOptions {
  env?: string;
  product?: string;
  /** Default: `<service>.<ClassName>.<methodName>`. */
  group?: string;
  concurrency?: number;
  retry?: RetryPolicy;
  deadLetter?: boolean;
}
