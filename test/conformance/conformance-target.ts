import type { AdapterCapabilities, BrokerEnvConfig } from '../../lib';

/** What the conformance suite needs to know of one adapter. */
export interface ConformanceTarget {
  /** Name of the broker, as test/support/global-setup.ts probes it ('memory' is always there). */
  broker: string;
  capabilities: AdapterCapabilities;
  /**
   * The env config of slug `slug`. Every application the suite creates for one target must reach
   * the same broker (the memory target names a shared server), as replicas of a service would.
   */
  envConfig(slug: string): BrokerEnvConfig;
  /** Sends bytes that are not an envelope straight to a topic, as a foreign producer would. */
  publishRaw(topicName: string, body: Buffer): Promise<void>;
  /** Upper bound for one delivery to arrive, in ms (real brokers with polling need more). */
  deliveryTimeoutMs?: number;
}
