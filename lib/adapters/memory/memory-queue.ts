import type { DeliveryListener, InboundDelivery } from '../broker-adapter';

/** One message held by the in-memory broker. */
export interface MemoryMessage {
  readonly body: string | Buffer;
  readonly headers: Readonly<Record<string, string>>;
  readonly key?: string;
  readonly messageId: string;
}

export interface MemoryQueueHooks {
  onDelivered(): void;
  onAcked(): void;
  onRequeued(count: number): void;
  onListenerError(error: unknown): void;
}

/**
 * A FIFO queue with competing consumers: one per topic and group (and one for its dead letters).
 * A message whose key is in flight waits, so messages of one key are handled in order.
 */
export class MemoryQueue {
  private items: MemoryMessage[] = [];
  private head = 0;
  private readonly consumers: MemoryQueueConsumer[] = [];
  private readonly keysInFlight = new Map<string, number>();
  private nextConsumer = 0;
  private dispatchScheduled = false;
  private microtaskDispatches = 0;

  constructor(private readonly hooks: MemoryQueueHooks) {}

  get length(): number {
    return this.items.length - this.head;
  }

  get consumerCount(): number {
    return this.consumers.length;
  }

  /** Oldest first, without removing. */
  peek(index: number): MemoryMessage | undefined {
    return this.items[this.head + index];
  }

  shift(): MemoryMessage | undefined {
    if (this.head >= this.items.length) return undefined;
    const message = this.items[this.head++];
    this.compact();
    return message;
  }

  enqueue(message: MemoryMessage): void {
    this.items.push(message);
    this.scheduleDispatch();
  }

  /** Puts messages back at the front, in their original order (a closed consumer's unacked deliveries). */
  requeueFront(messages: MemoryMessage[]): void {
    if (messages.length === 0) return;
    this.items = [...messages, ...this.items.slice(this.head)];
    this.head = 0;
    this.hooks.onRequeued(messages.length);
    this.scheduleDispatch();
  }

  /** Removes the oldest message (bounded queues). */
  dropOldest(): MemoryMessage | undefined {
    return this.shift();
  }

  addConsumer(concurrency: number, listener: DeliveryListener): MemoryQueueConsumer {
    const consumer = new MemoryQueueConsumer(this, concurrency, listener);
    this.consumers.push(consumer);
    this.scheduleDispatch();
    return consumer;
  }

  /** @internal */
  detach(consumer: MemoryQueueConsumer): void {
    const index = this.consumers.indexOf(consumer);
    if (index >= 0) this.consumers.splice(index, 1);
  }

  /** @internal called by a consumer when a delivery settles */
  released(message: MemoryMessage, acked: boolean): void {
    if (message.key !== undefined) {
      const count = (this.keysInFlight.get(message.key) ?? 1) - 1;
      if (count <= 0) this.keysInFlight.delete(message.key);
      else this.keysInFlight.set(message.key, count);
    }
    if (acked) this.hooks.onAcked();
    this.scheduleDispatch();
  }

  /** @internal */
  listenerFailed(error: unknown): void {
    this.hooks.onListenerError(error);
  }

  private scheduleDispatch(): void {
    if (this.dispatchScheduled) return;
    this.dispatchScheduled = true;
    // Microtasks keep the hot path fast; every so often yield to I/O so a busy queue cannot starve timers and sockets.
    if (++this.microtaskDispatches < 1000) {
      queueMicrotask(() => this.dispatch());
    } else {
      this.microtaskDispatches = 0;
      setImmediate(() => this.dispatch());
    }
  }

  private dispatch(): void {
    this.dispatchScheduled = false;
    while (this.length > 0) {
      const consumer = this.pickConsumer();
      if (!consumer) return;
      const index = this.nextDeliverableIndex();
      if (index < 0) return;
      const message = this.take(index);
      if (message.key !== undefined) this.keysInFlight.set(message.key, (this.keysInFlight.get(message.key) ?? 0) + 1);
      this.hooks.onDelivered();
      consumer.deliver(message);
    }
  }

  private pickConsumer(): MemoryQueueConsumer | undefined {
    const count = this.consumers.length;
    for (let i = 0; i < count; i++) {
      const consumer = this.consumers[(this.nextConsumer + i) % count];
      if (consumer.hasCapacity()) {
        this.nextConsumer = (this.nextConsumer + i + 1) % count;
        return consumer;
      }
    }
    return undefined;
  }

  private nextDeliverableIndex(): number {
    if (this.keysInFlight.size === 0) return this.head;
    for (let i = this.head; i < this.items.length; i++) {
      const key = this.items[i].key;
      if (key === undefined || !this.keysInFlight.has(key)) return i;
    }
    return -1;
  }

  private take(index: number): MemoryMessage {
    if (index === this.head) return this.shift() as MemoryMessage;
    return this.items.splice(index, 1)[0];
  }

  private compact(): void {
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
}

/** One subscriber of a MemoryQueue. */
export class MemoryQueueConsumer {
  private readonly inFlight = new Set<MemoryDelivery>();
  private stopped = false;

  constructor(
    private readonly queue: MemoryQueue,
    private readonly concurrency: number,
    private readonly listener: DeliveryListener,
  ) {}

  hasCapacity(): boolean {
    return !this.stopped && this.inFlight.size < this.concurrency;
  }

  deliver(message: MemoryMessage): void {
    const delivery = new MemoryDelivery(message, this);
    this.inFlight.add(delivery);
    this.listener(delivery).catch((error: unknown) => this.queue.listenerFailed(error));
  }

  /** @internal */
  settle(delivery: MemoryDelivery): void {
    if (!this.inFlight.delete(delivery)) return;
    this.queue.released(delivery.message, true);
  }

  stop(): void {
    this.stopped = true;
  }

  /** Detaches; unacked deliveries go back to the front of the queue. */
  close(): void {
    this.stopped = true;
    this.queue.detach(this);
    const unacked = [...this.inFlight];
    this.inFlight.clear();
    for (const delivery of unacked) {
      delivery.revoke();
      this.queue.released(delivery.message, false);
    }
    this.queue.requeueFront(unacked.map((delivery) => delivery.message));
  }
}

class MemoryDelivery implements InboundDelivery {
  private settled = false;

  constructor(
    readonly message: MemoryMessage,
    private readonly consumer: MemoryQueueConsumer,
  ) {}

  get body(): string | Buffer {
    return this.message.body;
  }

  get headers(): Readonly<Record<string, string>> {
    return this.message.headers;
  }

  get raw(): unknown {
    return this.message;
  }

  ack(): Promise<void> {
    if (!this.settled) {
      this.settled = true;
      this.consumer.settle(this);
    }
    return Promise.resolve();
  }

  /** After its consumer closed, an ack is a no-op (the message was already requeued). */
  revoke(): void {
    this.settled = true;
  }
}
