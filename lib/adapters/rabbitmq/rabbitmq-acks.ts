import type { Channel, ConsumeMessage } from 'amqplib';
import { isClosed } from './rabbitmq-channels';

/** Outstanding deliveries kept before the settled ones among them are dropped. */
const COMPACT_AT = 4096;

interface Tracked {
  readonly message: ConsumeMessage;
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
  private tracked: Tracked[] = [];
  private head = 0;
  /** Acked since the last flush (some may sit behind a pending delivery). */
  private acked: Tracked[] = [];
  private flushScheduled = false;
  private compactAt = COMPACT_AT;

  constructor(private readonly channel: Channel) {}

  /** Registers a delivery in the order the broker gave it; returns the handle to settle it with. */
  track(message: ConsumeMessage): Tracked {
    const entry: Tracked = { message, state: 'pending' };
    this.tracked.push(entry);
    return entry;
  }

  ack(entry: Tracked): void {
    if (entry.state !== 'pending') return;
    entry.state = 'acked';
    this.acked.push(entry);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  release(entry: Tracked): void {
    if (entry.state !== 'pending') return;
    entry.state = 'settled';
    this.send(() => this.channel.nack(entry.message, false, true));
  }

  /** Sends the acks given so far; called by the scheduled flush, and before the channel closes. */
  readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.acked.length === 0) return;
    let lastOfRun: Tracked | undefined;
    while (this.head < this.tracked.length && this.tracked[this.head].state !== 'pending') {
      const entry = this.tracked[this.head++];
      if (entry.state === 'acked') lastOfRun = entry;
      entry.state = 'settled';
    }
    if (this.head > 1024 && this.head * 2 > this.tracked.length) {
      this.tracked = this.tracked.slice(this.head);
      this.head = 0;
    }
    if (lastOfRun) {
      const upTo = lastOfRun;
      this.send(() => this.channel.ack(upTo.message, true));
    }
    // Acked behind a delivery still in its handler: one ack each, so they free their prefetch slots now.
    for (const entry of this.acked) {
      if (entry.state !== 'acked') continue;
      entry.state = 'settled';
      this.send(() => this.channel.ack(entry.message, false));
    }
    this.acked = [];
    // Behind a handler that runs for long, settled deliveries pile up: drop them now and then.
    if (this.tracked.length - this.head > this.compactAt) {
      this.tracked = this.tracked.slice(this.head).filter((entry) => entry.state !== 'settled');
      this.head = 0;
      this.compactAt = Math.max(COMPACT_AT, 2 * this.tracked.length);
    }
  };

  private send(operation: () => void): void {
    if (isClosed(this.channel)) return;
    try {
      operation();
    } catch {
      // The channel is closing: the broker redelivers what was not acked.
    }
  }
}
