import type { BrokerEnvConfig } from '../../lib';

/**
 * Where one broker departs from the others: each documented divergence, as a declared value of a
 * conformance target. The suite tests both sides of every feature (what a target claims holds;
 * what it declares it lacks shows as declared, so a change either way fails), and
 * guarantees-table.spec.ts checks README.md's "Guarantees per broker" table against these values.
 */
export interface ConformanceFeatures {
  /** Every group of a topic gets every message (equals AdapterCapabilities.fanOut). Else a second group fails at subscribe. */
  fanOut: boolean;
  /**
   * Messages of one key reach a group in publish order, handled one at a time (equals
   * AdapterCapabilities.orderingPerKey). Else a group with concurrency > 1 handles one key's
   * messages side by side.
   */
  orderingPerKey: boolean;
  /**
   * A publish to a topic no group has subscribed to yet (the wire-format issue's rule): 'dropped'
   * (it resolves; no group created later receives it) or 'kept' (the topic is the one group's
   * queue: the first consumer gets it).
   */
  noGroupPublish: 'dropped' | 'kept';
  /**
   * `whenNoGroup: 'reject'` on such a publish: 'fails' (PUBLISH_FAILED), 'accepted' (the broker
   * cannot tell cheaply: accepted, with a warning), or 'never-no-group' (the topic is the group).
   */
  whenNoGroupReject: 'fails' | 'accepted' | 'never-no-group';
  /**
   * A delivery that never finished (its process crashed, or shut down with the handler still
   * running) counts as an attempt: the next delivery of that message has `attempt + 1` (SQS's
   * ApproximateReceiveCount), so a message that kills its consumer still reaches the dead letters
   * after maxAttempts. false: it comes again with the same attempt.
   */
  attemptsSurviveCrash: boolean;
  /** The longest `delayMs` a publish takes; one more is INVALID_MESSAGE. */
  maxDelayMs: number;
  /**
   * A delayed message waits behind an earlier one due later (Kafka: a partition of the delay topic
   * is read in order, so a message of the same key due sooner waits for the one before it).
   */
  longDelayHoldsBackShorter: boolean;
  /**
   * While the broker cannot be reached: 'waits' (publish waits for the reconnect, bounded, then
   * PUBLISH_FAILED) or 'rejects' (a publish fails once the client's own retries are spent);
   * 'not-applicable' for a broker in the process.
   */
  publishDuringOutage: 'waits' | 'rejects' | 'not-applicable';
  /**
   * What the broker holds outlives the process that published it: a group's messages published
   * while none of its consumers ran are there for a new process.
   */
  survivesProcessRestart: boolean;
}

/** A server instance a test may restart (or cut off) with messages in flight. */
export interface RestartHook {
  /** What restart() does, for the test's title and report (and what it does not do). */
  what: string;
  /** How many messages the test publishes across the restart (default 2,000). */
  volume?: number;
  /**
   * Set when restart() acts on a server other tests or the user may use (RabbitMQ: the user's own
   * broker): the test runs only under REQUIRE_BROKERS=1 or DUCTAPE_TEST_RESTART_BROKERS=1.
   */
  controlsServer?: string;
  /** A server-side tool restart() needs (rabbitmqctl), probed by global-setup.ts. */
  tool?: string;
  /** Opens the server instance: its env config, its restart, and what closes it. */
  open(): Promise<RestartableServer>;
}

export interface RestartableServer {
  envConfig(slug: string): BrokerEnvConfig;
  /** Takes the server away and brings it back; resolves once it is back. */
  restart(): Promise<void>;
  /** Ends what open() made (a private server, a proxy); never the user's broker. */
  close(): Promise<void>;
}

/** A server of the test's own whose next publish requests fail on demand (a batch, then its resends). */
export interface BatchFailureHook {
  /** Which producer batches, and how its failure is forced. */
  what: string;
  open(): Promise<{ envConfig(slug: string): BrokerEnvConfig; failNextRequests(count: number): void; close(): Promise<void> }>;
}

/** The columns of README.md's guarantees table, each a conformance target's file. */
export const TABLE_COLUMNS = ['memory', 'rabbitmq', 'kafka', 'sqs (queue mode)', 'sqs (fan-out)', 'redis', 'nats'] as const;

/**
 * The rows of the README's table that are declared features: each cell begins with the value the
 * target declares, rendered by `render`; what follows it is free explanation.
 */
export const CHECKED_ROWS: Record<string, (features: ConformanceFeatures) => string> = {
  'fan-out across groups': (f) => yesNo(f.fanOut),
  'ordering per key': (f) => yesNo(f.orderingPerKey),
  'publish before any group subscribed': (f) => (f.noGroupPublish === 'dropped' ? 'dropped' : 'kept'),
  "`whenNoGroup: 'reject'`": (f) => ({ fails: '`PUBLISH_FAILED`', accepted: 'accepted', 'never-no-group': 'n/a' })[f.whenNoGroupReject],
  'longest delay': (f) => formatDuration(f.maxDelayMs),
  'a long delay holds back shorter ones': (f) => yesNo(f.longDelayHoldsBackShorter),
  'an unfinished delivery (crash) counts as an attempt': (f) => yesNo(f.attemptsSurviveCrash),
  'publish while the broker is unreachable': (f) => ({ waits: 'waits', rejects: 'rejects', 'not-applicable': 'n/a' })[f.publishDuringOutage],
  'survives a process restart': (f) => yesNo(f.survivesProcessRestart),
};

/** Rows that explain rather than declare: free text, not checked against the targets. */
export const DESCRIPTIVE_ROWS = ['competing consumers within a group', 'delayed delivery', 'dead letters', 'survives a broker restart'];

function yesNo(value: boolean): string {
  return value ? 'yes' : 'no';
}

/** 2147483647 ms as '24.8 days', 900000 ms as '15 minutes'. */
export function formatDuration(ms: number): string {
  if (ms % 60_000 === 0 && ms < 86_400_000) return `${ms / 60_000} minutes`;
  return `${(ms / 86_400_000).toFixed(1)} days`;
}
