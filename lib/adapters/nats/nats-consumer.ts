import { createInbox, type JsMsg, type Msg, type NatsConnection, type Subscription } from 'nats';
import { describeError } from '../../errors';
import type { AdapterConsumer, AdapterLogger } from '../broker-adapter';

/** Where the client makes a JsMsg (ack, nak, working, info) from a pulled message; not re-exported by its entry point. */
const JSMSG_MODULE = 'nats/lib/jetstream/jsmsg';
const toJsMsg = loadToJsMsg();

/**
 * The client's internal toJsMsg, found at JSMSG_MODULE in nats 2.29 (reachable while the package
 * has no exports map). Another version that moved or hid it fails the adapter's load with an
 * error that says so, not with a bare MODULE_NOT_FOUND.
 */
function loadToJsMsg(): (this: void, msg: Msg, ackTimeout?: number) => JsMsg {
  let reason: string;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const loaded = require(JSMSG_MODULE) as { toJsMsg?: unknown };
    if (typeof loaded.toJsMsg === 'function') return loaded.toJsMsg as (this: void, msg: Msg, ackTimeout?: number) => JsMsg;
    reason = 'it has no toJsMsg';
  } catch (error) {
    reason = describeError(error);
  }
  let version = 'the installed version';
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    version = `nats ${(require('nats/package.json') as { version: string }).version}`;
  } catch {
    // An exports map hides package.json too.
  }
  throw new Error(`the NATS adapter needs the nats client's internal module '${JSMSG_MODULE}' (toJsMsg), as in nats 2.29; ${version} does not provide it (${reason}): install nats@^2.29`);
}

/** A pull request waits this long for messages before the server ends it (and a new one is sent). */
const PULL_EXPIRES_MS = 5000;
/** While a pull request is open the server sends a heartbeat this often when it has nothing else to send. */
const PULL_HEARTBEAT_MS = 1000;
/** Pull requests thought lost (no message or heartbeat for this long: a reconnect, a server restart) are asked again. */
const PULL_SILENCE_MS = 3 * PULL_HEARTBEAT_MS;
/** After a refused pull (consumer gone, server away), the next comes after this, doubling up to the max. */
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;
/** A delivery whose handler failed unexpectedly comes back after this, doubling up to the max while failures go on. */
const FAILED_DELIVERY_MIN_MS = 1000;
const FAILED_DELIVERY_MAX_MS = 30_000;
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
  /**
   * Makes the durable consumer. With `lost`, after a refused pull said it (or its stream) may be
   * gone: what was cached is looked up again, and made when missing.
   */
  ensure(lost?: boolean): Promise<void>;
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
  /**
   * Messages that came with every slot taken (a pull request thought over was not: see onStatus),
   * waiting for a slot in arrival order, kept alive like those in hand. Not given back with a nak,
   * which would count a delivery that never reached a handler as an attempt.
   */
  private waiting: InHand[] = [];
  private failedPause = FAILED_DELIVERY_MIN_MS;
  private lookingUp = false;

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

  /**
   * No new pulls, and the inbox is unsubscribed: the server drops a pull request whose reply
   * subject lost its interest before it hands it a message, so what arrives after this goes to
   * another member (or waits for the next one) as it was. Only a message already on its way when
   * the unsubscribe reached the server is lost to this inbox: the server gives it again after the
   * ack wait. (Giving such messages back with a plain nak sent them straight back down the same open
   * requests, once per slot: 40 deliveries of one message to a stopped member of concurrency 40.)
   * Messages in hand are still acked: acks go to each message's own reply subject.
   */
  stop(): Promise<void> {
    this.stopped = true;
    if (this.watchdog) clearInterval(this.watchdog);
    if (this.inbox && !this.inbox.isClosed()) safely(() => this.inbox?.unsubscribe());
    return Promise.resolve();
  }

  /** Detaches (after stop()): what is in hand and unsettled goes back to the server at once. */
  async close(): Promise<void> {
    await this.stop();
    this.sendAcks();
    for (const entry of this.waiting.splice(0)) this.inHand.add(entry);
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
    // Pulled as the consumer stopped (on its way before the unsubscribe): left to the ack wait.
    // A nak would send it straight back down the same open requests.
    if (this.stopped) return;
    const jsMsg = toJsMsg(msg);
    this.pause = RETRY_MIN_MS;
    if (this.inHand.size >= this.options.concurrency) {
      this.waiting.push({ msg: jsMsg, settled: false, since: Date.now() });
      this.startHeartbeat();
      return;
    }
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
    if (status === 409 && /leadership change|batch completed/i.test(description)) return this.pull();
    // A limit of the consumer (409 Exceeded MaxWaiting, MaxRequestBatch, ...): asked again after a
    // pause, not at once (the same request would be refused again, in a loop).
    if (status === 409 && /exceeded/i.test(description)) return this.refused(`${status} ${description}`, false);
    // A refusal: the consumer is gone (deleted; 503 no responders: nothing serves its pulls), or the server cannot serve it now.
    this.refused(`${status} ${description}`, /consumer (is )?deleted|not found/i.test(description) || status === 503);
  }

  /** No word from the server for a while with requests open: they went with the connection; asked again. */
  private checkSilence(): void {
    if (this.stopped) return;
    if (this.requested > 0 && Date.now() - this.lastHeard > PULL_SILENCE_MS) {
      this.requested = 0;
      this.lastHeard = Date.now();
      // A pull for a consumer that is gone gets no answer at all (the JetStream API takes the
      // subject, so no 503 either): the consumer is looked up, and made again if missing.
      this.lookUp();
    }
    this.pull();
  }

  /** Looks the consumer up (and makes it when missing), one lookup at a time; then pulls. */
  private lookUp(then: () => void = () => this.pull()): void {
    if (this.lookingUp) {
      then();
      return;
    }
    this.lookingUp = true;
    void this.options
      .ensure(true)
      .catch((error: unknown) => this.logFailure(describeError(error)))
      .finally(() => {
        this.lookingUp = false;
        then();
      });
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
    // Looked up after the pause, not at once: '409 Consumer Deleted' comes while the server may
    // still be deleting the stream, and a stream or consumer made then did not last.
    setTimeout(() => this.lookUp(next), wait).unref();
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
      .then(
        () => {
          this.failedPause = FAILED_DELIVERY_MIN_MS;
        },
        (error: unknown) => {
          // Back after a pause growing while failures go on: a failure that is not the message's
          // (a stream the mover cannot publish to) is not a loop of redeliveries and log lines.
          const delay = this.failedPause;
          this.failedPause = Math.min(FAILED_DELIVERY_MAX_MS, this.failedPause * 2);
          this.logThrottled('error', `a delivery failed unexpectedly (${describeError(error)}); it goes back to the server, delivered again after a pause`);
          settle.nak(delay);
        },
      )
      .finally(() => {
        // A message its handler left unsettled stays in hand (kept alive) until settled or closed.
        if (entry.settled) this.inHand.delete(entry);
        else void this.whenSettled(entry);
        this.next();
      });
  }

  /** A slot freed: the next waiting message, else a pull. */
  private next(): void {
    const waiting = this.stopped ? undefined : this.waiting.shift();
    if (waiting) this.dispatch(waiting.msg);
    else this.pull();
  }

  /** Frees the slot of a message settled after its handler returned (an ack from a later drain). */
  private async whenSettled(entry: InHand): Promise<void> {
    while (!entry.settled && !this.closed) await new Promise((resolve) => setTimeout(resolve, 50));
    this.inHand.delete(entry);
    this.next();
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
      for (const entry of [...this.inHand, ...this.waiting]) {
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
    this.logThrottled('warn', `pull failed (${text}); retrying`);
  }

  /** Logs a text at most once per FAILURE_LOG_INTERVAL_MS. */
  private logThrottled(level: 'warn' | 'error', text: string): void {
    const now = Date.now();
    const last = this.lastFailureLog.get(text);
    if (last !== undefined && now - last < FAILURE_LOG_INTERVAL_MS) return;
    if (this.lastFailureLog.size > 20) this.lastFailureLog = new Map();
    this.lastFailureLog.set(text, now);
    this.logger[level](`NATS consumer ${this.options.consumer} on stream ${this.options.stream}: ${text}`);
  }
}

function safely(action: () => void): void {
  try {
    action();
  } catch {
    // The connection is closed or draining: the server redelivers after the ack wait.
  }
}
