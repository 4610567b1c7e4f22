import { createInbox, type JsMsg, type Msg, type NatsConnection, type Subscription } from 'nats';
import { describeError } from '../../errors';
import type { AdapterConsumer, AdapterLogger } from '../broker-adapter';

// The client makes a JsMsg (ack, nak, working, info) from a pulled message here; not re-exported by its entry point.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { toJsMsg } = require('nats/lib/jetstream/jsmsg') as { toJsMsg: (this: void, msg: Msg, ackTimeout?: number) => JsMsg };

/** A pull request waits this long for messages before the server ends it (and a new one is sent). */
const PULL_EXPIRES_MS = 5000;
/** While a pull request is open the server sends a heartbeat this often when it has nothing else to send. */
const PULL_HEARTBEAT_MS = 1000;
/** Pull requests thought lost (no message or heartbeat for this long: a reconnect, a server restart) are asked again. */
const PULL_SILENCE_MS = 3 * PULL_HEARTBEAT_MS;
/** After a refused pull (consumer gone, server away), the next comes after this, doubling up to the max. */
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;
/** The same pull failure is logged at most this often. */
const FAILURE_LOG_INTERVAL_MS = 30_000;
/** Status headers of a pull's replies (Nats-Pending-Messages: what the ended request had left). */
const PENDING_MESSAGES_HEADER = 'Nats-Pending-Messages';

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
 * Pulls a durable consumer's messages, at most `concurrency` in hand at once. Pull requests go
 * out on one inbox of its own as slots free up (a quarter of them, at least one), each for no more
 * than the slots neither in hand nor already asked for: nothing waits unseen in a buffer while its
 * ack wait runs, and the server always has work to send while handlers run. (The client's own
 * fetch() made one inbox per pull and ran at 0.44 of its consume(), whose buffer has no bound
 * when handlers are slow.) A message in hand is kept alive on the server (`working`) until
 * settled; one not settled by close() is given back (`nak`), for another member of the group.
 */
export class NatsPuller implements AdapterConsumer {
  private readonly inHand = new Set<InHand>();
  private stopped = false;
  private closed = false;
  private inbox?: Subscription;
  /** Messages asked for by open pull requests and not yet received. */
  private requested = 0;
  /** When the inbox last heard from the server (a message, a heartbeat, a status). */
  private lastHeard = 0;
  private watchdog?: NodeJS.Timeout;
  /** A refused pull's pause is under way: no new pull until it ends. */
  private pausedUntil = 0;
  private pause = RETRY_MIN_MS;
  /** Acks waiting for this turn's end (see queueAck). */
  private acks: JsMsg[] = [];
  private heartbeat?: NodeJS.Timeout;
  private lastFailureLog = new Map<string, number>();
  private readonly refillAt: number;

  constructor(
    private readonly nc: () => NatsConnection,
    private readonly options: PullerOptions,
    private readonly logger: AdapterLogger,
  ) {
    this.refillAt = Math.max(1, Math.floor(options.concurrency / 4));
  }

  async start(): Promise<void> {
    await this.options.ensure();
    const nc = this.nc();
    this.inbox = nc.subscribe(createInbox(), { callback: (_error, msg) => this.onReply(msg) });
    this.lastHeard = Date.now();
    this.watchdog = setInterval(() => this.checkSilence(), PULL_HEARTBEAT_MS);
    this.watchdog.unref();
    this.pull();
  }

  stop(): Promise<void> {
    this.stopped = true;
    if (this.watchdog) clearInterval(this.watchdog);
    // No new pulls; what the open ones still bring is given back at once (onReply).
    return Promise.resolve();
  }

  /**
   * Detaches. A pull request still open on the server (at most PULL_EXPIRES_MS) may yet send a
   * message to the closed inbox: the server gives it to another member after the ack wait.
   */
  async close(): Promise<void> {
    await this.stop();
    if (this.inbox && !this.inbox.isClosed()) this.inbox.unsubscribe();
    this.sendAcks();
    this.closed = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    // Not finished: back to the server now, rather than after the ack wait.
    for (const entry of this.inHand) {
      if (!entry.settled) {
        entry.settled = true;
        safely(() => entry.msg.nak());
      }
    }
    this.inHand.clear();
  }

  /** Asks for the free slots not yet asked for, once they are worth a request. */
  private pull(): void {
    if (this.stopped || !this.inbox) return;
    const want = this.options.concurrency - this.inHand.size - this.requested;
    if (want < this.refillAt || Date.now() < this.pausedUntil) return;
    let nc: NatsConnection;
    try {
      nc = this.nc();
    } catch {
      // The adapter is closing: it closes this consumer next.
      return;
    }
    if (nc.isClosed()) return;
    this.requested += want;
    const request = JSON.stringify({ batch: want, expires: PULL_EXPIRES_MS * 1_000_000, idle_heartbeat: PULL_HEARTBEAT_MS * 1_000_000 });
    try {
      nc.publish(`$JS.API.CONSUMER.MSG.NEXT.${this.options.stream}.${this.options.consumer}`, request, { reply: this.inbox.getSubject() });
    } catch (error) {
      this.requested -= want;
      this.refused(describeError(error), false);
    }
  }

  /** A reply on the inbox: a message, or a status of the pull requests (heartbeat, expiry, refusal). */
  private onReply(msg: Msg): void {
    this.lastHeard = Date.now();
    const status = msg.headers?.code ?? 0;
    if (msg.data.length === 0 && status >= 100) return this.onStatus(msg, status);
    if (this.requested > 0) this.requested--;
    const jsMsg = toJsMsg(msg);
    // Pulled as the consumer stopped: back at once, for another member.
    if (this.stopped) return safely(() => jsMsg.nak());
    this.pause = RETRY_MIN_MS;
    this.dispatch(jsMsg);
  }

  private onStatus(msg: Msg, status: number): void {
    // 100: an idle heartbeat (or flow control): the requests are alive.
    if (status === 100) return;
    const description = msg.headers?.description ?? '';
    const pending = Number(msg.headers?.get(PENDING_MESSAGES_HEADER));
    // 404 no messages, 408 request expired, 409 some limit reached: that request is over, its unanswered part free again.
    if (Number.isFinite(pending) && msg.headers?.get(PENDING_MESSAGES_HEADER) !== '') this.requested = Math.max(0, this.requested - pending);
    else this.requested = 0;
    if (status === 404 || status === 408) return this.pull();
    if (status === 409 && /exceeded|leadership change|batch completed/i.test(description)) return this.pull();
    // A refusal: the consumer is gone (deleted), or the server cannot serve it now.
    this.refused(`${status} ${description}`, /consumer (is )?deleted|not found/i.test(description) || status === 503);
  }

  /** No word from the server for a while with requests open: they went with the connection; asked again. */
  private checkSilence(): void {
    if (this.stopped) return;
    if (this.requested > 0 && Date.now() - this.lastHeard > PULL_SILENCE_MS) {
      this.requested = 0;
      this.lastHeard = Date.now();
    }
    this.pull();
  }

  /** A pull the server refused: logged, the consumer made again when it is gone, and a pause before the next. */
  private refused(reason: string, remake: boolean): void {
    this.logFailure(reason);
    this.pausedUntil = Date.now() + this.pause;
    const wait = this.pause;
    this.pause = Math.min(RETRY_MAX_MS, this.pause * 2);
    const next = (): void => {
      this.pausedUntil = 0;
      this.pull();
    };
    if (!remake) {
      setTimeout(next, wait).unref();
      return;
    }
    void this.options
      .ensure()
      .catch((error: unknown) => this.logFailure(describeError(error)))
      .finally(() => setTimeout(next, wait).unref());
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
        this.pull();
      });
  }

  /** Frees the slot of a message settled after its handler returned (an ack from a later drain). */
  private async whenSettled(entry: InHand): Promise<void> {
    while (!entry.settled && !this.closed) await new Promise((resolve) => setTimeout(resolve, 50));
    this.inHand.delete(entry);
    this.pull();
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

  private logFailure(text: string): void {
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
