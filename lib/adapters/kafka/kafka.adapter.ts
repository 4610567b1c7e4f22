import { Kafka, logLevel, type Admin, type KafkaConfig, type Producer, type SASLOptions } from 'kafkajs';
import { requiredSetting } from '../../broker-options.validator';
import { describeError } from '../../errors';
import type { KafkaEnvConfig } from '../../interfaces/broker-options.interface';
import type {
  AdapterCapabilities,
  AdapterConsumer,
  AdapterContext,
  AdapterLogger,
  AdapterTopic,
  BrokerAdapter,
  ConsumeOptions,
  DeliveryListener,
  InboundMessage,
  OutboundMessage,
} from '../broker-adapter';
import { OpenConsumers } from '../open-consumers';
import { KafkaSubscription } from './kafka-consumer';
import { checkHeaders, fromKafkaMessage, toKafkaMessage } from './kafka-headers';
import { consumerGroupId, deadLetterGroupId, deadLetterTopic, delayTopic, retryTopic } from './kafka-names';
import { BatchingProducer } from './kafka-producer';

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
  maxBatchMessages: 500,
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
} as const;

type Config = KafkaEnvConfig['config'];
type Settings = Required<Omit<Config, 'brokers' | 'ssl' | 'sasl'>> & Pick<Config, 'ssl' | 'sasl'> & { brokers: string[] };

/** How long reprocessDeadLetters waits for its reader to join and read. */
const DRAIN_TIMEOUT_MS = 30_000;

/**
 * Kafka through kafkajs. Per physical topic T: the topic T, `T.delay` for publishes with
 * `delayMs`, and per subscription group G the consumer group `T:G`, a retry topic `T.G.retry` and
 * a dead-letter topic `T.G.dead-letters` (read by the consumer group `T:G:dead-letters`). A
 * failing message moves to the retry topic with its due time, so the partition it came from goes
 * on; each group reads its retry topic and holds a message until it is due. Records follow the
 * CloudEvents Kafka binding (see kafka-headers.ts): the value is the message's JSON, its metadata
 * in `ce_` headers, the key and the timestamp; retries and dead letters keep the bytes.
 */
export class KafkaAdapter implements BrokerAdapter {
  readonly capabilities = KAFKA_CAPABILITIES;
  private readonly settings: Settings;
  private readonly kafka: Kafka;
  private producer?: Producer;
  private batching?: BatchingProducer;
  private admin?: Admin;
  private readonly subscriptions = new OpenConsumers();
  private readonly knownTopics = new Set<string>();
  private readonly creating = new Map<string, Promise<void>>();
  /** Set when the admin API could not create a topic (a mock cluster, restricted ACLs): auto-creation from then on. */
  private adminCreationFailed = false;
  private closing = false;
  /** Topics with whenNoGroup 'reject' already warned about: Kafka cannot honour it. */
  private readonly rejectWarned = new Set<string>();
  private readonly logger: AdapterLogger;
  private readonly envSlug: string;

  constructor(config: Config, context: Pick<AdapterContext, 'logger' | 'envSlug'>) {
    this.logger = context.logger;
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
  }

  /** The brokers, for errors: host:port only, never SASL credentials. */
  get endpoint(): string {
    return this.settings.brokers.join(',');
  }

  async connect(): Promise<void> {
    this.producer = this.kafka.producer({ allowAutoTopicCreation: this.settings.topicCreation !== 'none' });
    this.admin = this.kafka.admin();
    try {
      await Promise.all([this.producer.connect(), this.admin.connect()]);
    } catch (error) {
      throw new Error(`cannot connect to Kafka at ${this.endpoint}: ${describeError(error)}`);
    }
    this.batching = new BatchingProducer(this.producer, {
      acks: this.settings.acks === 'all' ? -1 : 1,
      lingerMs: this.settings.lingerMs,
      maxBatchMessages: this.settings.maxBatchMessages,
      maxBatchBytes: this.settings.maxBatchBytes,
    });
  }

  publish(topic: AdapterTopic, message: OutboundMessage): Promise<void> {
    const delayed = (message.delayMs ?? 0) > 0;
    const target = delayed ? delayTopic(topic.name) : topic.name;
    try {
      checkHeaders(message.headers);
      if (topic.whenNoGroup === 'reject' && !this.rejectWarned.has(topic.name)) this.warnRejectUnsupported(topic.name);
      const record = toKafkaMessage(message, { dueAt: delayed ? Date.now() + (message.delayMs ?? 0) : undefined, stampPublishedAt: true });
      // The hot path: a topic already known goes straight to the batch, without a promise of its own.
      if (this.knownTopics.has(target)) return this.requireBatching().send(target, record);
      return this.ensureTopics([target]).then(() => this.requireBatching().send(target, record));
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }

  async sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    const target = retryTopic(topic.name, group);
    await this.ensureTopics([target]);
    // ce_id goes with it: the group reads the retry with the id of the first delivery, whatever its offset.
    await this.requireBatching().send(target, toKafkaMessage(message, { dueAt: Date.now() + (message.delayMs ?? 0) }));
  }

  async sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    const target = deadLetterTopic(topic.name, group);
    await this.ensureTopics([target]);
    await this.requireBatching().send(target, toKafkaMessage(message));
  }

  /**
   * Reads the group's dead letters as the consumer group `T:G:dead-letters` (the one a dead-letter
   * subscription uses), so a dead letter counts as removed once that group's offset passed it.
   * Kafka lets one reader own a partition: this refuses while a dead-letter subscription runs.
   */
  async drainDeadLetters(topic: AdapterTopic, group: string, limit: number, visit: (record: InboundMessage) => Promise<void>): Promise<number> {
    const admin = this.requireAdmin();
    const source = deadLetterTopic(topic.name, group);
    const groupId = deadLetterGroupId(topic.name, group);
    await this.ensureTopics([source]);
    if (await this.hasMembers(groupId)) {
      throw new Error(`the dead letters of '${group}' are being consumed (consumer group '${groupId}'); stop that subscription to reprocess them`);
    }
    // What the group had when the call started: from its committed offset up to the end now.
    const ends = new Map((await admin.fetchTopicOffsets(source)).map((p) => [p.partition, { high: BigInt(p.high), low: BigInt(p.low) }]));
    const [committed] = await admin.fetchOffsets({ groupId, topics: [source] });
    const remaining = new Map<number, bigint>();
    for (const [partition, { high, low }] of ends) {
      const entry = committed?.partitions.find((p) => p.partition === partition);
      const from = entry && entry.offset !== '-1' ? BigInt(entry.offset) : low;
      if (high > from) remaining.set(partition, high);
    }
    if (remaining.size === 0 || limit <= 0) return 0;
    let visited = 0;
    let failure: unknown;
    let finish: () => void = () => undefined;
    const finished = new Promise<void>((resolve) => (finish = resolve));
    const consumer = this.kafka.consumer({
      groupId,
      sessionTimeout: this.settings.sessionTimeoutMs,
      heartbeatInterval: this.settings.heartbeatIntervalMs,
      maxWaitTimeInMs: this.settings.fetchMaxWaitMs,
      allowAutoTopicCreation: false,
    });
    await consumer.connect();
    try {
      await consumer.subscribe({ topics: [source], fromBeginning: true });
      await consumer.run({
        eachBatchAutoResolve: false,
        partitionsConsumedConcurrently: 1,
        eachBatch: async (payload) => {
          const { batch } = payload;
          const end = remaining.get(batch.partition);
          let moved = 0;
          let drained = false;
          for (const message of batch.messages) {
            if (failure !== undefined || visited + moved >= limit || end === undefined || BigInt(message.offset) >= end) break;
            try {
              await visit({ ...fromKafkaMessage(batch.topic, batch.partition, message), raw: message });
            } catch (error) {
              failure = error;
              break;
            }
            payload.resolveOffset(message.offset);
            moved++;
            if (BigInt(message.offset) + 1n >= end) drained = true;
          }
          try {
            await payload.commitOffsetsIfNecessary(payload.uncommittedOffsets());
            // Counted as removed only once the group's offset has passed them.
            visited += moved;
            if (drained) remaining.delete(batch.partition);
          } catch (error) {
            failure = error;
          }
          if (failure !== undefined || visited >= limit || remaining.size === 0) finish();
        },
      });
      const timedOut = await Promise.race([finished.then(() => false), sleep(DRAIN_TIMEOUT_MS).then(() => true)]);
      if (timedOut && failure === undefined) this.logger.warn(`reprocessing the dead letters of '${group}' stopped after ${DRAIN_TIMEOUT_MS} ms with ${visited} moved`);
    } finally {
      await consumer.disconnect().catch(() => undefined);
    }
    if (failure !== undefined) throw failure instanceof Error ? failure : new Error(describeError(failure));
    return visited;
  }

  async consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> {
    const { group } = options;
    const messages = options.source === 'messages';
    const topics = messages ? [topic.name, delayTopic(topic.name), retryTopic(topic.name, group)] : [deadLetterTopic(topic.name, group)];
    const groupId = messages ? consumerGroupId(topic.name, group) : deadLetterGroupId(topic.name, group);
    await this.ensureTopics(topics);
    // A new group starts at the end, as a new queue does: it gets what is published from now on.
    // Dead letters are kept from the start: a dead-letter subscription reads those already there.
    const startAt = messages ? await this.endsOfUncommitted(groupId, topics) : new Map<string, bigint>();
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
        startAt,
        committedOffsets: async (topicNames) => {
          const result = new Map<string, string>();
          for (const { topic: name, partitions } of await this.requireAdmin().fetchOffsets({ groupId, topics: topicNames })) {
            for (const { partition, offset } of partitions) result.set(`${name}:${partition}`, offset);
          }
          return result;
        },
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
    return this.subscriptions.adopt(subscription, 'Kafka');
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.subscriptions.closeAll();
    await this.batching?.drain();
    const clients = [this.producer, this.admin].filter((client) => client !== undefined);
    await Promise.all(clients.map((client) => client.disconnect().catch(() => undefined)));
  }

  /**
   * For topics where the group has committed nothing yet: each partition's end offset now, keyed
   * `topic:partition`. The subscription passes over what lies before it (and commits that), so a
   * new group starts now and nothing published after subscribe resolves is missed. (The admin API's setOffsets would do
   * the same, but needs DescribeGroups, which not every Kafka-protocol broker offers.)
   */
  private async endsOfUncommitted(groupId: string, topics: string[]): Promise<Map<string, bigint>> {
    const admin = this.requireAdmin();
    const startAt = new Map<string, bigint>();
    for (const { topic, partitions } of await admin.fetchOffsets({ groupId, topics })) {
      // A group that committed on some partition of the topic is not new there: its other
      // partitions had nothing for it yet, and start at their beginning.
      if (partitions.some((p) => p.offset !== '-1')) continue;
      for (const { partition, high } of await admin.fetchTopicOffsets(topic)) startAt.set(`${topic}:${partition}`, BigInt(high));
    }
    return startAt;
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

  /** Whether a consumer group has members now; unknown (false) where the broker lacks DescribeGroups. */
  private async hasMembers(groupId: string): Promise<boolean> {
    try {
      const [description] = (await this.requireAdmin().describeGroups([groupId])).groups;
      return description !== undefined && description.members.length > 0;
    } catch {
      return false;
    }
  }

  /** Makes sure topics exist: through the admin API, or by the broker's auto-creation. */
  private async ensureTopics(topics: string[]): Promise<void> {
    const missing = topics.filter((topic) => !this.knownTopics.has(topic));
    if (missing.length === 0) return;
    await Promise.all(
      missing.map((topic) => {
        let creating = this.creating.get(topic);
        if (!creating) {
          creating = this.createTopic(topic).finally(() => this.creating.delete(topic));
          creating.catch(() => undefined);
          this.creating.set(topic, creating);
        }
        return creating;
      }),
    );
  }

  private async createTopic(topic: string): Promise<void> {
    const admin = this.requireAdmin();
    const { topicCreation, numPartitions, replicationFactor } = this.settings;
    if (topicCreation === 'admin' && !this.adminCreationFailed) {
      try {
        await admin.createTopics({ topics: [{ topic, numPartitions, replicationFactor }], waitForLeaders: true });
        this.knownTopics.add(topic);
        return;
      } catch (error) {
        this.adminCreationFailed = true;
        this.logger.warn(`creating topics with the Kafka admin API failed (${describeError(error)}); relying on the brokers' auto-creation from now on`);
      }
    }
    // With topicCreation 'none' the topic must exist already, and this fails if it does not.
    // Otherwise a metadata request that allows auto-creation makes a broker with
    // auto.create.topics.enable create it. kafkajs's admin never allows it (its Metadata requests
    // say allowAutoTopicCreation: false); the producer does, and a send of no messages asks for
    // the topic's metadata and produces nothing.
    const producer = this.requireProducer();
    await withRetries<unknown>(() => (topicCreation === 'none' ? admin.fetchTopicMetadata({ topics: [topic] }) : producer.send({ topic, messages: [] })), 10);
    this.knownTopics.add(topic);
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

async function withRetries<T>(work: () => Promise<T>, attempts: number): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      if (attempt >= attempts) throw error;
      await sleep(100 * attempt);
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export function createKafkaAdapter(config: Config, context: AdapterContext): BrokerAdapter {
  return new KafkaAdapter(config, context);
}
