import type { ConfirmChannel, Message, Options } from 'amqplib';
import type { AmqpConnectionManager } from 'amqp-connection-manager';
import type { AdapterLogger } from '../broker-adapter';
import { ManagedChannel } from './rabbitmq-channels';

/**
 * The header earlier versions marked each publish with, to match a returned message to it. It cost
 * about 12 % of publish throughput (a header table on every message), so returns are now matched
 * by their content; the name stays so consumers keep hiding it on messages from those versions.
 */
export const PUBLISH_ID_HEADER = 'x-ductape-publish-id';

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

interface Pending {
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

  /** Resolves once the broker confirmed the message; rejects if it was nacked, returned, lost with its channel, or `deadline` passed. */
  publish(exchange: string, routingKey: string, content: Buffer, options: Options.Publish, deadline: number): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the RabbitMQ adapter is closed'));
    return new Promise((resolve, reject) => {
      const pending: Pending = { exchange, routingKey, content, options: { ...options, mandatory: true }, deadline, resolve, reject, settled: false, written: false };
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
      this.writable = channel.publish(pending.exchange, pending.routingKey, pending.content, pending.options, (error: unknown) => {
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
   * order: the returned message is the oldest one in flight, not yet returned, sent to the same
   * exchange and routing key with the same bytes (each envelope has its own id and time). Two
   * publishes can still carry the same bytes (a retry re-sent twice, a dead letter revived): then
   * every one of them counts as returned, so they are all sent again, a duplicate at worst, and
   * the unroutable one is never taken for confirmed.
   */
  private readonly onReturn = (message: Message): void => {
    const { exchange, routingKey } = message.fields;
    const reply = message.fields as { replyCode?: number; replyText?: string };
    // The reply code and text of a basic.return, which amqplib's types leave out.
    const returned = `${reply.replyCode ?? '?'} ${reply.replyText ?? 'returned'}`;
    for (const candidate of this.inFlight) {
      if (candidate.returned === undefined && candidate.exchange === exchange && candidate.routingKey === routingKey && candidate.content.equals(message.content)) {
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
