import type { TopicConfig } from '../interfaces/broker-options.interface';

/**
 * The one interface every broker adapter implements.
 *
 * Adapters move bytes. Everything that makes delivery reliable and uniform (the envelope, JSON,
 * attempts, backoff, when to dead-letter, acking only after the handler, draining on shutdown)
 * lives in lib/delivery and is written once. An adapter provides a few primitives on physical
 * topics and per-group queues, and describes what its broker guarantees in `capabilities`.
 */
export interface BrokerAdapter {
  readonly capabilities: AdapterCapabilities;

  /** Opens connections. Rejects with a message that names the endpoint but never a credential. */
  connect(): Promise<void>;

  /**
   * Resolves once the broker has accepted the message for every subscription group of the topic.
   * Rejects with a BrokerError INVALID_MESSAGE, before sending anything, for a message this broker
   * cannot carry (too large, a delay beyond its limit).
   */
  publish(topic: AdapterTopic, message: OutboundMessage): Promise<void>;

  /** Puts a message in the queue of one group only, honouring `delayMs` (retries, reprocessed dead letters). */
  sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void>;

  /** Keeps a message among the dead letters of one group, with its transport headers. */
  sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void>;

  /**
   * Visits, oldest first, at most `limit` of the dead letters the group had when the call started,
   * and removes each only after `visit` resolved for it. Stops at the first rejection of `visit`.
   * Resolves with the number removed.
   */
  drainDeadLetters(
    topic: AdapterTopic,
    group: string,
    limit: number,
    visit: (record: InboundMessage) => Promise<void>,
  ): Promise<number>;

  /**
   * Starts delivering the group's messages (or its dead letters) to `listener`, at most
   * `concurrency` unacked at once. Creates what the group needs on the broker (queue, consumer
   * group) before it resolves, so nothing published after it is missed.
   */
  consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer>;

  /** Closes connections. Deliveries not acked by now go back to the broker. */
  close(): Promise<void>;
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
}

/** A topic as an adapter sees it. */
export interface AdapterTopic {
  /** Physical name, unique per product and environment by default (`<product>.<env>.<tag>`). */
  readonly name: string;
  readonly tag: string;
  /** The topic's configuration, for adapter-specific options (queue URLs, FIFO, fan-out mode). */
  readonly config?: TopicConfig;
}

export interface OutboundMessage {
  /** The encoded envelope: UTF-8 JSON. */
  readonly body: string | Buffer;
  readonly messageId: string;
  readonly key?: string;
  readonly correlationId?: string;
  /** Deliver no sooner than this. */
  readonly delayMs?: number;
  /** Transport headers; adapters carry them natively where the broker has headers. */
  readonly headers: Readonly<Record<string, string>>;
}

/** A message as read back from the broker. */
export interface InboundMessage {
  readonly body: string | Buffer;
  /** Transport headers. */
  readonly headers: Readonly<Record<string, string>>;
  /** The client library's own message object. */
  readonly raw: unknown;
}

export interface InboundDelivery extends InboundMessage {
  /** Delivery count when the broker tracks it itself; otherwise the envelope's attempt is used. */
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
   * re-sends the message to the group (`sendToGroup`) and acks this delivery.
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
}

export interface AdapterLogger {
  log(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}
