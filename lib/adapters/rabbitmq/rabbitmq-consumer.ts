import type { Channel, ConsumeMessage } from 'amqplib';
import type { AmqpConnectionManager } from 'amqp-connection-manager';
import { describeError } from '../../errors';
import { waitAtMost } from '../../support/with-timeout';
import type { AdapterConsumer, AdapterLogger, DeliveryListener, InboundDelivery } from '../broker-adapter';
import { RabbitMqAckBatcher } from './rabbitmq-acks';
import { isClosed, ManagedChannel } from './rabbitmq-channels';
import { inboundMessage } from './rabbitmq-headers';

/** How long stop() waits for the broker to confirm the cancel. */
const CANCEL_WAIT_MS = 2000;

export interface RabbitMqConsumerSpec {
  queue: string;
  /** Prefetch: how many unacked deliveries the broker hands this consumer at once. */
  concurrency: number;
  /** Declares what the queue needs; run again on every new channel, so a reconnect finds it. */
  declare: (channel: Channel) => Promise<void>;
  listener: DeliveryListener;
  /** How long `start` waits for the first channel. */
  attachTimeoutMs: number;
}

/**
 * One subscription on its own channel, so its prefetch is its concurrency. The channel is opened
 * again after a dropped connection, a broker restart or a channel error, and the consumer
 * re-attaches by itself. A delivery remembers its channel: once that channel is gone the broker
 * has already put the message back, and a late ack or release does nothing.
 */
export class RabbitMqConsumer implements AdapterConsumer {
  private managed?: ManagedChannel<Channel>;
  private current?: { channel: Channel; consumerTag: string };
  /** The acks of each open consumer channel; flushed before the channel closes. */
  private readonly acks = new Map<Channel, RabbitMqAckBatcher>();
  private stopped = false;
  private attached?: { resolve: () => void; reject: (error: Error) => void };

  constructor(
    private readonly manager: AmqpConnectionManager,
    private readonly spec: RabbitMqConsumerSpec,
    private readonly logger: AdapterLogger,
  ) {}

  /** Resolves once the broker registered the consumer (its queue exists from then on). */
  async start(): Promise<void> {
    const firstAttach = new Promise<void>((resolve, reject) => (this.attached = { resolve, reject }));
    const timer = setTimeout(
      () => this.attached?.reject(new Error(`RabbitMQ did not accept the consumer of '${this.spec.queue}' within ${this.spec.attachTimeoutMs} ms`)),
      this.spec.attachTimeoutMs,
    );
    this.managed = new ManagedChannel<Channel>(
      this.manager,
      {
        role: `consumer of '${this.spec.queue}'`,
        confirm: false,
        setup: (channel) => this.consumeOn(channel),
        // The broker refusing the setup (a queue declared elsewhere with other arguments, say) fails
        // the subscribe; a dropped connection does not, the next one is waited for.
        onSetupError: (error) => {
          if (isBrokerRefusal(error)) this.attached?.reject(error as Error);
        },
      },
      this.logger,
    );
    try {
      await firstAttach;
    } catch (error) {
      await this.close();
      throw error;
    } finally {
      clearTimeout(timer);
      this.attached = undefined;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const current = this.current;
    this.current = undefined;
    if (!current || isClosed(current.channel)) return;
    // Deliveries already handed over stay ackable on this channel until close(). A silent link
    // would keep the cancel's reply away until the heartbeat gives up: shutdown does not wait that long.
    const cancelled = current.channel.cancel(current.consumerTag).catch((error: unknown) => {
      if (!isClosed(current.channel)) this.logger.warn(`cancelling the consumer of '${this.spec.queue}': ${describeError(error)}`);
    });
    await waitAtMost(cancelled, CANCEL_WAIT_MS);
  }

  async close(): Promise<void> {
    this.stopped = true;
    this.current = undefined;
    // Acks given so far go out first; closing the channel gives every unacked delivery back to the broker.
    for (const acks of this.acks.values()) acks.flush();
    this.acks.clear();
    await this.managed?.close();
  }

  private async consumeOn(channel: Channel): Promise<void> {
    if (this.stopped) return;
    await this.spec.declare(channel);
    await channel.prefetch(this.spec.concurrency);
    const acks = this.acksOf(channel);
    const { consumerTag } = await channel.consume(this.spec.queue, (message) => this.onMessage(channel, acks, message), { noAck: false });
    if (this.stopped) {
      await channel.cancel(consumerTag).catch(() => undefined);
      return;
    }
    this.current = { channel, consumerTag };
    this.attached?.resolve();
  }

  /** One batcher per channel: delivery tags count per channel, and a re-attach on the same channel goes on counting. */
  private acksOf(channel: Channel): RabbitMqAckBatcher {
    let acks = this.acks.get(channel);
    if (!acks) {
      acks = new RabbitMqAckBatcher(channel);
      this.acks.set(channel, acks);
      channel.once('close', () => this.acks.delete(channel));
    }
    return acks;
  }

  private onMessage(channel: Channel, acks: RabbitMqAckBatcher, message: ConsumeMessage | null): void {
    if (message === null) {
      // The broker cancelled the consumer (its queue was deleted): declare it again and go on.
      this.logger.warn(`the broker cancelled the consumer of '${this.spec.queue}'; attaching again`);
      if (this.current?.channel === channel) this.current = undefined;
      this.consumeOn(channel).catch((error: unknown) => this.logger.error(`re-attaching to '${this.spec.queue}': ${describeError(error)}`));
      return;
    }
    if (this.stopped) {
      // Arrived after stop(): give it back at once for another consumer.
      settle(channel, () => channel.nack(message, false, true));
      return;
    }
    const { body, headers, metadata } = inboundMessage(message);
    const entry = acks.track(message.fields.deliveryTag);
    // No delivery count: a retry is a new message (its attempt is in its headers), and a classic
    // queue only says whether a message was delivered before, not how often.
    const delivery: InboundDelivery = {
      body,
      headers,
      metadata,
      raw: message,
      ack: () => {
        acks.ack(entry);
        return Promise.resolve();
      },
      release: () => {
        acks.release(entry);
        return Promise.resolve();
      },
    };
    this.spec.listener(delivery).catch((error: unknown) => this.logger.error(`delivery on '${this.spec.queue}' failed: ${describeError(error)}`));
  }
}

/**
 * Acks or nacks on the delivery's own channel. After that channel closed the broker has put the
 * message back already; sending the tag on any other channel would ack another message or close
 * that channel.
 */
function settle(channel: Channel, operation: () => void): void {
  if (isClosed(channel)) return;
  try {
    operation();
  } catch {
    // The channel is closing: the broker redelivers the message.
  }
}

/** An AMQP error reply (403, 404, 406, ...) from the broker, as opposed to a lost connection. */
function isBrokerRefusal(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'number' && code >= 300 && code < 600;
}
