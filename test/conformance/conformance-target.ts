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
  /**
   * Tests this target's test broker cannot pass although the real broker would, by title, with
   * the reason: skipped with the reason printed. Only for a stand-in (a mock), never to hide a defect.
   */
  knownLimitations?: Readonly<Record<string, string>>;
}
