import type { AdapterContext, BrokerAdapter } from '../adapters/broker-adapter';
import type { StandardSchemaV1 } from './standard-schema.interface';

/** How often, and how far apart, a failing handler is tried before its message is dead-lettered. */
export interface RetryPolicy {
  /** Total deliveries, the first included (1 = no retry). */
  maxAttempts: number;
  /** Delay before the second delivery. */
  initialDelayMs: number;
  /** Factor applied to the delay after each failed delivery (default 2). */
  multiplier?: number;
  /** Upper bound of any one delay (default 30000). */
  maxDelayMs?: number;
}

/**
 * What a publish to a topic that no subscription group has subscribed to yet does. 'accept' (the
 * default): it resolves once the broker accepted it, no group created later receives it, and a
 * warning is logged where the broker can tell cheaply. 'reject': it fails with PUBLISH_FAILED
 * where the broker can tell (the strict behaviour of 0.1.0).
 */
export type WhenNoGroup = 'accept' | 'reject';

// Connection settings (a URL, a region, brokers, servers, credentials) accept `undefined`, so a
// config can read them straight from the environment (`url: process.env.RABBITMQ_URL`) under
// `strict`. A process needs only its own env's settings: a missing one there is CONFIG_INVALID at
// startup, and another env's on that env's first use (naming the broker, the env and the field).
// Each type's settings are a named interface, so a wrong field is reported against names
// ("'uri' does not exist in type 'MemoryEnvSettings | RabbitMqEnvSettings | ...'").

/** What every env entry of a broker has, whatever its type. */
export interface BrokerEnvCommon {
  /** The environment slug this entry serves ('dev', 'stg', 'prd', ...). */
  slug: string;
  /** Default for the topics of this broker in this env; a topic's own setting wins (default 'accept'). */
  whenNoGroup?: WhenNoGroup;
}

/** The `config` of a memory env entry. */
export interface MemoryEnvSettings {
  /**
   * Share one in-memory broker between every module instance in this process that names it
   * (two Nest applications in one test, say). Without it, each module instance has its own.
   */
  server?: string;
  /**
   * Messages a subscription group's queue may hold (default 100000); also the most delayed
   * publishes a topic holds at once. A publish to a full queue drops that group's oldest message
   * with an error log naming the group, and still reaches the other groups; a retry into a full
   * queue fails and the delivery is given back.
   */
  maxQueueLength?: number;
  /**
   * @deprecated Ignored since 0.2: a topic that no group has subscribed to keeps no message
   * (see WhenNoGroup), so there is nothing left for it to bound. Still accepted, so configs of 0.1 start.
   */
  maxUnroutedPerTopic?: number;
  /** Dead letters kept per topic and group; beyond it the oldest are dropped with an error log (default 10000). */
  maxDeadLettersPerGroup?: number;
}

/** The embedded broker: in this process only, nothing on disk. */
export interface MemoryEnvConfig extends BrokerEnvCommon {
  type: 'memory';
  config?: MemoryEnvSettings;
}

/** The `config` of a rabbitmq env entry. */
export interface RabbitMqEnvSettings {
  /**
   * `amqp://user:pass@host:5672/vhost` or `amqps://…`; the password never reaches a log or an
   * error. Required; `undefined` (an unset variable) is refused when this env is used.
   */
  url: string | undefined;
  /** How long publish waits for the broker's confirm, through reconnects, before PUBLISH_FAILED (default 30000). */
  publishTimeoutMs?: number;
  /** How long the first connection, and any later wait for one to declare queues, may take (default 10000). */
  connectTimeoutMs?: number;
  /** Pause between reconnect attempts (default 1000). */
  reconnectDelayMs?: number;
  /** AMQP heartbeat: how soon a dead peer is noticed (default 10). */
  heartbeatSeconds?: number;
  /** Type of the group and dead-letter queues (default 'classic'; 'quorum' for replicated queues). */
  queueType?: 'classic' | 'quorum';
  /** Socket and TLS options handed to amqplib (ca, cert, key, servername, ...); `noDelay` defaults to true. */
  socketOptions?: Record<string, unknown>;
}

export interface RabbitMqEnvConfig extends BrokerEnvCommon {
  type: 'rabbitmq';
  config: RabbitMqEnvSettings;
}

/** The `config` of a kafka env entry. */
export interface KafkaEnvSettings {
  /** `host:port` of one or more brokers. Required; `undefined` (an unset variable) is refused when this env is used. */
  brokers: string[] | undefined;
  /** Client id the brokers see (default 'ductape'). */
  clientId?: string;
  /** `true`, or Node.js TLS options; handed to kafkajs. */
  ssl?: unknown;
  /** SASL options handed to kafkajs (`{ mechanism: 'plain' | 'scram-sha-256' | ..., username, password }`); never logged. */
  sasl?: unknown;
  /** Acknowledgement a publish waits for: every in-sync replica ('all', the default) or the leader only. */
  acks?: 'all' | 'leader';
  /**
   * An idempotent producer: the broker drops a retried produce request it already wrote, so a
   * retry never writes a message twice. Default: on with acks 'all' (idempotence needs it), off
   * with 'leader'; where the brokers give no producer id, the adapter falls back to a plain
   * producer with a warning. `true` refuses that fallback (connect fails); `false` never asks.
   * An idempotent producer has one produce request in flight at a time.
   */
  idempotent?: boolean;
  /**
   * How long publish waits for the broker's acknowledgement before PUBLISH_FAILED (default 30000).
   * A publish that timed out may still reach the broker later (kafkajs goes on sending it).
   */
  publishTimeoutMs?: number;
  /** How long a publish waits for others to share its produce request (default 5). */
  lingerMs?: number;
  /** Most messages in one produce request (default 1000). */
  maxBatchMessages?: number;
  /** Most bytes in one produce request (default 1 MiB). */
  maxBatchBytes?: number;
  /**
   * How missing topics are made: 'admin' (default) creates them with the admin API and, if that
   * fails, relies on the brokers' auto-creation from then on; 'auto' relies on auto-creation
   * only; 'none' expects them to exist.
   */
  topicCreation?: 'admin' | 'auto' | 'none';
  /** Partitions of a topic the admin API creates (default 6). */
  numPartitions?: number;
  /** Replication factor of a topic the admin API creates (default -1: the broker's default). */
  replicationFactor?: number;
  /** Connection timeout (default 10000). */
  connectTimeoutMs?: number;
  /** Request timeout (default 30000). */
  requestTimeoutMs?: number;
  /** Consumer-group session timeout (default 30000). */
  sessionTimeoutMs?: number;
  /** Consumer-group heartbeat interval (default 3000). */
  heartbeatIntervalMs?: number;
  /** How long subscribe waits for the group to assign partitions to this member (default 10000). */
  joinWaitMs?: number;
  /** How long a consumer's fetch waits for data (default 500; some Kafka-protocol brokers only answer then). */
  fetchMaxWaitMs?: number;
  /**
   * How long one reprocessDeadLetters may take on this broker, its reader's join included
   * (default 30000). One that stops then rejects with REPROCESS_INCOMPLETE, saying how many moved.
   */
  drainTimeoutMs?: number;
}

export interface KafkaEnvConfig extends BrokerEnvCommon {
  type: 'kafka';
  config: KafkaEnvSettings;
}

/** The `config` of an sqs env entry. */
export interface SqsEnvSettings {
  /** The AWS region ('eu-west-1'). Required; `undefined` (an unset variable) is refused when this env is used. */
  region: string | undefined;
  /** Another SQS/SNS endpoint (a local emulator, a VPC endpoint); default: AWS's own for the region. */
  endpoint?: string | undefined;
  /** Static credentials; without them the AWS SDK's default provider chain is used. Never logged. */
  accessKeyId?: string | undefined;
  secretAccessKey?: string | undefined;
  sessionToken?: string | undefined;
  /**
   * How a topic reaches its groups, unless the topic says otherwise: 'queue' (default) makes the
   * topic one queue whose consumers all compete; 'sns' makes it an SNS topic with one SQS queue
   * per group subscribed to it, so every group gets every message.
   */
  fanout?: 'queue' | 'sns';
  /** FIFO queues (and SNS topics) for every topic, unless the topic says otherwise (default false). */
  fifo?: boolean;
  /** Long-poll wait of each receive, 1 to 20 s (default 10); shutdown waits for an open poll to end rather than cut it. */
  waitTimeSeconds?: number;
  /** Visibility timeout of a received message, extended while its handler runs, 2 to 43200 s (default 30). */
  visibilityTimeoutSeconds?: number;
  /** Longest wait for one SQS or SNS request (long polls excepted: theirs is their wait plus 5 s), retried by the AWS SDK (default 10000). */
  requestTimeoutMs?: number;
  /** Create missing queues, SNS topics and subscriptions on first use (default true); false expects them to exist. */
  createMissing?: boolean;
}

export interface SqsEnvConfig extends BrokerEnvCommon {
  type: 'sqs';
  config: SqsEnvSettings;
}

/** The `config` of a redis env entry (Redis 6.2 or later: Streams with XAUTOCLAIM). */
export interface RedisEnvSettings {
  /**
   * `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS. Required; `undefined` (an
   * unset variable) is refused when this env is used.
   */
  url: string | undefined;
  /** ACL user name (Redis 6+); overrides the URL's. */
  username?: string | undefined;
  /** Password (of `username`, or the `requirepass` one); overrides the URL's. Never logged. */
  password?: string | undefined;
  /** Database number (default: the URL's, else 0). */
  db?: number;
  /** `true`, or Node.js TLS options (`ca`, `cert`, `key`, `servername`, …); a `rediss://` URL turns TLS on by itself. */
  tls?: boolean | Readonly<Record<string, unknown>>;
  /**
   * Approximate most entries kept in each topic's stream (XADD MAXLEN ~; default 1000000; 0 keeps
   * every entry). A group that falls further behind than this loses the oldest entries it has not
   * read: size it for the longest outage of a consumer.
   */
  maxLen?: number;
  /** How long a publish waits for Redis to accept it, reconnects included, before PUBLISH_FAILED (default 30000). */
  publishTimeoutMs?: number;
  /** How long startup (and each new consumer's connection) waits for Redis (default 10000). */
  connectTimeoutMs?: number;
  /** How long one blocking XREADGROUP waits for entries (default 1000); also bounds how late a claim check comes. */
  blockMs?: number;
  /**
   * How long an entry stays pending at a consumer that no longer renews it (a crashed process)
   * before another consumer of the group takes it over with XAUTOCLAIM (default 30000). A running
   * handler renews its entry every claimIdleMs / 3, so a slow handler is not taken over.
   */
  claimIdleMs?: number;
  /** How often each consumer looks for entries to take over (default 1000). */
  claimIntervalMs?: number;
  /** How often the sorted sets of delayed messages and retries are checked at least (default 250). */
  delayPollMs?: number;
}

export interface RedisEnvConfig extends BrokerEnvCommon {
  type: 'redis';
  config: RedisEnvSettings;
}

/** The `config` of a nats env entry. */
export interface NatsEnvSettings {
  /**
   * Server addresses (`nats://host:4222`, `host:4222`, `tls://host:4222`). Required; `undefined`
   * (an unset variable) is refused when this env is used. Credentials in an address are never logged.
   */
  servers: string[] | undefined;
  /** Token authentication: never logged. */
  token?: string | undefined;
  /** User and password authentication: the password is never logged. */
  user?: string | undefined;
  pass?: string | undefined;
  /** TLS: `true` (the system's CAs), or PEM texts or file paths (`ca`, `caFile`, `cert`, `certFile`, `key`, `keyFile`); handed to the nats client. */
  tls?: boolean | NatsTlsSettings;
  /** The client name the server shows (default 'ductape'). */
  name?: string;
  /** How long the first connection may take (default 10000). */
  connectTimeoutMs?: number;
  /** How long publish waits for JetStream's acknowledgement, through reconnects, before PUBLISH_FAILED (default 30000). */
  publishTimeoutMs?: number;
  /** Pause between reconnect attempts (default 1000); reconnects go on for ever. */
  reconnectDelayMs?: number;
  /**
   * The group consumers' ack wait: a delivery whose process died is given to another member after
   * this long (default 30000). A running handler keeps its message for as long as it runs.
   */
  ackWaitMs?: number;
  /** Storage of the streams the adapter creates (default 'file', which survives a server restart). */
  storage?: 'file' | 'memory';
  /** Replicas of the streams the adapter creates, on a cluster (default 1). */
  replicas?: number;
  /**
   * How long a stream the adapter creates keeps a message (default 604800000, 7 days; 0 keeps it
   * until the server's limits): a group whose consumers are all away for longer loses what is older.
   */
  retentionMs?: number;
}

/** TLS settings of a nats env entry (the nats client's TlsOptions). */
export interface NatsTlsSettings {
  ca?: string;
  caFile?: string;
  cert?: string;
  certFile?: string;
  key?: string;
  keyFile?: string;
  /** TLS before the server's INFO (the server must be configured with `handshake_first`). */
  handshakeFirst?: boolean;
}

export interface NatsEnvConfig extends BrokerEnvCommon {
  type: 'nats';
  config: NatsEnvSettings;
}

/** The env entries of the broker types this package knows; discriminated by `type`. */
export type BuiltInBrokerEnvConfig =
  | MemoryEnvConfig
  | RabbitMqEnvConfig
  | KafkaEnvConfig
  | SqsEnvConfig
  | RedisEnvConfig
  | NatsEnvConfig;

/** A broker type this package knows (whether or not this version has its adapter). */
export type BrokerType = BuiltInBrokerEnvConfig['type'];

/** An env entry served by an adapter registered under `type` in `BrokerModuleOptions.adapters`. */
export interface CustomEnvConfig<Type extends string = string> extends BrokerEnvCommon {
  type: Type;
  /**
   * Whatever the registered adapter takes. Checked by the registration's `validate` at startup
   * for the process's own env, and on first use for another env; then given to its factory.
   */
  config?: unknown;
}

/**
 * Which technology and connection serve one environment slug of a broker; discriminated by `type`.
 * `Custom` names the types registered in `adapters` (none by default): a built-in type keeps its
 * own precise `config` type, and cannot be registered.
 */
export type BrokerEnvConfig<Custom extends string = never> =
  | BuiltInBrokerEnvConfig
  | ([Custom] extends [never] ? never : CustomEnvConfig<Exclude<Custom, BrokerType>>);

/**
 * Makes the adapter of a registered broker type for one (broker, env), on that env's first use;
 * `config` is the env entry's `config`, already accepted by the registration's `validate`.
 */
export type BrokerAdapterFactory<Config = unknown> = {
  // Method syntax: a factory may type the config it accepts (its `validate` vouches for it).
  create(config: Config, context: AdapterContext): BrokerAdapter;
}['create'];

/** A registered broker type: its factory, and a check of its env entries' `config`. */
export interface BrokerAdapterRegistration<Config = unknown> {
  create(config: Config, context: AdapterContext): BrokerAdapter;
  /**
   * Returns every problem of an env entry's `config` (empty or nothing when it is fine), each a
   * short sentence that names the field (`'url: must be a string'`); they are reported as
   * CONFIG_INVALID under that entry's path. Never include secret values.
   */
  validate?(config: unknown): readonly string[] | undefined | void;
}

/** What `BrokerModuleOptions.adapters` maps a custom broker type to. */
export type BrokerAdapterDefinition = BrokerAdapterFactory<never> | BrokerAdapterRegistration<never>;

export interface TopicConfig {
  /** The topic part of an event (`new-orders` in `sqsbroker:new-orders`). */
  tag: string;
  /** Physical name on the broker, or one per env slug. Default: `<product>.<env>.<tag>`. */
  name?: string | Record<string, string>;
  /** SQS: an existing queue per environment. */
  queueUrls?: { env_slug: string; url: string }[];
  /** SQS: 'queue' (one queue, competing consumers) or 'sns' (an SNS topic and one queue per group); default: the env's. */
  fanout?: 'queue' | 'sns';
  /** SQS: a FIFO queue (and SNS topic); default: the env's, or true when its queue URL ends in `.fifo`. */
  fifo?: boolean;
  /** Validates the message on publish and on receive. */
  schema?: StandardSchemaV1;
  /** Retry policy of every subscription on this topic, unless the subscription sets its own. */
  retry?: RetryPolicy;
  /** A publish while no group has subscribed to the topic: see WhenNoGroup (default: the env entry's, else 'accept'). */
  whenNoGroup?: WhenNoGroup;
}

export interface BrokerConfig<Custom extends string = never> {
  /** The broker part of an event (`sqsbroker` in `sqsbroker:new-orders`). */
  tag: string;
  envs: BrokerEnvConfig<Custom>[];
  /** When present, only these topic tags are accepted. */
  topics?: TopicConfig[];
}

/** `T`, where TypeScript infers nothing for it (TypeScript 5.4's NoInfer, for older compilers too). */
type InferredElsewhere<T> = [T][T extends unknown ? 0 : never];

/**
 * The module's options. `Custom` names the broker types registered in `adapters`;
 * `DuctapeBrokerModule.forRoot` infers it, and a typed variable spells it
 * (`BrokerModuleOptions<'counting'>`).
 */
export interface BrokerModuleOptions<Custom extends string = never> {
  /** Slug of the environment this process runs in ('dev', 'stg', 'prd', ...). */
  env: string;
  /** This service's product tag; other product tags are refused. */
  product: string;
  /** This service's name, base of consumer-group names (default: product). */
  service?: string;
  // Custom is inferred from `adapters` alone: a built-in type in an env entry must not register it.
  brokers: BrokerConfig<InferredElsewhere<Custom>>[];
  /**
   * Broker types of your own: `{ counting: { create: (config, context) => adapter, validate } }`,
   * then `{ slug: 'dev', type: 'counting', config }` in a broker's envs. A built-in type cannot be
   * registered.
   */
  adapters?: Record<Custom, BrokerAdapterDefinition>;
  /** Default retry policy of every subscription (default: 3 attempts, 1 s, x2, at most 30 s). */
  retry?: RetryPolicy;
  /** How long shutdown waits for in-flight handlers (default 10000). */
  shutdownTimeoutMs?: number;
  /**
   * Whether the @OnBrokerEvent methods are subscribed at bootstrap (default true). `false` starts
   * no consumer: a replica that only publishes (an API behind a load balancer, say) runs the same
   * modules as the workers. `subscribe()` called in code still subscribes.
   */
  registerHandlers?: boolean;
  /**
   * Largest message accepted by publish, in bytes (default 1 MiB): its encoded body plus the
   * headers the caller gave. The trace context headers tracing adds (traceparent, tracestate,
   * baggage) are not counted, so a publish that passes with tracing off passes with it.
   */
  maxMessageBytes?: number;
  /**
   * OpenTelemetry tracing through `@opentelemetry/api` (an optional peer dependency): a PRODUCER
   * span per publish, whose W3C trace context (`traceparent`, `tracestate`) the message carries
   * in its headers, and a CONSUMER span per handler call, its child, active while the handler
   * runs. Default: on when `@opentelemetry/api` can be loaded (spans are recorded only once an
   * SDK is registered); `false` turns it off (nothing injected, nothing recorded); `true`
   * without `@opentelemetry/api` installed is CONFIG_INVALID.
   */
  tracing?: boolean;
}
