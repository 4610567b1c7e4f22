import type { AdapterCapabilities, BrokerEnvConfig } from '../../lib';
import type { BatchFailureHook, ConformanceFeatures, RestartHook } from './features';

export type { BatchFailureHook, ConformanceFeatures, RestartHook } from './features';

/** What the conformance suite needs to know of one adapter. */
export interface ConformanceTarget {
  /** Name of the broker, as test/support/global-setup.ts probes it ('memory' is always there). */
  broker: string;
  capabilities: AdapterCapabilities;
  /**
   * Where this broker departs from the others, one value per documented divergence: the suite
   * tests each side (a claim holds; a declared lack shows as declared), and
   * test/conformance/guarantees-table.spec.ts checks README.md's guarantees table against them.
   */
  features: ConformanceFeatures;
  /**
   * A server of this target's that the no-loss test may restart with messages in flight, or why
   * there is none (printed when the test is skipped).
   */
  restart: RestartHook | { notApplicable: string };
  /**
   * What ending this process does to the broker beyond closing its applications (the embedded
   * broker: its shared server is gone), for the process-restart test.
   */
  endProcess?(): void;
  /**
   * A producer of this adapter's that batches publishes, with a server of the test's own on
   * which the next requests can be made to fail; or why the adapter has none (printed on skip).
   */
  batchFailure: BatchFailureHook | { notApplicable: string };
  /**
   * Run the tests of the file concurrently (each closes its own applications): for a broker whose
   * every new consumer group costs seconds (the Kafka mock's 3 s first join), so the file stays
   * under a minute. Tests use fresh topics, so they never see each other's messages.
   */
  concurrentTests?: boolean;
  /**
   * The env config of slug `slug`. Every application the suite creates for one target must reach
   * the same broker (the memory target names a shared server), as replicas of a service would.
   */
  envConfig(slug: string): BrokerEnvConfig;
  /**
   * Sends bytes straight to a topic with the plain client, as a producer that does not use this
   * module would: the body, the application headers given, and none of this module's metadata.
   */
  publishRaw(topicName: string, body: Buffer, headers?: Record<string, string>): Promise<void>;
  /**
   * Starts reading a topic with the plain client, as a consumer that does not use this module
   * would (its own queue, consumer group or subscription), from the messages published after it
   * resolves. Without it, the tests that read our messages with a plain client are skipped, with
   * the reason printed.
   */
  rawReader?(topicName: string): Promise<RawReader>;
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

/** A plain client's reader of one topic. */
export interface RawReader {
  /** The next message, as a plain client reads it; rejects after `timeoutMs` without one. */
  next(timeoutMs: number): Promise<RawRecord>;
  /** Stops reading and deletes what the reader created on the broker. */
  close(): Promise<void>;
}

/** A message as a plain client sees it. */
export interface RawRecord {
  body: Buffer;
  /** The message id where this broker's plain client finds it (AMQP message-id, Kafka `ce_id`, ...). */
  id: string | undefined;
  /** Its headers or attributes, as strings, under the names the broker gives them. */
  headers: Record<string, string>;
}
