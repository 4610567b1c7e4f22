import type { Channel, ChannelModel, ConfirmChannel } from 'amqplib';
import type { AmqpConnectionManager } from 'amqp-connection-manager';
import { describeError } from '../../errors';
import { waitAtMost } from '../../support/with-timeout';
import type { AdapterLogger } from '../broker-adapter';

/** First pause before a channel the broker closed on a live connection is opened again; it doubles up to the max. */
const REOPEN_DELAY_MS = 100;
const MAX_REOPEN_DELAY_MS = 30_000;
/** A channel that stayed open this long resets the reopen backoff. */
const STABLE_CHANNEL_MS = 30_000;
/** amqplib's close() waits for the broker's reply, which never comes if the connection drops first. */
const CLOSE_WAIT_MS = 2000;

const closedChannels = new WeakSet<Channel>();

/** True once the channel closed: a delivery it carried can no longer be acked on it. */
export function isClosed(channel: Channel): boolean {
  return closedChannels.has(channel);
}

/** Closes a channel, waiting at most a moment for the broker's reply. Never rejects. */
export async function closeChannel(channel: Channel): Promise<void> {
  if (isClosed(channel)) return;
  const closed = new Promise<void>((resolve) => channel.once('close', () => resolve()));
  await waitAtMost(Promise.race([channel.close().catch(() => undefined), closed]), CLOSE_WAIT_MS);
}

export interface ManagedChannelOptions<C extends Channel> {
  /** For logs: what the channel is for. */
  role: string;
  confirm: C extends ConfirmChannel ? true : false;
  /** Prepares a new channel (listeners, declarations, consumers). A rejection closes the channel and it is tried again later. */
  setup: (channel: C) => Promise<void>;
  /** A channel error the broker sent (404, 406, ...), before the channel closes. */
  onError?: (error: Error & { code?: number }) => void;
  /** The setup of a new channel failed (the first failure may end a start()). */
  onSetupError?: (error: unknown) => void;
}

/**
 * One AMQP channel kept open on an amqp-connection-manager connection: opened on every (re)connect
 * and, when the broker closes it on a live connection (a 404 or 406 closes only the channel),
 * opened again with backoff. amqp-connection-manager's own ChannelWrapper does not do the latter:
 * it waits for the next reconnect, and the only way to force one drops every other channel too.
 */
export class ManagedChannel<C extends Channel> {
  private current?: C;
  private closed = false;
  private failures = 0;
  private reopenTimer?: NodeJS.Timeout;

  constructor(
    private readonly manager: AmqpConnectionManager,
    private readonly options: ManagedChannelOptions<C>,
    private readonly logger: AdapterLogger,
  ) {
    manager.on('connect', this.onConnect);
    const connection = manager.connection;
    if (connection) void this.open(connection);
  }

  /** The open, set-up channel, if there is one now. */
  get channel(): C | undefined {
    return this.current;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reopenTimer);
    this.manager.removeListener('connect', this.onConnect);
    const channel = this.current;
    this.current = undefined;
    if (channel) await closeChannel(channel);
  }

  private readonly onConnect = ({ connection }: { connection: ChannelModel }): void => {
    this.failures = 0;
    clearTimeout(this.reopenTimer);
    void this.open(connection);
  };

  private async open(connection: ChannelModel): Promise<void> {
    let channel: C;
    try {
      channel = (this.options.confirm ? await connection.createConfirmChannel() : await connection.createChannel()) as C;
    } catch (error) {
      // The connection went meanwhile (its reconnect opens a new channel), or it has no channels left.
      if (!this.closed && this.manager.connection === connection) this.scheduleReopen(connection, error);
      return;
    }
    if (this.closed) return void closeChannel(channel);
    const openedAt = Date.now();
    channel.on('error', (error: Error & { code?: number }) => {
      this.logger.warn(`${this.options.role}: the broker closed the channel: ${describeError(error)}`);
      this.options.onError?.(error);
    });
    channel.once('close', () => {
      closedChannels.add(channel);
      if (this.current === channel) this.current = undefined;
      if (Date.now() - openedAt > STABLE_CHANNEL_MS) this.failures = 0;
      // A lost connection closes its channels too: the manager reconnects, and onConnect reopens.
      if (!this.closed && this.manager.connection === connection) this.scheduleReopen(connection);
    });
    try {
      await this.options.setup(channel);
    } catch (error) {
      if (!isClosed(channel)) this.logger.warn(`${this.options.role}: setting up the channel failed: ${describeError(error)}`);
      this.options.onSetupError?.(error);
      void closeChannel(channel);
      return;
    }
    if (this.closed) return void closeChannel(channel);
    if (!isClosed(channel)) this.current = channel;
  }

  private scheduleReopen(connection: ChannelModel, error?: unknown): void {
    clearTimeout(this.reopenTimer);
    const delay = Math.min(MAX_REOPEN_DELAY_MS, REOPEN_DELAY_MS * 2 ** this.failures++);
    if (error !== undefined) this.logger.warn(`${this.options.role}: opening a channel failed (${describeError(error)}); retrying in ${delay} ms`);
    this.reopenTimer = setTimeout(() => {
      if (!this.closed && this.manager.connection === connection) void this.open(connection);
    }, delay);
    this.reopenTimer.unref();
  }
}
