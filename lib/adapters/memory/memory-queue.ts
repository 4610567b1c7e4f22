import type { DeliveryListener, InboundDelivery, InboundMetadata } from '../broker-adapter';

/**
 * One message held by the in-memory broker: its bytes, its application headers, and its metadata
 * as the broker's own fields, in the same object (there is no wire to map it onto; a foreign
 * message has none of them).
 */
export interface MemoryMessage extends InboundMetadata {
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
 * A message whose key is in flight waits in a list of its key, so messages of one key are handled
 * one at a time, in order, without rescanning the queue. Invariant: when a key has waiting
 * messages, either the key is in flight or its earliest message is in the queue.
 */
export class MemoryQueue {
  private items: MemoryMessage[] = [];
  private head = 0;
  private readonly consumers: MemoryQueueConsumer[] = [];
  private readonly keysInFlight = new Set<string>();
  private readonly waitingByKey = new Map<string, MemoryMessage[]>();
  private waiting = 0;
  private nextConsumer = 0;
  private dispatchScheduled = false;
  private microtaskDispatches = 0;
  /** Set while a dispatch put off to the next turn of the event loop has not run yet. */
  private deferredDispatch?: Promise<void>;

  constructor(private readonly hooks: MemoryQueueHooks) {}

  /** Messages held and not in flight. */
  get length(): number {
    return this.items.length - this.head + this.waiting;
  }

  get consumerCount(): number {
    return this.consumers.length;
  }

  /**
   * Resolves once a dispatch put off to the next turn of the event loop has run; undefined when
   * none is waiting (see scheduleDispatch).
   */
  get consumersTurn(): Promise<void> | undefined {
    return this.deferredDispatch;
  }

  /** The oldest message that no consumer holds a key of, without removing it. */
  peekOldest(): MemoryMessage | undefined {
    return this.items[this.head];
  }

  /** Every message held and not in flight, without removing any (the testing helper reads dead letters with it). */
  snapshot(): MemoryMessage[] {
    const held = this.items.slice(this.head);
    for (const list of this.waitingByKey.values()) held.push(...list);
    return held;
  }

  /** Removes `message` if it is still the oldest; false when a consumer took it meanwhile. */
  removeOldest(message: MemoryMessage): boolean {
    if (this.items[this.head] !== message) return false;
    this.remove();
    return true;
  }

  enqueue(message: MemoryMessage): void {
    this.items.push(message);
    this.scheduleDispatch();
  }

  /** Puts messages back at the front, in their original order (unacked deliveries of a closed consumer). */
  requeueFront(messages: MemoryMessage[]): void {
    if (messages.length === 0) return;
    this.items = [...messages, ...this.items.slice(this.head)];
    this.head = 0;
    this.hooks.onRequeued(messages.length);
    this.scheduleDispatch();
  }

  /** @internal a released delivery */
  requeueBack(message: MemoryMessage): void {
    this.hooks.onRequeued(1);
    this.enqueue(message);
  }

  /** Removes the oldest message that no consumer holds (bounded queues); undefined when there is none. */
  dropOldest(): MemoryMessage | undefined {
    if (this.head < this.items.length) return this.remove();
    // Everything left waits behind a key in flight: drop the first waiting message of the oldest key.
    for (const [key, list] of this.waitingByKey) {
      const dropped = list.shift();
      this.waiting--;
      if (list.length === 0) this.waitingByKey.delete(key);
      return dropped;
    }
    return undefined;
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

  /** @internal called when a delivery is acked or released: the next message of its key may go. */
  released(message: MemoryMessage, acked: boolean): void {
    if (message.key !== undefined) {
      this.keysInFlight.delete(message.key);
      this.promoteNext(message.key);
    }
    if (acked) this.hooks.onAcked();
    this.scheduleDispatch();
  }

  /**
   * @internal called for each unacked delivery of a closing consumer. The message goes back to the
   * front (requeueFront), so the followers of its key stay parked behind it.
   */
  revoked(message: MemoryMessage): void {
    if (message.key !== undefined) this.keysInFlight.delete(message.key);
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
      this.deferredDispatch = new Promise((resolve) =>
        setImmediate(() => {
          this.deferredDispatch = undefined;
          try {
            this.dispatch();
          } finally {
            resolve();
          }
        }),
      );
    }
  }

  private dispatch(): void {
    this.dispatchScheduled = false;
    while (this.head < this.items.length) {
      const consumer = this.pickConsumer();
      if (!consumer) return;
      let message: MemoryMessage | undefined;
      while ((message = this.shift()) && message.key !== undefined && this.keysInFlight.has(message.key)) {
        this.park(message, message.key);
      }
      if (!message) return;
      if (message.key !== undefined) this.keysInFlight.add(message.key);
      this.hooks.onDelivered();
      consumer.deliver(message);
    }
  }

  /** Moves the earliest waiting message of `key` to the front: it was published before all the queue holds. */
  private promoteNext(key: string): void {
    const list = this.waitingByKey.get(key);
    if (!list) return;
    this.unshift(list.shift() as MemoryMessage);
    this.waiting--;
    if (list.length === 0) this.waitingByKey.delete(key);
  }

  /** Removes the oldest message for good (not a delivery): its key's next message takes its place. */
  private remove(): MemoryMessage | undefined {
    const message = this.shift();
    if (message?.key !== undefined && !this.keysInFlight.has(message.key)) this.promoteNext(message.key);
    return message;
  }

  private park(message: MemoryMessage, key: string): void {
    const list = this.waitingByKey.get(key);
    if (list) list.push(message);
    else this.waitingByKey.set(key, [message]);
    this.waiting++;
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

  private shift(): MemoryMessage | undefined {
    if (this.head >= this.items.length) return undefined;
    const message = this.items[this.head];
    this.items[this.head++] = undefined as unknown as MemoryMessage; // let it be collected
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return message;
  }

  private unshift(message: MemoryMessage): void {
    if (this.head > 0) this.items[--this.head] = message;
    else this.items.unshift(message);
  }
}

/** One subscriber of a MemoryQueue. */
export class MemoryQueueConsumer {
  /**
   * Unacked deliveries, oldest first, linked through the deliveries themselves: a Set's table was
   * rebuilt as it filled to the concurrency and emptied, a tenth of the hot path's garbage.
   */
  private oldest?: MemoryDelivery;
  private newest?: MemoryDelivery;
  private inFlight = 0;
  private stopped = false;

  constructor(
    private readonly queue: MemoryQueue,
    private readonly concurrency: number,
    private readonly listener: DeliveryListener,
  ) {}

  hasCapacity(): boolean {
    return !this.stopped && this.inFlight < this.concurrency;
  }

  deliver(message: MemoryMessage): void {
    const delivery = new MemoryDelivery(message, this);
    delivery.previous = this.newest;
    if (this.newest) this.newest.next = delivery;
    else this.oldest = delivery;
    this.newest = delivery;
    this.inFlight++;
    this.listener(delivery).catch(this.listenerFailed);
  }

  private readonly listenerFailed = (error: unknown): void => this.queue.listenerFailed(error);

  /** @internal called once per delivery, by its first ack or release. */
  settle(delivery: MemoryDelivery, acked: boolean): void {
    this.unlink(delivery);
    this.queue.released(delivery.message, acked);
    // A released message goes to the back, so one that keeps failing to settle cannot starve the rest.
    if (!acked) this.queue.requeueBack(delivery.message);
  }

  stop(): void {
    this.stopped = true;
  }

  /** Detaches; unacked deliveries go back to the front of the queue. */
  close(): void {
    this.stopped = true;
    this.queue.detach(this);
    const unacked: MemoryMessage[] = [];
    for (let delivery = this.oldest; delivery; ) {
      const next = delivery.next;
      delivery.revoke();
      delivery.previous = delivery.next = undefined; // a handler still holding one keeps no others alive
      this.queue.revoked(delivery.message);
      unacked.push(delivery.message);
      delivery = next;
    }
    this.oldest = this.newest = undefined;
    this.inFlight = 0;
    this.queue.requeueFront(unacked);
  }

  private unlink(delivery: MemoryDelivery): void {
    if (delivery.previous) delivery.previous.next = delivery.next;
    else this.oldest = delivery.next;
    if (delivery.next) delivery.next.previous = delivery.previous;
    else this.newest = delivery.previous;
    delivery.previous = delivery.next = undefined;
    this.inFlight--;
  }
}

/** Settling is synchronous here: every ack and release answers with this one resolved promise. */
const SETTLED: Promise<void> = Promise.resolve();

class MemoryDelivery implements InboundDelivery {
  /** Neighbours in the consumer's list of unacked deliveries. */
  previous?: MemoryDelivery;
  next?: MemoryDelivery;
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

  get metadata(): InboundMetadata {
    return this.message;
  }

  get raw(): unknown {
    return this.message;
  }

  ack(): Promise<void> {
    return this.settle(true);
  }

  release(): Promise<void> {
    return this.settle(false);
  }

  /** After its consumer closed, an ack or a release is a no-op (the message was already requeued). */
  revoke(): void {
    this.settled = true;
  }

  private settle(acked: boolean): Promise<void> {
    if (!this.settled) {
      this.settled = true;
      this.consumer.settle(this, acked);
    }
    return SETTLED;
  }
}
