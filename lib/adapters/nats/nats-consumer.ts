import type { Consumer, ConsumerMessages, JetStreamClient, JsMsg } from 'nats';
import { describeError } from '../../errors';
import { sleep } from '../../support/sleep';
import { waitAtMost } from '../../support/with-timeout';
import type { AdapterConsumer, AdapterLogger } from '../broker-adapter';
import { apiCode, NATS_API_CODES } from './nats-topology';

/** A pull waits this long for messages before it is renewed (and a stop ends it sooner). */
const FETCH_EXPIRES_MS = 5000;
/** After a failed pull (server away, consumer gone), the next comes after this, doubling up to the max. */
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;
/** The same pull failure is logged at most this often. */
const FAILURE_LOG_INTERVAL_MS = 30_000;
/** How long close() waits for the pull loop to end. */
const LOOP_END_WAIT_MS = 2000;

/** How the handler of one message settles it; each is a no-op once the message is settled or the consumer closed. */
export interface Settle {
  ack(): void;
  /** Back to the server, delivered again after `delayMs` (at once without it). */
  nak(delayMs?: number): void;
  /** False once settled or closed. */
  readonly open: boolean;
}

export interface PullerOptions {
  /** Stream and durable consumer names, for the pull and for logs. */
  stream: string;
  consumer: string;
  concurrency: number;
  /** The consumer's ack wait: a message in hand tells the server it is still working at a third of it. */
  ackWaitMs: number;
  /** Makes the durable consumer (again, when the server lost it). */
  ensure(): Promise<void>;
  handle(msg: JsMsg, settle: Settle): Promise<void>;
}

interface InHand {
  msg: JsMsg;
  settled: boolean;
  /** When it was handed over, or last said to be in progress. */
  since: number;
}

/**
 * Pulls a durable consumer's messages, at most `concurrency` in hand at once: each pull asks for
 * as many as there are free slots, so nothing waits unseen in a buffer while its ack wait runs.
 * A message in hand is kept alive on the server (`working`) until settled. A message not settled
 * by close() is given back (`nak`), for another member of the group.
 */
export class NatsPuller implements AdapterConsumer {
  private readonly inHand = new Set<InHand>();
  private stopped = false;
  private closed = false;
  private loop?: Promise<void>;
  /** Pulls open now. */
  private readonly batches = new Set<ConsumerMessages>();
  /** Messages asked for by the open pulls and not yet received. */
  private requested = 0;
  /** A failure's pause is under way: no new pull until it ends. */
  private failing = false;
  /** Acks waiting for this turn's end (see queueAck). */
  private acks: JsMsg[] = [];
  private heartbeat?: NodeJS.Timeout;
  private pause = RETRY_MIN_MS;
  private consumer?: Consumer;
  private wake?: () => void;
  private lastFailureLog = new Map<string, number>();

  constructor(
    private readonly js: () => JetStreamClient,
    private readonly options: PullerOptions,
    private readonly logger: AdapterLogger,
  ) {}

  async start(): Promise<void> {
    await this.options.ensure();
    this.consumer = await this.js().consumers.get(this.options.stream, this.options.consumer);
    this.loop = this.run();
  }

  stop(): Promise<void> {
    this.stopped = true;
    for (const batch of this.batches) batch.stop();
    this.wake?.();
    return Promise.resolve();
  }

  async close(): Promise<void> {
    await this.stop();
    if (this.loop) await waitAtMost(this.loop, LOOP_END_WAIT_MS).catch(() => false);
    this.sendAcks();
    this.closed = true;
    // Not finished: back to the server now, rather than after the ack wait.
    if (this.heartbeat) clearInterval(this.heartbeat);
    for (const entry of this.inHand) {
      if (!entry.settled) {
        entry.settled = true;
        safely(() => entry.msg.nak());
      }
    }
    this.inHand.clear();
  }

  /**
   * Keeps pulls open for the free slots: a new pull is asked as soon as a quarter of the slots (at least
   * one) are neither in hand nor already asked for, without waiting for earlier pulls to end, so
   * the server always has work to send while handlers run (one pull at a time ran at 0.44 of the
   * raw client's consume()). What is asked for never exceeds the free slots.
   */
  private async run(): Promise<void> {
    const refillAt = Math.max(1, Math.floor(this.options.concurrency / 4));
    while (!this.stopped) {
      const want = this.options.concurrency - this.inHand.size - this.requested;
      if (want < refillAt || this.failing) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      this.requested += want;
      let batch: ConsumerMessages;
      try {
        this.consumer ??= await this.js().consumers.get(this.options.stream, this.options.consumer);
        batch = await this.consumer.fetch({ max_messages: want, expires: FETCH_EXPIRES_MS });
      } catch (error) {
        this.requested -= want;
        await this.failed(error);
        continue;
      }
      if (this.stopped) batch.stop();
      this.batches.add(batch);
      void this.read(batch, want);
    }
    // Stopped: the pulls still open end now (what they bring is given back at once).
    for (const batch of this.batches) batch.stop();
  }

  /** Hands over what one pull brings; when it ends, its unanswered part is free to ask again. */
  private async read(batch: ConsumerMessages, asked: number): Promise<void> {
    let received = 0;
    try {
      for await (const msg of batch) {
        if (received < asked) {
          received++;
          this.requested--;
        }
        // Pulled as the consumer stopped: back at once, for another member.
        if (this.stopped) safely(() => msg.nak());
        else this.dispatch(msg);
      }
      this.pause = RETRY_MIN_MS;
    } catch (error) {
      if (!this.stopped) await this.failed(error);
    } finally {
      this.requested -= asked - received;
      this.batches.delete(batch);
      this.wake?.();
    }
  }

  /** A pull failed (server away, consumer gone): logged, the consumer made again if it is gone, and a pause before the next. */
  private async failed(error: unknown): Promise<void> {
    if (this.stopped) return;
    this.failing = true;
    try {
      this.logFailure(error);
      if (apiCode(error) === NATS_API_CODES.CONSUMER_NOT_FOUND || /consumer (not found|deleted)/i.test(describeError(error))) {
        this.consumer = undefined;
        await this.options.ensure().catch(() => undefined);
      }
      await sleep(this.pause);
      this.pause = Math.min(RETRY_MAX_MS, this.pause * 2);
    } finally {
      this.failing = false;
      this.wake?.();
    }
  }

  private dispatch(msg: JsMsg): void {
    const entry: InHand = { msg, settled: false, since: Date.now() };
    this.inHand.add(entry);
    this.startHeartbeat();
    const finish = (): void => {
      entry.settled = true;
    };
    const settle: Settle = {
      ack: () => {
        if (entry.settled || this.closed) return;
        finish();
        this.queueAck(msg);
      },
      nak: (delayMs?: number) => {
        if (entry.settled || this.closed) return;
        finish();
        safely(() => msg.nak(delayMs === undefined ? undefined : Math.max(1, Math.ceil(delayMs))));
      },
      get open() {
        return !entry.settled;
      },
    };
    void this.options
      .handle(msg, settle)
      .catch((error: unknown) => {
        this.logger.error(`NATS consumer ${this.options.consumer}: a delivery failed unexpectedly (${describeError(error)}); it goes back to the server`);
        settle.nak();
      })
      .finally(() => {
        // A message its handler left unsettled stays in hand (kept alive) until settled or closed.
        if (entry.settled) this.inHand.delete(entry);
        else void this.whenSettled(entry);
        this.wake?.();
      });
  }

  /** Frees the slot of a message settled after its handler returned (an ack from a later drain). */
  private async whenSettled(entry: InHand): Promise<void> {
    while (!entry.settled && !this.closed) await sleep(50);
    this.inHand.delete(entry);
    this.wake?.();
  }

  /**
   * One timer per consumer (not one per message: that cost a timer's making and clearing on every
   * delivery) tells the server, for each message in hand for a third of the ack wait, that its
   * handler is still at work (`working`), so a long handler keeps its message.
   */
  private startHeartbeat(): void {
    if (this.heartbeat) return;
    const every = Math.max(100, Math.floor(this.options.ackWaitMs / 3));
    this.heartbeat = setInterval(() => {
      const now = Date.now();
      for (const entry of this.inHand) {
        if (entry.settled || now - entry.since < every / 2) continue;
        entry.since = now;
        safely(() => entry.msg.working());
      }
    }, every);
    this.heartbeat.unref();
  }

  /**
   * Sends the acks of one turn of the event loop together. The client writes to its socket on the
   * microtask after a command; acks made one by one, each at the end of its handler's promise
   * chain, were one socket write each (a third of the CPU of a consume, at 0.44 of the raw
   * client's rate); sent in one loop they are one write.
   */
  private queueAck(msg: JsMsg): void {
    this.acks.push(msg);
    if (this.acks.length === 1) setImmediate(this.sendAcks);
  }

  private readonly sendAcks = (): void => {
    const acks = this.acks;
    this.acks = [];
    for (const msg of acks) safely(() => msg.ack());
  };

  private logFailure(error: unknown): void {
    const text = describeError(error);
    const now = Date.now();
    const last = this.lastFailureLog.get(text);
    if (last !== undefined && now - last < FAILURE_LOG_INTERVAL_MS) return;
    if (this.lastFailureLog.size > 20) this.lastFailureLog = new Map();
    this.lastFailureLog.set(text, now);
    this.logger.warn(`NATS consumer ${this.options.consumer} on stream ${this.options.stream}: pull failed (${text}); retrying`);
  }
}

function safely(action: () => void): void {
  try {
    action();
  } catch {
    // The connection is closed or draining: the server redelivers after the ack wait.
  }
}
