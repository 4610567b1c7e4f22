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
  heartbeat: NodeJS.Timeout;
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
  private batch?: ConsumerMessages;
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
    this.batch?.stop();
    this.wake?.();
    return Promise.resolve();
  }

  async close(): Promise<void> {
    await this.stop();
    if (this.loop) await waitAtMost(this.loop, LOOP_END_WAIT_MS).catch(() => false);
    this.closed = true;
    // Not finished: back to the server now, rather than after the ack wait.
    for (const entry of this.inHand) {
      clearInterval(entry.heartbeat);
      if (!entry.settled) {
        entry.settled = true;
        safely(() => entry.msg.nak());
      }
    }
    this.inHand.clear();
  }

  private async run(): Promise<void> {
    let pause = RETRY_MIN_MS;
    while (!this.stopped) {
      const free = this.options.concurrency - this.inHand.size;
      if (free <= 0) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      try {
        this.consumer ??= await this.js().consumers.get(this.options.stream, this.options.consumer);
        const batch = await this.consumer.fetch({ max_messages: free, expires: FETCH_EXPIRES_MS });
        this.batch = batch;
        if (this.stopped) batch.stop();
        for await (const msg of batch) {
          // Pulled as the consumer stopped: back at once, for another member.
          if (this.stopped) safely(() => msg.nak());
          else this.dispatch(msg);
        }
        pause = RETRY_MIN_MS;
      } catch (error) {
        if (this.stopped) break;
        this.logFailure(error);
        if (apiCode(error) === NATS_API_CODES.CONSUMER_NOT_FOUND || /consumer (not found|deleted)/i.test(describeError(error))) {
          this.consumer = undefined;
          await this.options.ensure().catch(() => undefined);
        }
        await sleep(pause);
        pause = Math.min(RETRY_MAX_MS, pause * 2);
      } finally {
        this.batch = undefined;
      }
    }
  }

  private dispatch(msg: JsMsg): void {
    const every = Math.max(100, Math.floor(this.options.ackWaitMs / 3));
    const entry: InHand = { msg, settled: false, heartbeat: setInterval(() => safely(() => msg.working()), every) };
    entry.heartbeat.unref();
    this.inHand.add(entry);
    const finish = (): void => {
      clearInterval(entry.heartbeat);
      entry.settled = true;
    };
    const settle: Settle = {
      ack: () => {
        if (entry.settled || this.closed) return;
        finish();
        safely(() => msg.ack());
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
