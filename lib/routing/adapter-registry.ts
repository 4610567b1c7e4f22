import { type Logger } from '@nestjs/common';
import { createAdapter } from '../adapters/adapter-factory';
import { validateEnvConnection } from '../broker-options.validator';
import type { AdapterLogger, BrokerAdapter } from '../adapters/broker-adapter';
import { BrokerError, describeError } from '../errors';
import type { BrokerEnvConfig } from '../interfaces/broker-options.interface';

/**
 * One adapter per (broker tag, env slug), created and connected on first use and shared after.
 * Creation failures are not cached, so a broker that was down at first use is retried next time.
 */
export class AdapterRegistry {
  /** Keyed by the env config object, which belongs to exactly one broker. */
  private readonly adapters = new Map<BrokerEnvConfig, Promise<BrokerAdapter>>();
  /** The same adapters once connected, for the publish hot path (no await of a settled promise). */
  private readonly ready = new Map<BrokerEnvConfig, BrokerAdapter>();
  private closed = false;

  constructor(private readonly logger: Logger) {}

  get(brokerTag: string, env: BrokerEnvConfig): Promise<BrokerAdapter> {
    let adapter = this.adapters.get(env);
    if (!adapter) {
      adapter = this.open(brokerTag, env);
      this.adapters.set(env, adapter);
      adapter.then(
        (opened) => !this.closed && this.ready.set(env, opened),
        () => this.adapters.delete(env),
      );
    }
    return adapter;
  }

  /** The adapter of this broker env if it is already connected. */
  connected(env: BrokerEnvConfig): BrokerAdapter | undefined {
    return this.ready.get(env);
  }

  /** Closes every adapter; later `get` calls fail. */
  async closeAll(): Promise<void> {
    this.closed = true;
    this.ready.clear();
    const opened = await Promise.allSettled(this.adapters.values());
    this.adapters.clear();
    await Promise.all(
      opened.map(async (result) => {
        if (result.status !== 'fulfilled') return;
        try {
          await result.value.close();
        } catch (error) {
          this.logger.error(`closing a broker adapter failed: ${describeError(error)}`);
        }
      }),
    );
  }

  private async open(brokerTag: string, env: BrokerEnvConfig): Promise<BrokerAdapter> {
    if (this.closed) throw new BrokerError('PUBLISH_FAILED', 'the broker module is shut down');
    const logger: AdapterLogger = {
      log: (message) => this.logger.log(`[${brokerTag}/${env.slug}] ${message}`),
      warn: (message) => this.logger.warn(`[${brokerTag}/${env.slug}] ${message}`),
      error: (message) => this.logger.error(`[${brokerTag}/${env.slug}] ${message}`),
    };
    // Another env's settings could be absent at startup: they must be whole now.
    validateEnvConnection(brokerTag, env);
    let adapter: BrokerAdapter;
    try {
      adapter = createAdapter(env, { brokerTag, envSlug: env.slug, logger });
    } catch (error) {
      throw new BrokerError('CONFIG_INVALID', `broker '${brokerTag}' env '${env.slug}' (${env.type}): ${describeError(error)}`, {
        cause: error,
      });
    }
    try {
      await adapter.connect();
    } catch (error) {
      // Whatever it opened (sockets, reconnect timers) must not outlive the failure.
      await adapter.close().catch(() => undefined);
      throw error;
    }
    return adapter;
  }
}
