import { type Logger } from '@nestjs/common';
import { validateEnvConnection } from '../broker-options.validator';
import { BrokerError, describeError } from '../errors';
import type { BrokerAdapterDefinition, BrokerEnvConfig } from '../interfaces/broker-options.interface';
import { SingleFlight } from '../support/single-flight';
import { createAdapter } from './adapter-factory';
import { adapterLogContext, createAdapterLogger } from './adapter-logger';
import type { BrokerAdapter } from './broker-adapter';

/**
 * The connections of a module: one adapter per (broker tag, env slug), created and connected on
 * first use and shared after. A failure to create or connect is not kept, so a broker that was down
 * at first use is tried again next time.
 */
export class AdapterRegistry {
  /** Keyed by the env config object, which belongs to exactly one broker. */
  private readonly adapters = new SingleFlight<BrokerEnvConfig<string>, BrokerAdapter>({ keepResolved: true });
  /** The same adapters once connected, for the publish hot path (no await of a settled promise). */
  private readonly ready = new Map<BrokerEnvConfig<string>, BrokerAdapter>();
  private closed = false;
  /** Each env asked for, with its broker tag, in the order first asked. */
  private readonly opened = new Map<BrokerEnvConfig<string>, string>();

  constructor(
    private readonly logger: Logger,
    /** Broker types registered in the module's `adapters` option. */
    private readonly registered: Readonly<Record<string, BrokerAdapterDefinition>> = {},
    /** The module's shutdownTimeoutMs, which bounds each adapter's close(). */
    private readonly shutdownTimeoutMs?: number,
  ) {}

  get(brokerTag: string, env: BrokerEnvConfig<string>): Promise<BrokerAdapter> {
    const existing = this.adapters.get(env);
    if (existing) return existing;
    if (!this.opened.has(env)) this.opened.set(env, brokerTag);
    const adapter = this.adapters.run(env, () => this.open(brokerTag, env));
    adapter.then(
      (opened) => !this.closed && this.ready.set(env, opened),
      () => undefined,
    );
    return adapter;
  }

  /**
   * Every adapter connected now, with its broker tag and env: what a health check reports. One
   * whose first connection is still under way (or failed) is `opening` (or absent).
   */
  inUse(): { brokerTag: string; env: BrokerEnvConfig<string>; adapter?: BrokerAdapter }[] {
    return [...this.opened.entries()].map(([env, brokerTag]) => ({ brokerTag, env, adapter: this.ready.get(env) }));
  }

  /** The adapter of this broker env if it is already connected. */
  connected(env: BrokerEnvConfig<string>): BrokerAdapter | undefined {
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

  private async open(brokerTag: string, env: BrokerEnvConfig<string>): Promise<BrokerAdapter> {
    if (this.closed) throw new BrokerError('PUBLISH_FAILED', 'the broker module is shut down');
    // A context per adapter type (the module's own Logger is kept for the registry's lines).
    const logger = createAdapterLogger(adapterLogContext(env.type), `[${brokerTag}/${env.slug}]`);
    // Another env's settings could be absent at startup: they must be whole now.
    validateEnvConnection(brokerTag, env, this.registered);
    let adapter: BrokerAdapter;
    try {
      adapter = createAdapter(env, { brokerTag, envSlug: env.slug, logger, shutdownTimeoutMs: this.shutdownTimeoutMs }, this.registered);
    } catch (error) {
      // The redacted text only, no cause: a factory's own error may hold the config it was given (a URL with its password, say).
      throw new BrokerError('CONFIG_INVALID', `broker '${brokerTag}' env '${env.slug}' (${env.type}): ${describeError(error)}`);
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
