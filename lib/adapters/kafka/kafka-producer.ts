import type { Message, Producer } from 'kafkajs';

export interface BatchingOptions {
  /** -1: every in-sync replica acknowledged; 1: the leader did. */
  acks: -1 | 1;
  /** How long the first message of a batch waits for others. */
  lingerMs: number;
  maxBatchMessages: number;
  maxBatchBytes: number;
}

interface Pending {
  topic: string;
  message: Message;
  bytes: number;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * Batches concurrent publishes into few produce requests: the first message of a batch waits up
 * to `lingerMs` for others, and a batch goes at once when it reaches its size cap. Each caller
 * still gets its own result: when a batch fails, its messages are sent again one by one, so one
 * bad message (too large for the broker, say) fails alone.
 */
export class BatchingProducer {
  private pending: Pending[] = [];
  private pendingBytes = 0;
  private timer?: NodeJS.Timeout;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly producer: Producer,
    private readonly options: BatchingOptions,
  ) {}

  send(topic: string, message: Message): Promise<void> {
    return new Promise((resolve, reject) => {
      const bytes = size(message);
      this.pending.push({ topic, message, bytes, resolve, reject });
      this.pendingBytes += bytes;
      if (this.pending.length >= this.options.maxBatchMessages || this.pendingBytes >= this.options.maxBatchBytes) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.options.lingerMs);
    });
  }

  /** Sends what is waiting and resolves once every batch under way has its answer. */
  async drain(): Promise<void> {
    this.flush();
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    const sending = this.sendBatch(batch).finally(() => this.inFlight.delete(sending));
    this.inFlight.add(sending);
  }

  private async sendBatch(batch: Pending[]): Promise<void> {
    const byTopic = new Map<string, Message[]>();
    for (const { topic, message } of batch) {
      const messages = byTopic.get(topic);
      if (messages) messages.push(message);
      else byTopic.set(topic, [message]);
    }
    try {
      await this.producer.sendBatch({ acks: this.options.acks, topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })) });
      for (const pending of batch) pending.resolve();
    } catch (error) {
      if (batch.length === 1) return batch[0].reject(error);
      // One by one and in order, so messages of one key keep their order.
      for (const { topic, message, resolve, reject } of batch) {
        await this.producer.send({ topic, messages: [message], acks: this.options.acks }).then(() => resolve(), reject);
      }
    }
  }
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
