import { waitAtMost } from '../../support/with-timeout';
import type { Message, Producer } from 'kafkajs';

export interface BatchingOptions {
  /** -1: every in-sync replica acknowledged; 1: the leader did. */
  acks: -1 | 1;
  /** How long the first message of a batch waits for others. */
  lingerMs: number;
  maxBatchMessages: number;
  maxBatchBytes: number;
  /** How long a publish waits for the broker's answer before it fails (the record may still be sent later). */
  publishTimeoutMs: number;
  /**
   * Produce requests of this producer in flight at once (1 for an idempotent producer: kafkajs
   * gives a failed request's sequence numbers back, and a request sent beside it would take them).
   */
  maxInFlight: number;
}

interface Pending {
  topic: string;
  message: Message;
  bytes: number;
  /** When its publish fails if the broker has not answered. */
  deadline: number;
  settled: boolean;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * Batches concurrent publishes into few produce requests: the first message of a batch waits up
 * to `lingerMs` for others, and a batch goes at once when it reaches its size cap. Each caller
 * still gets its own result: when a batch fails, its messages are sent again one by one, so one
 * bad message (too large for the broker, say) fails alone.
 *
 * Every publish fails after `publishTimeoutMs` without an answer (a broker outage: kafkajs retries
 * on its own for long). One timer serves all of them: it fires at the oldest publish's deadline,
 * fails those past theirs, and is set again for the next. A publish that failed so may still reach
 * the broker later (kafkajs is still sending its batch): delivery is at least once.
 */
export class BatchingProducer {
  private pending: Pending[] = [];
  private pendingBytes = 0;
  private timer?: NodeJS.Timeout;
  private readonly inFlight = new Set<Promise<void>>();
  /** The batches sent and not answered yet, oldest first. */
  private readonly sentBatches = new Set<Pending[]>();
  private deadlineTimer?: NodeJS.Timeout;
  private timerDue = 0;
  private closed = false;

  constructor(
    private readonly producer: Producer,
    private readonly options: BatchingOptions,
  ) {}

  /** `deadline`: when the publish fails without an answer (default: `publishTimeoutMs` from now). */
  send(topic: string, message: Message, deadline?: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new Error('the Kafka adapter is closed'));
      const bytes = size(message);
      const now = Date.now();
      deadline ??= now + this.options.publishTimeoutMs;
      this.pending.push({ topic, message, bytes, deadline, settled: false, resolve, reject });
      if (this.deadlineTimer === undefined || deadline < this.timerDue) this.armDeadline(deadline, now);
      this.pendingBytes += bytes;
      if (this.pending.length >= this.options.maxBatchMessages || this.pendingBytes >= this.options.maxBatchBytes) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.options.lingerMs);
    });
  }

  /**
   * Sends what is waiting, waits at most `ms` for the answers, then fails every publish still
   * unanswered; never waits longer than `ms`.
   */
  async close(ms: number): Promise<void> {
    this.flush();
    this.closed = true;
    await waitAtMost(Promise.allSettled([...this.inFlight]), ms);
    const error = new Error('the Kafka adapter closed before the broker acknowledged the message; it may still have reached the broker');
    for (const batch of this.sentBatches) for (const pending of batch) settle(pending, error);
    this.sentBatches.clear();
    clearTimeout(this.deadlineTimer);
    this.deadlineTimer = undefined;
  }

  /** Fails the publishes past their deadline, and sets the timer for the next one's. */
  private readonly expire = (): void => {
    this.deadlineTimer = undefined;
    const now = Date.now();
    let next = Infinity;
    const error = () =>
      new Error(`the Kafka broker did not acknowledge the message within ${this.options.publishTimeoutMs} ms (publishTimeoutMs); it may be unreachable, and the message may still reach it later`);
    for (const batch of [...this.sentBatches, this.pending]) {
      for (const pending of batch) {
        if (pending.settled) continue;
        if (pending.deadline <= now) settle(pending, error());
        else next = Math.min(next, pending.deadline);
      }
    }
    if (next !== Infinity) this.armDeadline(next, now);
  };

  private armDeadline(due: number, now: number): void {
    clearTimeout(this.deadlineTimer);
    this.timerDue = due;
    this.deadlineTimer = setTimeout(this.expire, Math.max(0, due - now));
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    // At the in-flight cap, what waits goes when a request is answered (and grows meanwhile).
    if (this.pending.length === 0 || this.inFlight.size >= this.options.maxInFlight) return;
    const batch = this.takeBatch();
    this.sentBatches.add(batch);
    const sending = this.sendBatch(batch).finally(() => {
      this.inFlight.delete(sending);
      this.sentBatches.delete(batch);
      if (this.pending.length > 0) this.flush();
      else if (this.sentBatches.size === 0) {
        // Nothing waits for an answer: no timer left behind.
        clearTimeout(this.deadlineTimer);
        this.deadlineTimer = undefined;
      }
    });
    this.inFlight.add(sending);
  }

  /** The oldest waiting publishes, within the batch caps (more wait while a request is in flight). */
  private takeBatch(): Pending[] {
    let count = 0;
    let bytes = 0;
    while (count < this.pending.length && count < this.options.maxBatchMessages && (count === 0 || bytes + this.pending[count].bytes <= this.options.maxBatchBytes)) {
      bytes += this.pending[count].bytes;
      count++;
    }
    const batch = count === this.pending.length ? this.pending : this.pending.slice(0, count);
    this.pending = count === this.pending.length ? [] : this.pending.slice(count);
    this.pendingBytes -= bytes;
    return batch;
  }

  private async sendBatch(batch: Pending[]): Promise<void> {
    const byTopic = new Map<string, Message[]>();
    for (const { topic, message, settled } of batch) {
      // A publish that already failed (past its deadline while it waited) is not sent after all.
      if (settled) continue;
      const messages = byTopic.get(topic);
      if (messages) messages.push(message);
      else byTopic.set(topic, [message]);
    }
    if (byTopic.size === 0) return;
    try {
      await this.producer.sendBatch({ acks: this.options.acks, topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })) });
      for (const pending of batch) settle(pending);
    } catch (error) {
      if (batch.length === 1) return settle(batch[0], error);
      // One by one and in order, so messages of one key keep their order. Those whose publish
      // already failed (past its deadline, or the adapter closed) are not sent again.
      for (const pending of batch) {
        if (pending.settled) continue;
        await this.producer.send({ topic: pending.topic, messages: [pending.message], acks: this.options.acks }).then(
          () => settle(pending),
          (failure: unknown) => settle(pending, failure),
        );
      }
    }
  }
}

function settle(pending: Pending, error?: unknown): void {
  if (pending.settled) return;
  pending.settled = true;
  if (error === undefined) pending.resolve();
  else pending.reject(error);
}

/** A record's bytes, for the batch cap. Every record has half a dozen headers: counted without an array per record. */
function size(message: Message): number {
  let bytes = length(message.value) + length(message.key);
  const headers = message.headers;
  for (const name in headers) {
    const value = headers[name];
    bytes += name.length;
    if (Array.isArray(value)) for (const item of value) bytes += length(item);
    else bytes += length(value);
  }
  return bytes;
}

function length(value: Buffer | string | null | undefined): number {
  return value == null ? 0 : typeof value === 'string' ? Buffer.byteLength(value) : value.length;
}
