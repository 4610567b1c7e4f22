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
   * Upper bound, in ms, for closing an application whose handler is stuck past shutdownTimeoutMs
   * (default 1500): it shows close does not wait for the handler. A client that leaves a consumer
   * group on close (Kafka) needs a few round trips more, more still on a loaded machine.
   */
  closeWithinMs?: number;
  /**
   * Tests this target's test broker cannot pass although the real broker would, by title, with
   * the reason: skipped with the reason printed. Only for a stand-in (a mock), never to hide a defect.
   */
  knownLimitations?: Readonly<Record<string, string>>;
}
