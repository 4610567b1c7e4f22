import {
  ChangeMessageVisibilityBatchCommand,
  ChangeMessageVisibilityCommand,
  DeleteMessageBatchCommand,
  DeleteMessageCommand,
  ReceiveMessageCommand,
  type Message,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { describeError } from '../../errors';
import type { AdapterConsumer, AdapterLogger, DeliveryListener, InboundDelivery } from '../broker-adapter';
import { readMessage } from './sqs-attributes';

/** Most messages one receive may ask for (SQS's limit). */
const MAX_RECEIVE = 10;
/** Most receives a subscription keeps open at once, whatever its concurrency. */
const MAX_POLLERS = 10;
/** How long past its long poll a receive may take before it counts as stalled (a dead connection). */
const STALLED_POLL_SLACK_MS = 5000;
/** Longest visibility SQS allows (12 hours). */
const MAX_VISIBILITY_SECONDS = 43_200;
/** Messages whose hand-backs are remembered (the oldest is forgotten beyond it). */
const MAX_HANDED_BACK = 10_000;

export interface SqsConsumerOptions {
  queueUrl: string;
  /** For logs: the queue's name, never a credential. */
  queueName: string;
  concurrency: number;
  waitTimeSeconds: number;
  visibilityTimeoutSeconds: number;
  fifo: boolean;
  /** Offer `retryLater` (retries through the visibility timeout): for a group's messages, not its dead letters. */
  retryThroughVisibility: boolean;
}

/** One received message until it is deleted, released or given a later visibility. */
interface InFlight {
  readonly receiptHandle: string;
  /** When it was received (ms): SQS's 12-hour visibility limit counts from there. */
  readonly receivedAt: number;
  /** When its visibility was last set (ms). */
  visibleSetAt: number;
  settled: boolean;
  /** Settled by a delete (the handler succeeded, or the message went to the dead letters). */
  deleted?: boolean;
  /** A visibility change on its way: the next one waits for it, so they reach SQS in order. */
  changing?: Promise<void>;
  /** Its slot is free again: its handler is done, though its delete may still be on its way. */
  slotFreed?: boolean;
}

/**
 * Reads one queue for one subscription: long polls for up to 10 messages at a time while the
 * subscription has free slots, keeps each message invisible while it waits or its handler runs
 * (extending the visibility timeout), and deletes it only when the delivery layer acks it.
 */
export class SqsConsumer implements AdapterConsumer {
  private readonly inFlight = new Map<string, InFlight>();
  /**
   * Receives of a message that this consumer gave back without handing it over (FIFO: it came
   * behind one of its group whose retry waits), by message id. SQS counts them in
   * ApproximateReceiveCount, the attempt number: real SQS can return several messages of one group
   * in a receive, so every retry of the first would use up an attempt of each one behind it, which
   * then reached the dead letters without a retry of its own. Kept in this process only.
   */
  private readonly handedBack = new Map<string, number>();
  private readonly sleeps = new Set<AbortController>();
  /** Open receives: cut when one outlives its long poll (a stalled connection). */
  private readonly receives = new Set<AbortController>();
  private readonly pollers: Promise<void>[] = [];
  private readonly slotWaiters: (() => void)[] = [];
  private readonly deletes: SqsDeleteBatcher;
  private busy = 0;
  /** Deletes of acked messages on their way (their slots may already be free). */
  private deleting = 0;
  private stopped = false;
  private closed = false;
  private extending = false;
  private extender?: NodeJS.Timeout;

  constructor(
    private readonly client: SQSClient,
    private readonly options: SqsConsumerOptions,
    private readonly listener: DeliveryListener,
    private readonly logger: AdapterLogger,
  ) {
    this.deletes = new SqsDeleteBatcher(client, options.queueUrl);
  }

  start(): void {
    const pollers = Math.min(MAX_POLLERS, Math.ceil(this.options.concurrency / MAX_RECEIVE));
    for (let i = 0; i < pollers; i++) this.pollers.push(this.poll());
    // Extend every message still held a third of the timeout before it would show again.
    const everyMs = (this.options.visibilityTimeoutSeconds * 1000) / 3;
    this.extender = setInterval(() => void this.extendVisibility(everyMs), everyMs);
    this.extender.unref();
  }

  /**
   * Stops receiving; messages already handed over can still be acked, and stay invisible meanwhile.
   * A receive waiting in its long poll is not cut: SQS may already have handed it messages that a
   * cut connection would hide from everyone until their visibility timeout. It ends within
   * waitTimeSeconds, and whatever it brings goes straight back (see close).
   */
  stop(): Promise<void> {
    if (!this.stopped) {
      this.stopped = true;
      for (const abort of this.sleeps) abort.abort();
      this.wakeSlotWaiters();
    }
    return Promise.resolve();
  }

  /** Detaches: every message not settled by now becomes visible again at once, for another consumer. */
  async close(): Promise<void> {
    await this.stop();
    // Receives carry their own deadline (see poll), so this ends within the long poll and its slack.
    await Promise.all(this.pollers);
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.extender);
    const unsettled = [...this.inFlight.values()].filter((entry) => !entry.settled);
    for (const entry of unsettled) entry.settled = true;
    this.inFlight.clear();
    await Promise.all(unsettled.map((entry) => entry.changing ?? Promise.resolve()));
    await this.changeVisibility(unsettled, 0).catch((error: unknown) =>
      this.logger.warn(`SQS queue ${this.options.queueName}: could not make ${unsettled.length} unfinished message(s) visible again (${describeError(error)}); they show again when their visibility timeout ends`),
    );
  }

  private async poll(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      const wanted = await this.reserveSlots();
      if (wanted === 0) break;
      let messages: Message[] = [];
      const abort = new AbortController();
      this.receives.add(abort);
      // A receive that outlives its long poll by this much has a dead connection: cut it and poll again.
      const deadline = setTimeout(() => abort.abort(), this.options.waitTimeSeconds * 1000 + STALLED_POLL_SLACK_MS);
      try {
        const output = await this.client.send(
          new ReceiveMessageCommand({
            QueueUrl: this.options.queueUrl,
            MaxNumberOfMessages: wanted,
            WaitTimeSeconds: this.options.waitTimeSeconds,
            VisibilityTimeout: this.options.visibilityTimeoutSeconds,
            MessageAttributeNames: ['All'],
            MessageSystemAttributeNames: ['ApproximateReceiveCount', 'MessageGroupId', 'SentTimestamp'],
          }),
          // The client's requestTimeout is for short requests; a long poll gets its own.
          { abortSignal: abort.signal, requestTimeout: this.options.waitTimeSeconds * 1000 + STALLED_POLL_SLACK_MS },
        );
        messages = output.Messages ?? [];
        failures = 0;
      } catch (error) {
        this.busy -= wanted;
        if (this.stopped) break;
        failures++;
        if (failures === 1 || failures % 20 === 0) {
          const why = abort.signal.aborted ? `no answer within ${this.options.waitTimeSeconds * 1000 + STALLED_POLL_SLACK_MS} ms` : describeError(error);
          this.logger.warn(`SQS queue ${this.options.queueName}: receiving failed ${failures} time(s) in a row (${why}); trying again`);
        }
        await this.sleep(Math.min(30_000, 250 * 2 ** Math.min(failures, 7)));
        continue;
      } finally {
        clearTimeout(deadline);
        this.receives.delete(abort);
      }
      // Slots asked for but not filled go back; the received ones stay taken until settled.
      this.busy -= wanted - messages.length;
      this.wakeSlotWaiters();
      const now = Date.now();
      // Every received message is held (and extended) from now on, also while it waits its turn.
      const received = messages
        .filter((message) => message.ReceiptHandle)
        .map((message) => {
          const entry: InFlight = { receiptHandle: message.ReceiptHandle!, receivedAt: now, visibleSetAt: now, settled: false };
          this.inFlight.set(entry.receiptHandle, entry);
          return { message, entry };
        });
      this.busy -= messages.length - received.length;
      this.dispatch(received);
    }
  }

  /**
   * Hands messages over; on a FIFO queue, those of one message group one after the other, in order.
   * When one of a group is not deleted (its retry waits, or it was given back), the ones behind it
   * in this batch go back too: handling them now would put them ahead of it.
   */
  private dispatch(received: { message: Message; entry: InFlight }[]): void {
    if (!this.options.fifo) {
      for (const { message, entry } of received) void this.deliver(message, entry);
      return;
    }
    const chains = new Map<string, Promise<void>>();
    const broken = new Set<string>();
    for (const { message, entry } of received) {
      const group = message.Attributes?.MessageGroupId ?? '';
      const next = async () => {
        if (broken.has(group)) return this.giveBack(entry, message.MessageId);
        await this.deliver(message, entry);
        if (!entry.deleted) broken.add(group);
      };
      chains.set(group, (chains.get(group) ?? Promise.resolve()).then(next));
    }
  }

  /** A message not handed over: visible again at once, and its slot freed. */
  private async giveBack(entry: InFlight, messageId: string | undefined): Promise<void> {
    try {
      if (this.settle(entry)) {
        if (messageId !== undefined) {
          const count = this.handedBack.get(messageId) ?? 0;
          this.handedBack.delete(messageId);
          this.handedBack.set(messageId, count + 1);
          if (this.handedBack.size > MAX_HANDED_BACK) this.handedBack.delete(this.handedBack.keys().next().value as string);
        }
        await this.setVisibility(entry, 0).catch(() => undefined);
      }
    } finally {
      this.freeSlot(entry);
    }
  }

  /** Never rejects: every path settles the message or leaves it to close(). */
  private async deliver(message: Message, entry: InFlight): Promise<void> {
    try {
      if (this.stopped) {
        // Intake stopped before its turn (received as it stopped, or waiting behind its group): back it goes.
        if (this.settle(entry)) await this.setVisibility(entry, 0).catch(() => undefined);
        return;
      }
      const receiveCount = Number(message.Attributes?.ApproximateReceiveCount);
      const handedBack = message.MessageId === undefined ? 0 : (this.handedBack.get(message.MessageId) ?? 0);
      const attempt = Number.isInteger(receiveCount) && receiveCount > 0 ? Math.max(1, receiveCount - handedBack) : undefined;
      const { metadata, headers } = readMessage(message);
      const delivery: InboundDelivery = {
        body: message.Body ?? '',
        headers,
        metadata,
        raw: message,
        attempt,
        ack: async () => {
          if (!this.settle(entry)) return;
          if (message.MessageId !== undefined) this.handedBack.delete(message.MessageId);
          // The handler is done: the next receive need not wait for this delete's round trip,
          // unless deletes pile up (a slow endpoint), which then slows intake again.
          if (this.deleting < this.options.concurrency) this.freeSlot(entry);
          this.deleting++;
          try {
            await entry.changing?.catch(() => undefined);
            await this.deletes.delete(entry.receiptHandle);
            entry.deleted = true;
          } finally {
            this.deleting--;
          }
        },
        release: async () => {
          if (this.settle(entry)) await this.setVisibility(entry, 0);
        },
        ...(this.options.retryThroughVisibility && attempt !== undefined
          ? {
              retryLater: async (delayMs: number) => {
                if (!this.settle(entry)) return;
                // Whole seconds, rounded up (never sooner than the backoff), within SQS's 12 hours from receipt.
                const left = MAX_VISIBILITY_SECONDS - Math.ceil((Date.now() - entry.receivedAt) / 1000) - 60;
                try {
                  await this.setVisibility(entry, Math.max(0, Math.min(left, Math.ceil(delayMs / 1000))));
                } catch (error) {
                  // Not settled after all: the delivery layer falls back to release() or sendToGroup.
                  this.unsettle(entry);
                  throw error;
                }
              },
            }
          : {}),
      };
      await this.listener(delivery);
    } catch (error) {
      // warn, not error: nothing is lost, the message shows again (see docs/logging.md).
      this.logger.warn(`SQS queue ${this.options.queueName}: a delivery failed unexpectedly (${describeError(error)}); it goes back to the queue`);
      if (this.settle(entry)) await this.setVisibility(entry, 0).catch(() => undefined);
    } finally {
      this.freeSlot(entry);
    }
  }

  /** Marks a message settled (no more extensions); false when it already was, or the consumer closed. */
  private settle(entry: InFlight): boolean {
    if (this.closed || entry.settled) return false;
    entry.settled = true;
    this.inFlight.delete(entry.receiptHandle);
    return true;
  }

  private unsettle(entry: InFlight): void {
    if (this.closed) return;
    entry.settled = false;
    this.inFlight.set(entry.receiptHandle, entry);
  }

  /** One visibility change of one message, after any still on its way. */
  private setVisibility(entry: InFlight, seconds: number): Promise<void> {
    const previous = entry.changing ?? Promise.resolve();
    const change = previous
      .catch(() => undefined)
      .then(() => this.changeVisibility([entry], seconds));
    entry.changing = change.then(
      () => undefined,
      () => undefined,
    );
    return change;
  }

  private async extendVisibility(olderThanMs: number): Promise<void> {
    if (this.extending || this.closed) return;
    this.extending = true;
    try {
      const now = Date.now();
      const due = [...this.inFlight.values()].filter((entry) => !entry.settled && now - entry.visibleSetAt >= olderThanMs - 50);
      for (let i = 0; i < due.length; i += MAX_RECEIVE) {
        // Settled meanwhile: its own change (delete, release, retry) must not be undone by this one.
        const chunk = due.slice(i, i + MAX_RECEIVE).filter((entry) => !entry.settled);
        if (chunk.length === 0) continue;
        for (const entry of chunk) entry.visibleSetAt = now;
        // Each attempt well inside the margin: one stuck request must not let every held message show again.
        const change = this.changeVisibility(chunk, this.options.visibilityTimeoutSeconds, Math.max(1000, (this.options.visibilityTimeoutSeconds * 1000) / 6));
        const settledAfter = change.then(
          () => undefined,
          () => undefined,
        );
        for (const entry of chunk) entry.changing = settledAfter;
        await change.catch((error: unknown) =>
          this.logger.warn(`SQS queue ${this.options.queueName}: extending the visibility of ${chunk.length} message(s) being handled failed (${describeError(error)})`),
        );
      }
    } finally {
      this.extending = false;
    }
  }

  /** ChangeMessageVisibility, ten at a time; rejects when any of them failed. */
  private async changeVisibility(entries: InFlight[], seconds: number, requestTimeout?: number): Promise<void> {
    const failures: string[] = [];
    const options = requestTimeout === undefined ? undefined : { requestTimeout };
    for (let i = 0; i < entries.length; i += MAX_RECEIVE) {
      const chunk = entries.slice(i, i + MAX_RECEIVE);
      if (chunk.length === 1) {
        await this.client.send(new ChangeMessageVisibilityCommand({ QueueUrl: this.options.queueUrl, ReceiptHandle: chunk[0].receiptHandle, VisibilityTimeout: seconds }), options);
        continue;
      }
      const output = await this.client.send(
        new ChangeMessageVisibilityBatchCommand({
          QueueUrl: this.options.queueUrl,
          Entries: chunk.map((entry, index) => ({ Id: String(index), ReceiptHandle: entry.receiptHandle, VisibilityTimeout: seconds })),
        }),
        options,
      );
      for (const failed of output.Failed ?? []) failures.push(`${failed.Code ?? 'error'}: ${failed.Message ?? ''}`);
    }
    if (failures.length > 0) throw new Error(`${failures.length} visibility change(s) failed: ${failures[0]}`);
  }

  /** Waits for at least one free slot, then takes up to 10 of them for one receive; 0 once stopped. */
  private async reserveSlots(): Promise<number> {
    while (!this.stopped && this.busy >= this.options.concurrency) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    }
    if (this.stopped) return 0;
    const wanted = Math.min(MAX_RECEIVE, this.options.concurrency - this.busy);
    this.busy += wanted;
    return wanted;
  }

  private freeSlot(entry: InFlight): void {
    if (entry.slotFreed) return;
    entry.slotFreed = true;
    this.busy--;
    this.wakeSlotWaiters();
  }

  private wakeSlotWaiters(): void {
    for (const wake of this.slotWaiters.splice(0)) wake();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const abort = new AbortController();
      const timer = setTimeout(() => {
        this.sleeps.delete(abort);
        resolve();
      }, ms);
      abort.signal.addEventListener('abort', () => {
        clearTimeout(timer);
        this.sleeps.delete(abort);
        resolve();
      });
      this.sleeps.add(abort);
    });
  }
}

/**
 * Deletes of one queue, gathered for a moment into DeleteMessageBatch requests of up to 10; each
 * caller still learns whether its own delete succeeded.
 */
class SqsDeleteBatcher {
  private pending: { receiptHandle: string; resolve: () => void; reject: (error: Error) => void }[] = [];
  private scheduled = false;

  constructor(
    private readonly client: SQSClient,
    private readonly queueUrl: string,
  ) {}

  delete(receiptHandle: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ receiptHandle, resolve, reject });
      if (this.pending.length >= MAX_RECEIVE) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    while (this.pending.length > 0) void this.send(this.pending.splice(0, MAX_RECEIVE));
  }

  private async send(batch: SqsDeleteBatcher['pending']): Promise<void> {
    try {
      if (batch.length === 1) {
        await this.client.send(new DeleteMessageCommand({ QueueUrl: this.queueUrl, ReceiptHandle: batch[0].receiptHandle }));
        batch[0].resolve();
        return;
      }
      const output = await this.client.send(
        new DeleteMessageBatchCommand({ QueueUrl: this.queueUrl, Entries: batch.map((entry, index) => ({ Id: String(index), ReceiptHandle: entry.receiptHandle })) }),
      );
      const failed = new Map((output.Failed ?? []).map((entry) => [entry.Id, entry]));
      batch.forEach((entry, index) => {
        const failure = failed.get(String(index));
        if (failure) entry.reject(new Error(`deleting the message failed: ${failure.Code ?? 'error'}: ${failure.Message ?? ''}`));
        else entry.resolve();
      });
    } catch (error) {
      for (const entry of batch) entry.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }
}
