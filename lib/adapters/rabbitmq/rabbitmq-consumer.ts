import type { Channel, ConsumeMessage } from 'amqplib';
import type { AmqpConnectionManager, ChannelWrapper } from 'amqp-connection-manager';
import { describeError } from '../../errors';
import type { AdapterConsumer, AdapterLogger, DeliveryListener, InboundDelivery } from '../broker-adapter';
import { isClosed, watchChannel } from './rabbitmq-channels';
import { inboundHeaders } from './rabbitmq-headers';

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
 * One subscription on its own channel, so its prefetch is its concurrency. amqp-connection-manager
 * runs `attach` on every new channel, so the consumer re-attaches by itself after a dropped
 * connection or broker restart. A delivery remembers its channel: once that channel is gone the
 * broker has already put the message back, and a late ack or release does nothing.
 */
export class RabbitMqConsumer implements AdapterConsumer {
  private channel?: ChannelWrapper;
  private current?: { channel: Channel; consumerTag: string };
  private stopped = false;
  private closed = false;
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
    this.channel = this.manager.createChannel({ name: `ductape-consumer ${this.spec.queue}`, confirm: false, setup: this.attach });
    this.channel.on('error', (error: unknown) => {
      this.logger.warn(`consumer of '${this.spec.queue}': ${describeError(error)}`);
      this.attached?.reject(error instanceof Error ? error : new Error(String(error)));
    });
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
    // Deliveries already handed over stay ackable on this channel until close().
    await current.channel.cancel(current.consumerTag).catch((error: unknown) => {
      if (!isClosed(current.channel)) this.logger.warn(`cancelling the consumer of '${this.spec.queue}': ${describeError(error)}`);
    });
  }

  async close(): Promise<void> {
    this.stopped = true;
    this.closed = true;
    this.current = undefined;
    // Closing the channel gives every unacked delivery back to the broker.
    await this.channel?.close().catch((error: unknown) => this.logger.warn(`closing the consumer of '${this.spec.queue}': ${describeError(error)}`));
  }

  /** The channel's setup: amqp-connection-manager runs it on each new channel. */
  private readonly attach = async (channel: Channel): Promise<void> => {
    watchChannel(this.manager, channel, `consumer of '${this.spec.queue}'`, this.logger, () => this.closed);
    await this.consumeOn(channel);
  };

  private async consumeOn(channel: Channel): Promise<void> {
    if (this.stopped) return;
    await this.spec.declare(channel);
    await channel.prefetch(this.spec.concurrency);
    const { consumerTag } = await channel.consume(this.spec.queue, (message) => this.onMessage(channel, message), { noAck: false });
    if (this.stopped) {
      await channel.cancel(consumerTag).catch(() => undefined);
      return;
    }
    this.current = { channel, consumerTag };
    this.attached?.resolve();
  }

  private onMessage(channel: Channel, message: ConsumeMessage | null): void {
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
    const delivery: InboundDelivery = {
      body: message.content,
      headers: inboundHeaders(message),
      raw: message,
      ack: () => {
        settle(channel, () => channel.ack(message));
        return Promise.resolve();
      },
      release: () => {
        settle(channel, () => channel.nack(message, false, true));
        return Promise.resolve();
      },
    };
    this.spec.listener(delivery).catch((error: unknown) => this.logger.error(`delivery on '${this.spec.queue}' failed: ${describeError(error)}`));
  }
}

/**
 * Acks or nacks on the delivery's own channel. After that channel closed the broker has put the
 * message back already; sending the tag on any other channel would close that one.
 */
function settle(channel: Channel, operation: () => void): void {
  if (isClosed(channel)) return;
  try {
    operation();
  } catch {
    // The channel closed between the check and the write: the broker redelivers the message.
  }
}
