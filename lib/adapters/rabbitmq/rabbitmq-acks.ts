import type { Channel, Message } from 'amqplib';
import { isClosed } from './rabbitmq-channels';

/** Settled deliveries at the front of the list are dropped once there are this many. */
const TRIM_AT = 64;
/** Outstanding deliveries kept before the settled ones among them are dropped. */
const COMPACT_AT = 4096;

/** One delivery, by its tag only: a settled message's body must not stay in memory. */
export interface TrackedDelivery {
  readonly deliveryTag: number;
  /** pending: its handler runs; acked: to be acked at the next flush; settled: the broker has its ack or nack. */
  state: 'pending' | 'acked' | 'settled';
}

/**
 * The acks of one consumer channel, coalesced: acks given during one turn of the event loop go
 * as one `basic.ack` with `multiple` for the longest run of settled deliveries from the oldest,
 * and one ack each for the rest. Every ack frame costs the broker about as much as a delivery,
 * so this is most of the speed of a busy consumer (measured in bench/).
 *
 * A multiple ack settles every outstanding tag up to its own, so it never goes past a delivery
 * whose handler still runs. Releases (nack with requeue) go at once, for that delivery alone.
 * After the channel closed, nothing is sent: the broker has already put every unacked message back.
 */
export class RabbitMqAckBatcher {
  /** Outstanding deliveries, oldest (lowest tag) first; `head` is the first one not yet dropped. */
  private tracked: TrackedDelivery[] = [];
  private head = 0;
  /** Acked since the last flush (some may sit behind a pending delivery). */
  private acked: TrackedDelivery[] = [];
  private flushScheduled = false;
  private compactAt = COMPACT_AT;

  constructor(private readonly channel: Channel) {}

  /** Registers a delivery in the order the broker gave it; returns the handle to settle it with. */
  track(deliveryTag: number): TrackedDelivery {
    const entry: TrackedDelivery = { deliveryTag, state: 'pending' };
    this.tracked.push(entry);
    return entry;
  }

  ack(entry: TrackedDelivery): void {
    if (entry.state !== 'pending') return;
    entry.state = 'acked';
    this.acked.push(entry);
    this.scheduleFlush();
  }

  release(entry: TrackedDelivery): void {
    if (entry.state !== 'pending') return;
    entry.state = 'settled';
    this.send(entry.deliveryTag, (message) => this.channel.nack(message, false, true));
    // Only to drop it from the list: a channel that only ever releases must not grow it.
    this.scheduleFlush();
  }

  /** Sends the acks given so far; called by the scheduled flush, and before the channel closes. */
  readonly flush = (): void => {
    this.flushScheduled = false;
    let lastOfRun: TrackedDelivery | undefined;
    while (this.head < this.tracked.length && this.tracked[this.head].state !== 'pending') {
      const entry = this.tracked[this.head++];
      if (entry.state === 'acked') lastOfRun = entry;
      entry.state = 'settled';
    }
    if (lastOfRun) this.send(lastOfRun.deliveryTag, (message) => this.channel.ack(message, true));
    // Acked behind a delivery still in its handler: one ack each, so they free their prefetch slots now.
    for (const entry of this.acked) {
      if (entry.state !== 'acked') continue;
      entry.state = 'settled';
      this.send(entry.deliveryTag, (message) => this.channel.ack(message, false));
    }
    this.acked = [];
    if (this.head >= TRIM_AT && this.head * 2 >= this.tracked.length) {
      this.tracked = this.tracked.slice(this.head);
      this.head = 0;
    }
    // Behind a handler that runs for long, settled deliveries pile up: drop them now and then.
    if (this.tracked.length - this.head > this.compactAt) {
      this.tracked = this.tracked.slice(this.head).filter((entry) => entry.state !== 'settled');
      this.head = 0;
      this.compactAt = Math.max(COMPACT_AT, 2 * this.tracked.length);
    }
  };

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(this.flush);
  }

  private send(deliveryTag: number, operation: (message: Message) => void): void {
    if (isClosed(this.channel)) return;
    try {
      // amqplib reads only the delivery tag of the message it acks.
      operation({ fields: { deliveryTag } } as Message);
    } catch {
      // The channel is closing: the broker redelivers what was not acked.
    }
  }
}
