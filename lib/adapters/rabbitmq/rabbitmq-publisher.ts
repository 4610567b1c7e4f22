import type { ConfirmChannel, Message, Options } from 'amqplib';
import type { AmqpConnectionManager, ChannelWrapper } from 'amqp-connection-manager';
import { describeError } from '../../errors';
import type { AdapterLogger } from '../broker-adapter';
import { watchChannel } from './rabbitmq-channels';

/** Marks each publish, so a message the broker returns as unroutable is matched to its publish. */
export const PUBLISH_ID_HEADER = 'x-ductape-publish-id';

/**
 * Every publish of one adapter goes through one confirm channel, pipelined: a publish is written
 * at once and resolves when its own confirm arrives, so many are in flight together.
 *
 * amqp-connection-manager queues publishes while disconnected and writes them after the
 * reconnect. This class adds what it leaves out: a message the broker returns (mandatory, no
 * queue bound) fails instead of resolving; a publish whose channel closed before its confirm is
 * written again on the next channel (a duplicate at worst, never a loss); and one deadline, the
 * publish timeout, bounds the whole wait.
 */
export class RabbitMqPublisher {
  private readonly channel: ChannelWrapper;
  /** Publish id → the broker's reply, for messages returned before their confirm. */
  private readonly returned = new Map<string, string>();
  private sequence = 0;
  private closed = false;

  constructor(
    manager: AmqpConnectionManager,
    private readonly publishTimeoutMs: number,
    private readonly logger: AdapterLogger,
  ) {
    this.channel = manager.createChannel({
      name: 'ductape-publisher',
      confirm: true,
      setup: (channel: ConfirmChannel) => {
        channel.on('return', this.onReturn);
        watchChannel(manager, channel, 'publisher', logger, () => this.closed);
        return Promise.resolve();
      },
    });
    this.channel.on('error', (error: unknown) => logger.warn(`publisher channel: ${describeError(error)}`));
  }

  /** Resolves once the broker confirmed the message; rejects if it was nacked, returned, or not confirmed in time. */
  async publish(exchange: string, routingKey: string, content: Buffer, options: Options.Publish): Promise<void> {
    const id = String(++this.sequence);
    const deadline = Date.now() + this.publishTimeoutMs;
    const headers: Record<string, unknown> = { ...(options.headers as Record<string, unknown> | undefined), [PUBLISH_ID_HEADER]: id };
    const publishOptions = { ...options, mandatory: true, headers };
    try {
      for (;;) {
        if (this.closed) throw new Error('the RabbitMQ adapter is closed');
        const timeout = deadline - Date.now();
        if (timeout <= 0) throw this.timeoutError();
        try {
          await this.channel.publish(exchange, routingKey, content, { ...publishOptions, timeout });
        } catch (error) {
          if (isChannelLoss(error)) {
            // Written but never confirmed: the connection went. Send it again once it is back.
            await new Promise((resolve) => setImmediate(resolve));
            continue;
          }
          if (error instanceof Error && error.message === 'timeout') throw this.timeoutError();
          if (error instanceof Error && error.message === 'message nacked') {
            throw new Error(`the broker refused the message (nack) on ${describeTarget(exchange, routingKey)}`);
          }
          throw error;
        }
        const reply = this.returned.get(id);
        if (reply !== undefined) {
          throw new Error(`the message could not be routed: ${describeTarget(exchange, routingKey)} has no queue to take it (${reply})`);
        }
        return;
      }
    } finally {
      this.returned.delete(id);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.channel.close().catch((error: unknown) => this.logger.warn(`closing the publisher channel: ${describeError(error)}`));
  }

  private readonly onReturn = (message: Message): void => {
    const id = message.properties.headers?.[PUBLISH_ID_HEADER] as unknown;
    // A basic.return carries its reply code and text, which amqplib's types leave out.
    const { replyCode, replyText } = message.fields as { replyCode?: number; replyText?: string };
    if (typeof id === 'string') this.returned.set(id, `${replyCode ?? '?'} ${replyText ?? 'returned'}`);
  };

  private timeoutError(): Error {
    return new Error(`no confirm from RabbitMQ within ${this.publishTimeoutMs} ms (publishTimeoutMs); the broker may be unreachable`);
  }
}

function describeTarget(exchange: string, routingKey: string): string {
  return exchange === '' ? `queue '${routingKey}'` : `exchange '${exchange}'`;
}

/** The channel or connection closed under a publish: nothing says whether the broker took it. */
function isChannelLoss(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  return /^(channel closed|channel ended|connection closed)/i.test(error.message) || error.name === 'IllegalOperationError';
}
