import type { TopicConfig, WhenNoGroup } from '../interfaces/broker-options.interface';

/**
 * The transport every broker adapter gives: connect, publish, consume, close, and what its broker
 * guarantees (`capabilities`). That is all a new adapter must implement.
 *
 * Adapters move bytes and map metadata to their broker's native fields. Everything that makes
 * delivery reliable and uniform (reading any producer's message, JSON, attempts, backoff, when to
 * dead-letter, acking only after the handler, draining on shutdown) lives in lib/delivery and is
 * written once.
 *
 * A broker that does more natively says so by implementing the optional parts below: a
 * GroupSender (a copy for one group only, for retries and reprocessed dead letters) and a
 * DeadLetterStore (where dead letters are kept, read and drained). Where an adapter lacks one,
 * the delivery layer builds it from the core (see lib/delivery/adapter-parts.ts): per-group topics
 * `<topic>.<group>.retry` and `<topic>.<group>.dead-letters`, published and consumed through this
 * interface. Use `hasGroupSender` and `hasDeadLetterStore` to tell.
 */
export interface BrokerAdapter extends Partial<GroupSender>, Partial<DeadLetterStore> {
  readonly capabilities: AdapterCapabilities;

  /** Opens connections. Rejects with a message that names the endpoint but never a credential. */
  connect(): Promise<void>;

  /**
   * Resolves once the broker has accepted the message for every subscription group of the topic,
   * and, when the topic has no group, once the broker accepted it (none created later receives it;
   * see AdapterTopic.whenNoGroup). Honours `delayMs`. Rejects with a BrokerError INVALID_MESSAGE,
   * before sending anything, for a message this broker cannot carry (too large, a delay beyond its limit).
   */
  publish(topic: AdapterTopic, message: OutboundMessage): Promise<void>;

  /**
   * Starts delivering the group's messages to `listener`, at most `concurrency` unacked at once.
   * Creates what the group needs on the broker (queue, consumer group) before it resolves, so
   * nothing published after it is missed, and the group stays on the broker after the consumer
   * closes. `source: 'dead-letters'` (the group's dead letters) is asked only of an adapter that
   * is a DeadLetterStore.
   */
  consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer>;

  /** Closes connections. Deliveries not acked by now go back to the broker. */
  close(): Promise<void>;

  /**
   * Optional: whether the broker can be reached now (its connections are open), with why not.
   * Cheap and synchronous: no request to the broker. Without it, a connected adapter counts as up.
   * The reason never holds a credential.
   */
  health?(): AdapterHealth;
}

/** An adapter's own view of its connections. */
export interface AdapterHealth {
  up: boolean;
  /** Why it is down (or degraded), for people; never a credential. */
  reason?: string;
}

/** Optional: the broker can put a message in the queue of one group only. */
export interface GroupSender {
  /** Puts a message in the queue of one group only, honouring `delayMs` (retries, reprocessed dead letters). */
  sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void>;
}

/** Optional: the broker keeps each group's dead letters itself (and `consume` reads them with `source: 'dead-letters'`). */
export interface DeadLetterStore {
  /** Keeps a message among the dead letters of one group, with its transport headers. */
  sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void>;

  /**
   * Visits, oldest first, at most `limit` of the dead letters the group had when the call started,
   * and removes each only after `visit` resolved for it. Stops at the first rejection of `visit`.
   * Resolves with the number removed.
   */
  drainDeadLetters(topic: AdapterTopic, group: string, limit: number, visit: (record: InboundMessage) => Promise<void>): Promise<number>;
}

/** An adapter with every optional part: what the adapters in this package are. */
export type CompleteBrokerAdapter = BrokerAdapter & GroupSender & DeadLetterStore;

export function hasGroupSender(adapter: BrokerAdapter): adapter is BrokerAdapter & GroupSender {
  return typeof adapter.sendToGroup === 'function';
}

export function hasDeadLetterStore(adapter: BrokerAdapter): adapter is BrokerAdapter & DeadLetterStore {
  return typeof adapter.sendToDeadLetters === 'function' && typeof adapter.drainDeadLetters === 'function';
}

/** What a broker guarantees; the conformance suite tests what is claimed and skips what is not. */
export interface AdapterCapabilities {
  /** Every subscription group of a topic gets every message. */
  fanOut: boolean;
  /** Messages published with one `key` reach a group in publish order (first deliveries; a retried message falls behind). */
  orderingPerKey: boolean;
  /** The broker itself holds a message back for `delayMs` (otherwise the adapter emulates it durably). */
  nativeDelay: boolean;
  /** Dead letters live on the broker (a queue, a topic), not in this process. */
  nativeDeadLetters: boolean;
  /**
   * A publish finds out cheaply that its topic has no group yet (a RabbitMQ return, an SNS topic
   * without subscriptions): it then logs a warning, and `whenNoGroup: 'reject'` fails it.
   */
  detectsNoGroup: boolean;
}

/** A topic as an adapter sees it. */
export interface AdapterTopic {
  /** Physical name, unique per product and environment by default (`<product>.<env>.<tag>`). */
  readonly name: string;
  readonly tag: string;
  /** The topic's configuration, for adapter-specific options (queue URLs, FIFO, fan-out mode). */
  readonly config?: TopicConfig;
  /**
   * A publish (not a retry or a dead letter) while no group has subscribed to the topic: 'accept'
   * resolves, logging a warning where the broker can tell cheaply (at most once per topic per
   * minute, see NoGroupWarnings); 'reject' fails it where the broker can tell. Default 'accept'.
   */
  readonly whenNoGroup?: WhenNoGroup;
}

/**
 * A message to put on the broker. The body is the bytes consumers read: the message's JSON for a
 * publish, and the bytes as they came for a retry or a dead letter (never a wrapper). Everything
 * else is metadata, which each adapter carries in its broker's native fields and headers after the
 * CloudEvents 1.0 binary content mode and that broker's binding (see lib/adapters/cloudevents.ts).
 */
export interface OutboundMessage {
  readonly body: string | Buffer;
  /** CloudEvents `id`; also the broker's own message id field where it has one (AMQP message-id). */
  readonly messageId: string;
  /** CloudEvents `time`, epoch milliseconds. */
  readonly publishedAt: number;
  /** CloudEvents `type`: the event, `brokerTag:topicTag`. */
  readonly type: string;
  /** CloudEvents `source`: `/<product>/<env>/<service>` of the publisher. */
  readonly source: string;
  /** CloudEvents `datacontenttype`: 'application/json' for what this module encoded; undefined when unknown (a poison body kept as it came). */
  readonly contentType?: string;
  /** 1-based delivery attempt this copy is for; carried (as the `ductapeattempt` extension) only above 1. */
  readonly attempt: number;
  /** Ordering key (CloudEvents `partitionkey`; Kafka's record key, SQS FIFO's group id). */
  readonly key?: string;
  /** CloudEvents extension `correlationid`; also the broker's own correlation field where it has one. */
  readonly correlationId?: string;
  /** Deliver no sooner than this. */
  readonly delayMs?: number;
  /** Application headers: the user's, and the delivery layer's `x-ductape-*` ones; plain native headers. */
  readonly headers: Readonly<Record<string, string>>;
  /**
   * On a dead letter: the `deliveryId` of the delivery it was made from, the same on every
   * redelivery of that stored copy. An adapter that can deduplicate (NATS's
   * Nats-Msg-Id) stores the dead letter once even when a crash between storing it and acking the
   * delivery made the delivery layer send it again. Absent where the adapter gave no `deliveryId`.
   */
  readonly fromDelivery?: string;
}

/**
 * What a delivery's native fields say of its message, read back by the adapter after its binding.
 * Any field may be missing: a message from another producer may carry none of them.
 */
export interface InboundMetadata {
  /** CloudEvents `specversion`, when the message was sent as a CloudEvent in binary mode. */
  readonly specversion?: string;
  /** CloudEvents `id`, or the broker's message-id field when that is what carries it (AMQP). */
  readonly id?: string;
  /** CloudEvents `time`, epoch milliseconds. */
  readonly time?: number;
  readonly type?: string;
  readonly source?: string;
  /** The content type (CloudEvents `datacontenttype` in binary mode; `application/cloudevents+json` in structured mode). */
  readonly contentType?: string;
  readonly correlationId?: string;
  readonly key?: string;
  /** The `ductapeattempt` extension: the attempt a retry was sent for. */
  readonly attempt?: number;
  /** The broker's own id of this message, the same on every redelivery (SQS MessageId, Kafka `topic/partition/offset`). */
  readonly brokerMessageId?: string;
  /** The broker's own timestamp of this message, epoch milliseconds. */
  readonly brokerTime?: number;
  /**
   * The broker's id of this stored copy: unique to it (a producer may reuse `brokerMessageId`),
   * the same on every redelivery. Given by an adapter that deduplicates what is sent on from a
   * delivery (NATS: `<stream>/<sequence>`); it comes back as a dead letter's `fromDelivery`.
   */
  readonly deliveryId?: string;
}

/** A message as read back from the broker. */
export interface InboundMessage {
  /** The bytes as they are on the broker. */
  readonly body: string | Buffer;
  /** Application headers, without the CloudEvents attributes and broker fields that `metadata` holds. */
  readonly headers: Readonly<Record<string, string>>;
  readonly metadata: InboundMetadata;
  /** The client library's own message object. */
  readonly raw: unknown;
}

export interface InboundDelivery extends InboundMessage {
  /** Delivery count when the broker tracks it itself; otherwise `metadata.attempt`, else 1. */
  readonly attempt?: number;
  /** Settles the delivery. Must not throw once the consumer is closed (a late ack is a no-op). */
  ack(): Promise<void>;
  /**
   * Gives the delivery back unacked, for the broker to deliver again (a nack with requeue). Used
   * when the delivery layer could not settle a message (its retry could not be sent, say). Must
   * not throw once the consumer is closed.
   */
  release(): Promise<void>;
  /**
   * Where the broker can hold this same delivery back and deliver it again (SQS: its visibility
   * timeout), settles it for a retry in `delayMs`; the broker then counts the attempt itself, so
   * an adapter offers it only on deliveries that carry `attempt`. Without it the delivery layer
   * re-sends the message to the group (`sendToGroup`, or its emulation) and acks this delivery.
   */
  retryLater?(delayMs: number): Promise<void>;
}

export type DeliveryListener = (delivery: InboundDelivery) => Promise<void>;

export interface ConsumeOptions {
  group: string;
  concurrency: number;
  source: 'messages' | 'dead-letters';
}

export interface AdapterConsumer {
  /** Stops taking new deliveries; deliveries already handed over can still be acked. */
  stop(): Promise<void>;
  /** Detaches. Deliveries not acked by now go back to the queue, for another consumer or a later start. */
  close(): Promise<void>;
}

/** What an adapter factory gets besides its own config. */
export interface AdapterContext {
  brokerTag: string;
  envSlug: string;
  logger: AdapterLogger;
  /**
   * The module's shutdownTimeoutMs: `close()` should not take longer (it runs after the handlers'
   * drain, which has its own). Absent where an adapter is made outside a module (tests).
   */
  shutdownTimeoutMs?: number;
}

/**
 * Where an adapter writes its log lines. The module gives each adapter one over Nest's Logger,
 * under a context of its broker type (`DuctapeBroker:RabbitMQ`), every line prefixed with
 * `[brokerTag/env]`, without the credentials of any URL in it. Quiet by default: nothing per message at
 * `log`; docs/logging.md has the table of what goes at which level.
 */
export interface AdapterLogger {
  /** Lifecycle a person wants to see: connected (once), a connection back after a loss. */
  log(message: string): void;
  /** Something failed and the adapter recovers: a connection lost and reconnecting, a publish or receive retried. */
  warn(message: string): void;
  /** Something is lost or will not recover by itself. */
  error(message: string): void;
  /** Routine chatter, off unless Nest's `debug` level is on: topology declared, consumers started and closed. Never per message. */
  debug(message: string): void;
}
