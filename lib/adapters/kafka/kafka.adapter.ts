import { Kafka, logLevel, Partitioners, type Admin, type ICustomPartitioner, type KafkaConfig, type Message, type Producer, type SASLOptions } from 'kafkajs';
import { requiredSetting } from '../../broker-options.validator';
import { describeError } from '../../errors';
import type { KafkaEnvConfig } from '../../interfaces/broker-options.interface';
import type {
  AdapterCapabilities,
  AdapterConsumer,
  AdapterContext,
  AdapterLogger,
  AdapterTopic,
  CompleteBrokerAdapter,
  ConsumeOptions,
  DeliveryListener,
  InboundMessage,
  OutboundMessage,
} from '../broker-adapter';
import { OpenConsumers } from '../open-consumers';
import { waitAtMost, withTimeout } from '../../support/with-timeout';
import { KafkaSubscription } from './kafka-consumer';
import { checkHeaders, toKafkaMessage } from './kafka-headers';
import { drainKafkaDeadLetters } from './kafka-dead-letters';
import { consumerGroupId, deadLetterGroupId, deadLetterTopic, delayTopic, retryTopic } from './kafka-names';
import { BatchingProducer } from './kafka-producer';
import { KafkaTopology } from './kafka-topology';

export const KAFKA_CAPABILITIES: AdapterCapabilities = {
  fanOut: true,
  // The key picks the partition, and a partition is handled in order.
  orderingPerKey: true,
  // Delays and retries wait in topics on the broker, read by each group when due.
  nativeDelay: true,
  nativeDeadLetters: true,
  // Whether a topic has a consumer group would take a ListGroups and an OffsetFetch per publish
  // (and the mock cluster has no ListGroups): a publish with no group is accepted, and no group
  // created later reads it, since a new group starts at the end of the topic.
  detectsNoGroup: false,
};

export const KAFKA_DEFAULTS = {
  clientId: 'ductape',
  acks: 'all',
  lingerMs: 5,
  maxBatchMessages: 1000,
  maxBatchBytes: 1024 * 1024,
  topicCreation: 'admin',
  numPartitions: 6,
  replicationFactor: -1,
  connectTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  sessionTimeoutMs: 30_000,
  heartbeatIntervalMs: 3000,
  joinWaitMs: 10_000,
  fetchMaxWaitMs: 500,
  publishTimeoutMs: 30_000,
  drainTimeoutMs: 30_000,
} as const;

/**
 * How long close() waits at most for the publishes under way and the subscriptions to stop, and
 * then for the clients to disconnect; within the module's shutdownTimeoutMs when it is shorter
 * (three quarters of it, then a quarter).
 */
export const KAFKA_CLOSE_WAIT_MS = 3000;
export const KAFKA_DISCONNECT_WAIT_MS = 1000;

/** close()'s two waits for a module's shutdownTimeoutMs. */
export function kafkaCloseWaits(shutdownTimeoutMs: number | undefined): { stopMs: number; disconnectMs: number } {
  const budget = shutdownTimeoutMs ?? KAFKA_CLOSE_WAIT_MS + KAFKA_DISCONNECT_WAIT_MS;
  return { stopMs: Math.min(KAFKA_CLOSE_WAIT_MS, Math.floor(budget * 0.75)), disconnectMs: Math.min(KAFKA_DISCONNECT_WAIT_MS, Math.floor(budget * 0.25)) };
}

type Config = KafkaEnvConfig['config'];
type Settings = Required<Omit<Config, 'brokers' | 'ssl' | 'sasl' | 'idempotent'>> & Pick<Config, 'ssl' | 'sasl' | 'idempotent'> & { brokers: string[] };

/**
 * Kafka through kafkajs. What exists on the cluster (topics, consumer groups) is in
 * kafka-topology.ts. A failing message moves to the retry topic with its due time, so the partition it came from goes
 * on; each group reads its retry topic and holds a message until it is due. Records follow the
 * CloudEvents Kafka binding (see kafka-headers.ts): the value is the message's JSON, its metadata
 * in `ce_` headers, the key and the timestamp; retries and dead letters keep the bytes.
 */
export class KafkaAdapter implements CompleteBrokerAdapter {
  readonly capabilities = KAFKA_CAPABILITIES;
  private readonly settings: Settings;
  private readonly kafka: Kafka;
  private producer?: Producer;
  private batching?: BatchingProducer;
  private admin?: Admin;
  private readonly subscriptions = new OpenConsumers();
  private readonly topology: KafkaTopology;
  private closing = false;
  /** Topics with whenNoGroup 'reject' already warned about: Kafka cannot honour it. */
  private readonly rejectWarned = new Set<string>();
  private readonly logger: AdapterLogger;
  private readonly closeWaits: { stopMs: number; disconnectMs: number };
  private readonly envSlug: string;

  constructor(config: Config, context: Pick<AdapterContext, 'logger' | 'envSlug' | 'shutdownTimeoutMs'>) {
    this.logger = context.logger;
    this.closeWaits = kafkaCloseWaits(context.shutdownTimeoutMs);
    this.envSlug = context.envSlug;
    this.settings = {
      brokers: requiredSetting(config.brokers, 'brokers'),
      clientId: config.clientId ?? KAFKA_DEFAULTS.clientId,
      acks: config.acks ?? KAFKA_DEFAULTS.acks,
      lingerMs: config.lingerMs ?? KAFKA_DEFAULTS.lingerMs,
      maxBatchMessages: config.maxBatchMessages ?? KAFKA_DEFAULTS.maxBatchMessages,
      maxBatchBytes: config.maxBatchBytes ?? KAFKA_DEFAULTS.maxBatchBytes,
      topicCreation: config.topicCreation ?? KAFKA_DEFAULTS.topicCreation,
      numPartitions: config.numPartitions ?? KAFKA_DEFAULTS.numPartitions,
      replicationFactor: config.replicationFactor ?? KAFKA_DEFAULTS.replicationFactor,
      connectTimeoutMs: config.connectTimeoutMs ?? KAFKA_DEFAULTS.connectTimeoutMs,
      requestTimeoutMs: config.requestTimeoutMs ?? KAFKA_DEFAULTS.requestTimeoutMs,
      sessionTimeoutMs: config.sessionTimeoutMs ?? KAFKA_DEFAULTS.sessionTimeoutMs,
      heartbeatIntervalMs: config.heartbeatIntervalMs ?? KAFKA_DEFAULTS.heartbeatIntervalMs,
      joinWaitMs: config.joinWaitMs ?? KAFKA_DEFAULTS.joinWaitMs,
      fetchMaxWaitMs: config.fetchMaxWaitMs ?? KAFKA_DEFAULTS.fetchMaxWaitMs,
      publishTimeoutMs: config.publishTimeoutMs ?? KAFKA_DEFAULTS.publishTimeoutMs,
      idempotent: config.idempotent,
      drainTimeoutMs: config.drainTimeoutMs ?? KAFKA_DEFAULTS.drainTimeoutMs,
      ssl: config.ssl,
      sasl: config.sasl,
    };
    const kafkaConfig: KafkaConfig = {
      brokers: this.settings.brokers,
      clientId: this.settings.clientId,
      connectionTimeout: this.settings.connectTimeoutMs,
      requestTimeout: this.settings.requestTimeoutMs,
      ssl: this.settings.ssl as KafkaConfig['ssl'],
      sasl: this.settings.sasl as SASLOptions | undefined,
      // kafkajs logs its own retries loudly; failures reach the caller as errors instead.
      logLevel: logLevel.NOTHING,
    };
    this.kafka = new Kafka(kafkaConfig);
    this.topology = new KafkaTopology(
      this.settings,
      () => this.requireAdmin(),
      () => this.requireProducer(),
      this.logger,
    );
  }

  /** The brokers, for errors: host:port only, never SASL credentials. */
  get endpoint(): string {
    return this.settings.brokers.join(',');
  }

  async connect(): Promise<void> {
    this.admin = this.kafka.admin();
    try {
      await this.admin.connect();
    } catch (error) {
      throw new Error(`cannot connect to Kafka at ${this.endpoint}: ${describeError(error)}`);
    }
    const idempotent = await this.connectProducer();
    this.batching = new BatchingProducer(this.requireProducer(), {
      acks: this.settings.acks === 'all' ? -1 : 1,
      lingerMs: this.settings.lingerMs,
      maxBatchMessages: this.settings.maxBatchMessages,
      maxBatchBytes: this.settings.maxBatchBytes,
      publishTimeoutMs: this.settings.publishTimeoutMs,
      maxInFlight: idempotent ? 1 : Number.MAX_SAFE_INTEGER,
    });
    this.logger.log(`connected to Kafka at ${this.endpoint}`);
  }

  /**
   * The producer: idempotent by default with acks 'all' (the broker drops a retried produce it
   * already wrote, so a retry never duplicates). A broker that cannot give it a producer id (an
   * old or partial Kafka-protocol broker) gets a plain producer, with a warning, unless
   * `idempotent: true` was asked for. Resolves whether the producer is idempotent.
   */
  private async connectProducer(): Promise<boolean> {
    const allowAutoTopicCreation = this.settings.topicCreation !== 'none';
    const asked = this.settings.idempotent;
    const idempotent = asked ?? this.settings.acks === 'all';
    // kafkajs retries an idempotent producer's request for ever by default: publishTimeoutMs bounds each publish.
    this.producer = this.kafka.producer({ allowAutoTopicCreation, idempotent, createPartitioner: pinnedPartitioner });
    try {
      await this.producer.connect();
      return idempotent;
    } catch (error) {
      if (!idempotent || asked === true) throw new Error(`cannot connect to Kafka at ${this.endpoint}: ${describeError(error)}`);
      await this.producer.disconnect().catch(() => undefined);
      // A plain producer that connects tells that the brokers are there but gave no producer id.
      this.producer = this.kafka.producer({ allowAutoTopicCreation, createPartitioner: pinnedPartitioner });
      try {
        await this.producer.connect();
      } catch (plainError) {
        throw new Error(`cannot connect to Kafka at ${this.endpoint}: ${describeError(plainError)}`);
      }
      this.logger.warn(
        `the Kafka brokers at ${this.endpoint} gave no idempotent producer id (${describeError(error)}); publishing with a plain producer, whose retried requests may write a message twice. Set idempotent: false to silence this`,
      );
      return false;
    }
  }

  publish(topic: AdapterTopic, message: OutboundMessage): Promise<void> {
    const delayed = (message.delayMs ?? 0) > 0;
    const target = delayed ? delayTopic(topic.name) : topic.name;
    try {
      checkHeaders(message.headers);
      if (topic.whenNoGroup === 'reject' && !this.rejectWarned.has(topic.name)) this.warnRejectUnsupported(topic.name);
      const record = toKafkaMessage(message, { dueAt: delayed ? Date.now() + (message.delayMs ?? 0) : undefined, stampPublishedAt: true });
      // The hot path: a topic already known goes straight to the batch, without a promise of its own.
      if (this.topology.isKnown(target)) return this.requireBatching().send(target, record);
      return this.sendCreatingTopic(target, record);
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }

  async sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    // ce_id goes with it: the group reads the retry with the id of the first delivery, whatever its offset.
    await this.sendCreatingTopic(retryTopic(topic.name, group), toKafkaMessage(message, { dueAt: Date.now() + (message.delayMs ?? 0) }));
  }

  async sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    await this.sendCreatingTopic(deadLetterTopic(topic.name, group), toKafkaMessage(message));
  }

  drainDeadLetters(topic: AdapterTopic, group: string, limit: number, visit: (record: InboundMessage) => Promise<void>): Promise<number> {
    return drainKafkaDeadLetters(this.kafka, this.topology, this.settings, this.logger, { topic: topic.name, group, limit, visit });
  }

  async consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> {
    const { group } = options;
    const messages = options.source === 'messages';
    const topics = messages ? [topic.name, delayTopic(topic.name), retryTopic(topic.name, group)] : [deadLetterTopic(topic.name, group)];
    const groupId = messages ? consumerGroupId(topic.name, group) : deadLetterGroupId(topic.name, group);
    await this.topology.ensureTopics(topics);
    // A new group starts at the end, as a new queue does: it gets what is published from now on.
    // Dead letters are kept from the start: a dead-letter subscription reads those already there.
    const startAt = messages ? await this.topology.endsOfUncommitted(groupId, topics) : new Map<string, bigint>();
    const create = () => new KafkaSubscription(
      this.kafka,
      {
        groupId,
        topics,
        dueTopics: new Set(messages ? topics.slice(1) : []),
        concurrency: options.concurrency,
        listener,
        sessionTimeoutMs: this.settings.sessionTimeoutMs,
        heartbeatIntervalMs: this.settings.heartbeatIntervalMs,
        joinWaitMs: this.settings.joinWaitMs,
        fetchMaxWaitMs: this.settings.fetchMaxWaitMs,
        closeWaits: this.closeWaits,
        startAt,
        committedOffsets: (topicNames) => this.topology.committedOffsets(groupId, topicNames),
      },
      this.logger,
    );
    let subscription = create();
    for (let attempt = 1; ; attempt++) {
      try {
        await subscription.start();
        break;
      } catch (error) {
        await subscription.close();
        // A join that kafkajs gave up on (a rebalance that moved on without it, say) gets one more try.
        if (attempt >= 2 || this.closing) {
          throw new Error(`cannot start consumer group '${groupId}' on Kafka at ${this.endpoint}: ${describeError(error)}`);
        }
        this.logger.warn(`starting consumer group '${groupId}' failed (${describeError(error)}); trying once more`);
        subscription = create();
      }
    }
    return this.subscriptions.adopt(subscription, 'Kafka', this.logger, `topics ${topics.map((name) => `'${name}'`).join(', ')} (consumer group '${groupId}', concurrency ${options.concurrency})`);
  }

  async close(): Promise<void> {
    this.closing = true;
    // Neither waits for the brokers longer than KAFKA_CLOSE_WAIT_MS (the subscriptions then disconnect).
    await Promise.all([this.subscriptions.closeAll(), this.batching?.close(this.closeWaits.stopMs)]);
    const clients = [this.producer, this.admin].filter((client) => client !== undefined);
    await waitAtMost(Promise.all(clients.map((client) => client.disconnect().catch(() => undefined))), this.closeWaits.disconnectMs);
  }

  /**
   * whenNoGroup 'reject' asks to fail a publish to a topic no group reads yet; Kafka cannot tell
   * that cheaply (see KAFKA_CAPABILITIES). Refusing every publish would make the topic unusable
   * here while it works in other envs of the same broker, so the publish goes on, and the setting
   * is named once per topic rather than ignored in silence.
   */
  private warnRejectUnsupported(topic: string): void {
    this.rejectWarned.add(topic);
    this.logger.warn(
      `topic '${topic}' [${this.envSlug}] has whenNoGroup: 'reject', which Kafka cannot honour: the adapter cannot tell cheaply whether a consumer group reads the topic, so publishes are accepted with or without a group (a group gets what is published after it first subscribed; none created later gets earlier messages). Warned once per topic`,
    );
  }

  /** Creates the topic if needed, then sends; the whole within publishTimeoutMs. */
  private async sendCreatingTopic(target: string, record: Message): Promise<void> {
    const timeoutMs = this.settings.publishTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    if (!this.topology.isKnown(target)) {
      await withTimeout(
        this.topology.ensureTopics([target]),
        timeoutMs,
        () => new Error(`topic '${target}' could not be created or found within ${timeoutMs} ms (publishTimeoutMs); the Kafka brokers at ${this.endpoint} may be unreachable`),
      );
    }
    await this.requireBatching().send(target, record, deadline);
  }

  private requireProducer(): Producer {
    if (!this.producer || this.closing) throw new Error('the Kafka adapter is not connected');
    return this.producer;
  }

  private requireBatching(): BatchingProducer {
    if (!this.batching || this.closing) throw new Error('the Kafka adapter is not connected');
    return this.batching;
  }

  private requireAdmin(): Admin {
    if (!this.admin || this.closing) throw new Error('the Kafka adapter is not connected');
    return this.admin;
  }
}

/**
 * kafkajs's default partitioner (murmur2 of the key, as the Java client; round robin without a
 * key), with the partition it chose kept on the record. kafkajs picks the partitions again on
 * every retry of a request: a keyless record then went to another partition, so an idempotent
 * producer's retry no longer matched the request the broker had written (OUT_OF_ORDER_SEQUENCE_NUMBER),
 * and a plain one's re-send went elsewhere. Pinned, a retry is the same request.
 */
const pinnedPartitioner: ICustomPartitioner = () => {
  const choose = Partitioners.DefaultPartitioner();
  return (args) => {
    const partition = choose(args);
    args.message.partition ??= partition;
    return partition;
  };
};

export function createKafkaAdapter(config: Config, context: AdapterContext): CompleteBrokerAdapter {
  return new KafkaAdapter(config, context);
}
