import type { Admin, Producer } from 'kafkajs';
import { describeError } from '../../errors';
import type { KafkaEnvConfig } from '../../interfaces/broker-options.interface';
import { singleFlight } from '../../support/single-flight';
import { sleep } from '../../support/sleep';
import type { AdapterLogger } from '../broker-adapter';

type TopicSettings = Required<Pick<KafkaEnvConfig['config'], 'topicCreation' | 'numPartitions' | 'replicationFactor'>>;

/**
 * What exists on the Kafka cluster for this adapter: topics (made through the admin API or by the
 * brokers' auto-creation), and what the consumer groups have committed.
 *
 * Per physical topic T: the topic T, `T.delay` for publishes with `delayMs`, and per subscription
 * group G the consumer group `T:G`, a retry topic `T.G.retry` and a dead-letter topic
 * `T.G.dead-letters` read by the consumer group `T:G:dead-letters` (names in kafka-names.ts).
 */
export class KafkaTopology {
  private readonly knownTopics = new Set<string>();
  private readonly creating = singleFlight<string, void>();
  /** Set when the admin API could not create a topic (a mock cluster, restricted ACLs): auto-creation from then on. */
  private adminCreationFailed = false;

  constructor(
    private readonly settings: TopicSettings,
    private readonly admin: () => Admin,
    private readonly producer: () => Producer,
    private readonly logger: AdapterLogger,
  ) {}

  /** The topic is known to exist: a publish to it needs no promise of its own. */
  isKnown(topic: string): boolean {
    return this.knownTopics.has(topic);
  }

  /** Makes sure topics exist: through the admin API, or by the broker's auto-creation. */
  async ensureTopics(topics: string[]): Promise<void> {
    const missing = topics.filter((topic) => !this.knownTopics.has(topic));
    if (missing.length === 0) return;
    await Promise.all(missing.map((topic) => this.creating.run(topic, () => this.createTopic(topic))));
  }

  /**
   * For topics where the group has committed nothing yet: each partition's end offset now, keyed
   * `topic:partition`. The subscription passes over what lies before it (and commits that), so a
   * new group starts now and nothing published after subscribe resolves is missed. (The admin API's setOffsets would do
   * the same, but needs DescribeGroups, which not every Kafka-protocol broker offers.)
   */
  async endsOfUncommitted(groupId: string, topics: string[]): Promise<Map<string, bigint>> {
    const admin = this.admin();
    const startAt = new Map<string, bigint>();
    for (const { topic, partitions } of await whileLeadershipSettles(() => admin.fetchOffsets({ groupId, topics }))) {
      // A group that committed on some partition of the topic is not new there: its other
      // partitions had nothing for it yet, and start at their beginning.
      if (partitions.some((p) => p.offset !== '-1')) continue;
      for (const { partition, high } of await topicEnds(admin, topic)) startAt.set(`${topic}:${partition}`, BigInt(high));
    }
    return startAt;
  }

  /** The group's committed offsets now, `topic:partition` → offset ('-1': none). */
  async committedOffsets(groupId: string, topics: string[]): Promise<Map<string, string>> {
    const result = new Map<string, string>();
    for (const { topic, partitions } of await whileLeadershipSettles(() => this.admin().fetchOffsets({ groupId, topics }))) {
      for (const { partition, offset } of partitions) result.set(`${topic}:${partition}`, offset);
    }
    return result;
  }

  /**
   * Per partition of `topic` that still holds messages the group has not committed past: the
   * partition's end offset now.
   */
  async uncommittedEnds(groupId: string, topic: string): Promise<Map<number, bigint>> {
    const admin = this.admin();
    const ends = new Map((await topicEnds(admin, topic)).map((p) => [p.partition, { high: BigInt(p.high), low: BigInt(p.low) }]));
    const [committed] = await whileLeadershipSettles(() => admin.fetchOffsets({ groupId, topics: [topic] }));
    const remaining = new Map<number, bigint>();
    for (const [partition, { high, low }] of ends) {
      const entry = committed?.partitions.find((p) => p.partition === partition);
      const from = entry && entry.offset !== '-1' ? BigInt(entry.offset) : low;
      if (high > from) remaining.set(partition, high);
    }
    return remaining;
  }

  /** Whether a consumer group has members now; unknown (false) where the broker lacks DescribeGroups. */
  async hasMembers(groupId: string): Promise<boolean> {
    try {
      const [description] = (await this.admin().describeGroups([groupId])).groups;
      return description !== undefined && description.members.length > 0;
    } catch {
      return false;
    }
  }

  private async createTopic(topic: string): Promise<void> {
    const admin = this.admin();
    const { topicCreation, numPartitions, replicationFactor } = this.settings;
    if (topicCreation === 'admin' && !this.adminCreationFailed) {
      try {
        const created = await admin.createTopics({ topics: [{ topic, numPartitions, replicationFactor }], waitForLeaders: true });
        this.knownTopics.add(topic);
        if (created) this.logger.debug(`created topic '${topic}' (${numPartitions} partitions, replication factor ${replicationFactor})`);
        return;
      } catch (error) {
        if (isSettlingError(error)) {
          // Created: kafkajs's wait for its leaders met a broker still applying them. Not a reason
          // to give up on the admin API (auto-created topics get the broker's num.partitions).
          await whileLeadershipSettles(() => admin.fetchTopicMetadata({ topics: [topic] }));
          this.knownTopics.add(topic);
          return;
        }
        this.adminCreationFailed = true;
        this.logger.warn(`creating topics with the Kafka admin API failed (${describeError(error)}); relying on the brokers' auto-creation from now on`);
      }
    }
    // With topicCreation 'none' the topic must exist already, and this fails if it does not.
    // Otherwise a metadata request that allows auto-creation makes a broker with
    // auto.create.topics.enable create it. kafkajs's admin never allows it (its Metadata requests
    // say allowAutoTopicCreation: false); the producer does, and a send of no messages asks for
    // the topic's metadata and produces nothing.
    const producer = this.producer();
    await withRetries<unknown>(() => (topicCreation === 'none' ? admin.fetchTopicMetadata({ topics: [topic] }) : producer.send({ topic, messages: [] })), 10);
    this.knownTopics.add(topic);
  }
}

/**
 * Kafka's answers while a new topic's (or the group coordinator's) leadership settles. A KRaft
 * broker answers a ListOffsets for a topic created a moment ago with NOT_LEADER_OR_FOLLOWER until
 * it has applied its own leadership, though createTopics (waitForLeaders) has already resolved,
 * and kafkajs's admin retries only UNKNOWN_TOPIC_OR_PARTITION there: the others are retried here.
 */
const SETTLING_ERRORS = new Set([
  'NOT_LEADER_OR_FOLLOWER',
  'NOT_LEADER_FOR_PARTITION',
  'LEADER_NOT_AVAILABLE',
  'UNKNOWN_TOPIC_OR_PARTITION',
  'NOT_COORDINATOR',
  'NOT_COORDINATOR_FOR_GROUP',
  'COORDINATOR_NOT_AVAILABLE',
  'GROUP_COORDINATOR_NOT_AVAILABLE',
  'COORDINATOR_LOAD_IN_PROGRESS',
  'GROUP_LOAD_IN_PROGRESS',
  'REPLICA_NOT_AVAILABLE',
]);

/** Whether a kafkajs error (or the one it wraps) is a leadership or coordinator still settling. */
export function isSettlingError(error: unknown): boolean {
  // kafkajs's fetchTopicOffsets fails on its own empty ListOffsets answer while a new topic's
  // leadership settles ("Cannot destructure property 'partitions' of 'high.pop(...)'" or 'low'):
  // seen on Kafka 3.9.2 and 4.4.0 right after CreateTopics.
  if (error instanceof TypeError && /property 'partitions' of '(high|low)\.pop/.test(error.message)) return true;
  for (let current = error as { type?: unknown; originalError?: unknown; cause?: unknown } | undefined, depth = 0; current && depth < 4; depth++) {
    if (typeof current.type === 'string' && SETTLING_ERRORS.has(current.type)) return true;
    current = (current.originalError ?? current.cause) as typeof current;
  }
  return false;
}

/**
 * Each partition's offsets (ListOffsets), once the topic's metadata shows every partition with a
 * leader: on a topic created a moment ago kafkajs's fetchTopicOffsets otherwise asked for no
 * partition and failed on its own empty answer (a TypeError).
 */
function topicEnds(admin: Admin, topic: string): ReturnType<Admin['fetchTopicOffsets']> {
  return whileLeadershipSettles(async () => {
    const { topics } = await admin.fetchTopicMetadata({ topics: [topic] });
    const partitions = topics.find((entry) => entry.name === topic)?.partitions ?? [];
    if (partitions.length === 0 || partitions.some((partition) => partition.leader < 0)) {
      throw Object.assign(new Error(`topic '${topic}' has no partition leaders in the metadata yet`), { type: 'LEADER_NOT_AVAILABLE' });
    }
    return admin.fetchTopicOffsets(topic);
  });
}

/** Runs an admin read again while the broker answers that leadership is settling (at most ~5 s). */
export async function whileLeadershipSettles<T>(work: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      if (attempt >= 12 || !isSettlingError(error)) throw error;
      await sleep(Math.min(50 * attempt, 800), { unref: true });
    }
  }
}

async function withRetries<T>(work: () => Promise<T>, attempts: number): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      if (attempt >= attempts) throw error;
      await sleep(100 * attempt, { unref: true });
    }
  }
}
