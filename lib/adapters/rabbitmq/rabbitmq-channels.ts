import type { Channel } from 'amqplib';
import type { AmqpConnectionManager } from 'amqp-connection-manager';
import { describeError } from '../../errors';
import type { AdapterLogger } from '../broker-adapter';

/** How long a channel may stay closed on a live connection before the connection is renewed. */
const CHANNEL_RECOVERY_DELAY_MS = 1000;

const closedChannels = new WeakSet<Channel>();

/** True once the channel closed: a delivery it carried can no longer be acked on it. */
export function isClosed(channel: Channel): boolean {
  return closedChannels.has(channel);
}

/**
 * Watches a channel that amqp-connection-manager opened. amqplib throws from an `error` event no
 * one listens to, so one is always attached. And amqp-connection-manager only opens a new
 * channel after a reconnect: a channel the server closed on a live connection (a queue deleted
 * under a consumer, say) would stay closed, so the connection is renewed instead.
 */
export function watchChannel(
  manager: AmqpConnectionManager,
  channel: Channel,
  role: string,
  logger: AdapterLogger,
  isClosing: () => boolean,
): void {
  // Setup runs on the connection the channel was opened on, which is the current one.
  const connection = manager.connection;
  channel.on('error', (error: unknown) => logger.warn(`${role} channel closed by the broker: ${describeError(error)}`));
  channel.once('close', () => {
    closedChannels.add(channel);
    if (isClosing()) return;
    setTimeout(() => {
      // A lost connection closes its channels too; the manager reconnects by itself then.
      if (isClosing() || manager.connection !== connection || !manager.isConnected()) return;
      logger.warn(`${role} channel closed on a live connection; reconnecting to open a new one`);
      manager.reconnect();
    }, CHANNEL_RECOVERY_DELAY_MS).unref();
  });
}
