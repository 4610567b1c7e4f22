import type { ConfirmChannel, Message, Options } from 'amqplib';
import type { AmqpConnectionManager } from 'amqp-connection-manager';
import type { AdapterLogger } from '../broker-adapter';
import { ManagedChannel } from './rabbitmq-channels';
import { CE_HEADER_PREFIX } from './rabbitmq-headers';

const ID_HEADER = `${CE_HEADER_PREFIX}id`;

/** How often waiting publishes are checked against their deadline. */
const DEADLINE_SWEEP_MS = 100;
/** Publishes written per turn of the event loop when a backlog is flushed. */
const FLUSH_BATCH = 500;

/** The channel closed after the message was written and before its confirm: the broker may or may not have it. */
export class ChannelLostError extends Error {
  /** The error the broker closed the channel with, when it did (not when the connection dropped). */
  readonly brokerError?: Error;

  constructor(brokerError?: Error) {
    super(`the channel closed before the broker confirmed the message${brokerError ? `: ${brokerError.message}` : ''}`);
    this.name = 'ChannelLostError';
    this.brokerError = brokerError;
  }
}

/** The broker returned the message: no queue is bound where it was sent. */
export class UnroutableError extends Error {
  constructor(target: string, reply: string) {
    super(`the message could not be routed: ${target} has no queue to take it (${reply})`);
    this.name = 'UnroutableError';
  }
}

export interface Pending {
  readonly exchange: string;
  readonly routingKey: string;
  readonly content: Buffer;
  readonly options: Options.Publish;
  readonly deadline: number;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
  returned?: string;
  /** Its promise has resolved or rejected. */
  settled: boolean;
  /** Written on a channel, and that channel has not answered for it yet (confirm, nack or close). */
  written: boolean;
}

/**
 * The written publishes, oldest first, in an array. A finished one's slot is cleared once every
 * older one has finished too (confirms come in order, so almost always at once).
 *
 * Not a Map: with a Map here, each young-generation collection promoted about twice as much
 * (2 MB instead of 1 at 2,000 msg/s, measured with --trace-gc), and full collections, which set
 * the latency p99, came about twice as often. The likely cause: a Map that many entries pass
 * through keeps replacing its hash table, and a replaced table, once promoted, still points at its
 * entries and at the table after it until the next full collection.
 */
export class WrittenPublishes {
  private slots: (Pending | undefined)[] = [];
  private head = 0;
  size = 0;

  add(pending: Pending): void {
    pending.written = true;
    this.slots.push(pending);
    this.size++;
  }

  /** Answered for (confirm, nack, closed channel) or never sent: its slot is cleared once every older one's is. */
  remove(pending: Pending): void {
    if (!pending.written) return;
    pending.written = false;
    this.size--;
    // The newest one (the usual confirm at low rates, or a write that threw): its slot goes at once.
    if (this.slots[this.slots.length - 1] === pending) this.slots.pop();
    while (this.head < this.slots.length && !this.slots[this.head]?.written) this.slots[this.head++] = undefined;
    if (this.head === this.slots.length) {
      this.slots.length = 0;
      this.head = 0;
    } else if (this.slots.length > 2 * this.size + 1024) {
      // Mostly finished slots: behind the head, or behind one old publish still waiting for its
      // confirm. Kept at most about twice what is in flight (amortised: each rebuild halves it).
      const rest = this.slots.filter((slot) => slot?.written);
      // Emptied before it is dropped, so it pins nothing if it was promoted.
      this.slots.length = 0;
      this.slots = rest;
      this.head = 0;
    }
  }

  *[Symbol.iterator](): IterableIterator<Pending> {
    for (let i = this.head; i < this.slots.length; i++) {
      const pending = this.slots[i];
      if (pending?.written) yield pending;
    }
  }
}

/**
 * Every publish of one adapter goes through one confirm channel, pipelined: a publish is written
 * at once and resolves when its own confirm arrives, so many are in flight together.
 *
 * Publishes made while there is no channel (disconnected, or the broker closed it) wait for the
 * next one, up to their deadline. A publish written on a channel that then closed rejects with
 * ChannelLostError, for the adapter to send it again (a duplicate at worst, never a loss). A
 * returned message (mandatory, unroutable) rejects with UnroutableError even though the broker
 * also confirms it.
 */
export class RabbitMqPublisher {
  private readonly managed: ManagedChannel<ConfirmChannel>;
  /** Written, awaiting their confirm. */
  private readonly inFlight = new WrittenPublishes();
  /** Waiting for a channel, or for the channel to drain. */
  private waiting: Pending[] = [];
  private writable = true;
  private flushing = false;
  private sweepTimer?: NodeJS.Timeout;
  private closed = false;
  private readonly closeErrors = new WeakMap<ConfirmChannel, Error>();

  constructor(
    manager: AmqpConnectionManager,
    private readonly publishTimeoutMs: number,
    logger: AdapterLogger,
    onChannelError: (error: Error & { code?: number }) => void,
  ) {
    this.managed = new ManagedChannel<ConfirmChannel>(
      manager,
      {
        role: 'publisher',
        confirm: true,
        setup: (channel) => {
          channel.on('return', this.onReturn);
          // Emitted before the channel closes and fails its unconfirmed messages.
          channel.on('error', (error: Error) => this.closeErrors.set(channel, error));
          channel.on('drain', () => {
            this.writable = true;
            this.flush();
          });
          this.writable = true;
          // Written after this resolves: the channel is only `managed.channel` once set up.
          setImmediate(() => this.flush());
          return Promise.resolve();
        },
        onError: onChannelError,
      },
      logger,
    );
  }

  /**
   * Resolves once the broker confirmed the message; rejects if it was nacked, returned (only a
   * `mandatory` one can be), lost with its channel, or `deadline` passed.
   */
  publish(exchange: string, routingKey: string, content: Buffer, options: Options.Publish, deadline: number): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the RabbitMQ adapter is closed'));
    return new Promise((resolve, reject) => {
      const pending: Pending = { exchange, routingKey, content, options, deadline, resolve, reject, settled: false, written: false };
      if (this.waiting.length === 0 && this.writable && this.managed.channel) this.write(this.managed.channel, pending);
      else this.waiting.push(pending);
      this.sweepTimer ??= setInterval(this.sweep, DEADLINE_SWEEP_MS);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const error = new Error('the RabbitMQ adapter closed before the broker confirmed the message');
    for (const pending of [...this.waiting, ...this.inFlight]) this.settle(pending, error);
    this.waiting = [];
    await this.managed.close();
  }

  private write(channel: ConfirmChannel, pending: Pending): void {
    this.inFlight.add(pending);
    try {
      this.writable = publishOn(channel, pending, (error: unknown) => {
        this.inFlight.remove(pending);
        if (error) this.settle(pending, isNack(error) ? new Error(`the broker refused the message (nack) on ${target(pending)}`) : new ChannelLostError(this.closeErrors.get(channel)));
        else if (pending.returned !== undefined) this.settle(pending, new UnroutableError(target(pending), pending.returned));
        else this.settle(pending);
      });
    } catch (error) {
      this.inFlight.remove(pending);
      if (isClosing(error)) {
        // Nothing was sent: it waits for the next channel.
        this.waiting.unshift(pending);
        this.writable = false;
        return;
      }
      // amqplib could not encode this message (a header table over 64 KiB, say): only it fails.
      this.settle(pending, new Error(`amqplib could not send the message to ${target(pending)}: ${(error as Error).message}`));
    }
  }

  /** Writes waiting publishes while the channel takes them, a batch per turn of the event loop. */
  private flush(): void {
    if (this.flushing) return;
    this.flushing = true;
    setImmediate(() => {
      this.flushing = false;
      let budget = FLUSH_BATCH;
      while (this.waiting.length > 0 && budget-- > 0) {
        const channel = this.managed.channel;
        if (!channel || !this.writable) return;
        const pending = this.waiting.shift() as Pending;
        if (!pending.settled) this.write(channel, pending);
      }
      if (this.waiting.length > 0) this.flush();
    });
  }

  /**
   * RabbitMQ sends a mandatory message's basic.return before its basic.ack, and returns in publish
   * order: the returned message is one in flight, not yet returned, sent to the same exchange and
   * routing key with the same message id (its `message-id` property, or its `cloudEvents:id` header
   * when the id is too long for the property). Bodies cannot tell publishes apart: two publishes of
   * one message are the same bytes. Two in flight can share an id too (a retry re-sent, a message
   * published twice with the caller's id): then every one of them counts as returned, so each is
   * sent again or fails, a duplicate at worst, and the unroutable one is never taken for confirmed.
   */
  private readonly onReturn = (message: Message): void => {
    const { exchange, routingKey } = message.fields;
    const reply = message.fields as { replyCode?: number; replyText?: string };
    // The reply code and text of a basic.return, which amqplib's types leave out.
    const returned = `${reply.replyCode ?? '?'} ${reply.replyText ?? 'returned'}`;
    const id = idOf(message.properties);
    for (const candidate of this.inFlight) {
      if (candidate.returned === undefined && candidate.exchange === exchange && candidate.routingKey === routingKey && idOf(candidate.options) === id) {
        candidate.returned = returned;
      }
    }
  };

  /** Fails publishes whose deadline passed, written or not. */
  private readonly sweep = (): void => {
    const now = Date.now();
    const expired = (pending: Pending) => !pending.settled && pending.deadline <= now;
    for (const pending of this.waiting) if (expired(pending)) this.settle(pending, this.timeoutError(pending));
    for (const pending of this.inFlight) if (expired(pending)) this.settle(pending, this.timeoutError(pending));
    this.waiting = this.waiting.filter((pending) => !pending.settled);
    if (this.waiting.length === 0 && this.inFlight.size === 0) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  };

  private settle(pending: Pending, error?: Error): void {
    if (pending.settled) return;
    pending.settled = true;
    if (error) pending.reject(error);
    else pending.resolve();
  }

  private timeoutError(pending: Pending): Error {
    const where = pending.written ? 'no confirm from RabbitMQ' : 'no connection to RabbitMQ to send it';
    return new Error(`${where} within ${this.publishTimeoutMs} ms (publishTimeoutMs), for ${target(pending)}; the broker may be unreachable`);
  }
}

/** What amqplib's ConfirmChannel.publish does once it has built its arguments (lib/channel_model.js of amqplib 2.3). */
interface ConfirmChannelSteps {
  sendMessage(fields: PublishMethodFields, properties: Options.Publish, content: Buffer): boolean;
  pushConfirmCallback(callback: (error: unknown) => void): void;
}

/** The basic.publish method's fields, as amqplib's encoder reads them. */
interface PublishMethodFields {
  exchange: string;
  routingKey: string;
  mandatory: boolean;
  immediate: false;
  ticket: undefined;
}

/**
 * ConfirmChannel.publish without its argument copy (Args.publish), which wraps the header table in
 * `Object.create(options.headers)`: each message's table becomes a prototype, and is encoded
 * through that chain. That cost about 5 µs of CPU per message with the five cloudEvents: headers
 * (13.5 against 8.5 µs per encoded message), and it showed in throughput: ours / raw amqplib
 * sending the same message 0.84-0.85 with it, 0.90-0.94 without (2026-12-04, 9 rounds of 4000,
 * twice). publishOptions already gives what the copy would (deliveryMode, no CC or BCC options):
 * the frames are the same (tested on the server). An amqplib without these steps gets the public method.
 */
export function publishOn(channel: ConfirmChannel, pending: Pending, confirmed: (error: unknown) => void): boolean {
  const steps = channel as unknown as Partial<ConfirmChannelSteps>;
  if (typeof steps.sendMessage !== 'function' || typeof steps.pushConfirmCallback !== 'function') {
    return channel.publish(pending.exchange, pending.routingKey, pending.content, pending.options, confirmed);
  }
  const fields: PublishMethodFields = {
    exchange: pending.exchange,
    routingKey: pending.routingKey,
    mandatory: pending.options.mandatory === true,
    immediate: false,
    ticket: undefined,
  };
  const written = steps.sendMessage.call(channel, fields, pending.options, pending.content);
  steps.pushConfirmCallback.call(channel, confirmed);
  return written;
}

/** The message id a publish or a returned message carries; undefined matches only another without one. */
function idOf(properties: { messageId?: unknown; headers?: Record<string, unknown> }): unknown {
  if (properties.messageId !== undefined && properties.messageId !== '') return properties.messageId;
  const header = properties.headers?.[ID_HEADER];
  return Buffer.isBuffer(header) ? header.toString('utf8') : header;
}

function target(pending: Pending): string {
  return pending.exchange === '' ? `queue '${pending.routingKey}'` : `exchange '${pending.exchange}'`;
}

/** amqplib's IllegalOperationError: the channel or its connection is closing or closed. */
function isClosing(error: unknown): boolean {
  return error instanceof Error && error.name === 'IllegalOperationError';
}

function isNack(error: unknown): boolean {
  return error instanceof Error && error.message === 'message nacked';
}
