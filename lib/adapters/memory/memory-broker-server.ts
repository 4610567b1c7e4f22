import { describeError } from '../../errors';
import type { AdapterLogger } from '../broker-adapter';
import { MemoryQueue, type MemoryMessage, type MemoryQueueHooks } from './memory-queue';

export interface MemoryBrokerLimits {
  maxQueueLength: number;
  maxUnroutedPerTopic: number;
  maxDeadLettersPerGroup: number;
}

/**
 * How many messages a queue may hold, waiting for consumers whose turn was put off to the next
 * turn of the event loop, before a publish to it waits for that turn (half of maxQueueLength when
 * that is smaller). A publisher that only awaits promises (a loop of `await publish()`) never
 * lets the event loop turn: without this wait it kept the consumers starved and filled the queue
 * until publishing failed. Below it, nothing waits: a test that fakes setImmediate still gets its
 * publishes resolved.
 */
const BACKLOG_BEFORE_CONSUMERS_TURN = 1000;

export const DEFAULT_MEMORY_LIMITS: MemoryBrokerLimits = {
  maxQueueLength: 100_000,
  maxUnroutedPerTopic: 1_000,
  maxDeadLettersPerGroup: 10_000,
};

/** Counters of everything the in-memory broker did; tests and the sample app read them. */
export interface MemoryBrokerStats {
  published: number;
  delivered: number;
  acked: number;
  requeued: number;
  deadLettered: number;
  dropped: number;
}

interface MemoryGroup {
  readonly messages: MemoryQueue;
  readonly deadLetters: MemoryQueue;
  /** Subscribed to the topic (a consumer of its messages attached once): gets every message. */
  member: boolean;
  /** Retries and reprocessed dead letters waiting for their delay, counted against maxQueueLength. */
  delayed: number;
}

interface MemoryTopic {
  readonly groups: Map<string, MemoryGroup>;
  members: number;
  /** Messages published before any group subscribed; handed to the first group that does. */
  readonly unrouted: MemoryMessage[];
  /** Delayed publishes not yet routed, counted against every member's maxQueueLength. */
  delayed: number;
}

const sharedServers = new Map<string, MemoryBrokerServer>();

/**
 * The embedded broker: topics, one queue per topic and group (fan-out across groups, competing
 * consumers within one), dead letters per topic and group, delayed delivery. Everything it holds
 * is bounded (see MemoryBrokerLimits) and lives only as long as this process.
 */
export class MemoryBrokerServer {
  readonly stats: MemoryBrokerStats = { published: 0, delivered: 0, acked: 0, requeued: 0, deadLettered: 0, dropped: 0 };
  private readonly topics = new Map<string, MemoryTopic>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly hooks: MemoryQueueHooks;

  constructor(private readonly logger?: AdapterLogger) {
    const stats = this.stats;
    this.hooks = {
      onDelivered: () => stats.delivered++,
      onAcked: () => stats.acked++,
      onRequeued: (count) => (stats.requeued += count),
      onListenerError: (error) => this.logger?.error(`memory broker: a delivery listener failed: ${describeError(error)}`),
    };
  }

  /** The server registered under `name` in this process, created on first use. */
  static shared(name: string, logger?: AdapterLogger): MemoryBrokerServer {
    let server = sharedServers.get(name);
    if (!server) {
      server = new MemoryBrokerServer(logger);
      sharedServers.set(name, server);
    }
    return server;
  }

  /** Forgets a shared server (tests). */
  static deleteShared(name: string): void {
    sharedServers.get(name)?.clearTimers();
    sharedServers.delete(name);
  }

  /**
   * Delivers to every group subscribed to the topic, or keeps it until the first group subscribes.
   * The limits are the publisher's: each module instance sharing a server keeps its own bounds.
   * Returns a promise to wait for when a receiving queue holds a backlog and has put its consumers'
   * turn off to the next turn of the event loop (see BACKLOG_BEFORE_CONSUMERS_TURN).
   */
  publish(topicName: string, message: MemoryMessage, delayMs = 0, limits = DEFAULT_MEMORY_LIMITS): Promise<void> | undefined {
    const topic = this.topic(topicName);
    for (const [name, group] of topic.groups) if (group.member) this.assertRoom(topicName, name, topic, group, limits);
    // With no group to count them against, delayed messages count against the unrouted bound.
    if (delayMs > 0 && topic.members === 0 && topic.delayed >= limits.maxUnroutedPerTopic) {
      throw new Error(
        `memory broker: ${topicName} has no subscriber and already holds ${limits.maxUnroutedPerTopic} delayed messages (maxUnroutedPerTopic)`,
      );
    }
    this.stats.published++;
    if (delayMs <= 0) return this.route(topicName, topic, message, limits);
    topic.delayed++;
    this.later(delayMs, () => {
      topic.delayed--;
      void this.route(topicName, topic, message, limits);
    });
    return undefined;
  }

  /** To one group only (a retry, a reprocessed dead letter); it does not subscribe the group. */
  sendToGroup(topicName: string, groupName: string, message: MemoryMessage, delayMs = 0, limits = DEFAULT_MEMORY_LIMITS): Promise<void> | undefined {
    const topic = this.topic(topicName);
    const group = this.group(topic, groupName);
    this.assertRoom(topicName, groupName, topic, group, limits);
    if (delayMs <= 0) {
      group.messages.enqueue(message);
      return consumersTurn(group.messages, limits);
    }
    group.delayed++;
    this.later(delayMs, () => {
      group.delayed--;
      group.messages.enqueue(message);
    });
    return undefined;
  }

  sendToDeadLetters(topicName: string, groupName: string, message: MemoryMessage, limits = DEFAULT_MEMORY_LIMITS): void {
    const deadLetters = this.group(this.topic(topicName), groupName).deadLetters;
    deadLetters.enqueue(message);
    this.stats.deadLettered++;
    if (deadLetters.length > limits.maxDeadLettersPerGroup && deadLetters.dropOldest()) {
      this.stats.dropped++;
      this.logger?.error(
        `memory broker: dead letters of ${topicName} / ${groupName} exceed ${limits.maxDeadLettersPerGroup}; the oldest was dropped`,
      );
    }
  }

  /**
   * The queue of a group's messages or dead letters. Asking for its messages subscribes the group
   * to the topic (as declaring and binding a queue would); the first one gets the unrouted messages.
   */
  queue(topicName: string, groupName: string, source: 'messages' | 'dead-letters'): MemoryQueue {
    const topic = this.topic(topicName);
    const group = this.group(topic, groupName);
    if (source === 'dead-letters') return group.deadLetters;
    if (!group.member) {
      group.member = true;
      if (topic.members++ === 0) for (const message of topic.unrouted.splice(0)) group.messages.enqueue(message);
    }
    return group.messages;
  }

  /** Messages waiting in a group's queue (not counting those in flight or delayed). */
  depth(topicName: string, group: string): number {
    return this.topics.get(topicName)?.groups.get(group)?.messages.length ?? 0;
  }

  /** Consumers attached to a group's queue (or to its dead letters). */
  consumerCount(topicName: string, group: string, source: 'messages' | 'dead-letters' = 'messages'): number {
    const entry = this.topics.get(topicName)?.groups.get(group);
    return (source === 'messages' ? entry?.messages : entry?.deadLetters)?.consumerCount ?? 0;
  }

  deadLetterCount(topicName: string, group: string): number {
    return this.topics.get(topicName)?.groups.get(group)?.deadLetters.length ?? 0;
  }

  /** Publishes bytes that bypass the module (tests: a poison message from a foreign producer). */
  publishRaw(topicName: string, body: string | Buffer, headers: Record<string, string> = {}): void {
    void this.publish(topicName, { body, headers, messageId: `raw-${this.stats.published}` });
  }

  /** Cancels delayed deliveries (a private server closing with its module); says how many were lost. */
  clearTimers(): void {
    if (this.timers.size > 0) {
      this.logger?.warn(`memory broker: ${this.timers.size} delayed message(s) (retries or delayMs) discarded as the broker closes`);
    }
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private route(topicName: string, topic: MemoryTopic, message: MemoryMessage, limits: MemoryBrokerLimits): Promise<void> | undefined {
    if (topic.members === 0) {
      topic.unrouted.push(message);
      if (topic.unrouted.length > limits.maxUnroutedPerTopic) {
        topic.unrouted.shift();
        this.stats.dropped++;
        this.logger?.warn(
          `memory broker: ${topicName} has no subscriber and holds ${limits.maxUnroutedPerTopic} messages; the oldest was dropped`,
        );
      }
      return undefined;
    }
    let turn: Promise<void> | undefined;
    for (const group of topic.groups.values()) {
      if (!group.member) continue;
      group.messages.enqueue(message);
      turn ??= consumersTurn(group.messages, limits);
    }
    return turn;
  }

  /** Refuses, before anything is enqueued, a message that a full queue could not take. */
  private assertRoom(topicName: string, name: string, topic: MemoryTopic, group: MemoryGroup, limits: MemoryBrokerLimits): void {
    if (group.messages.length + group.delayed + (group.member ? topic.delayed : 0) >= limits.maxQueueLength) {
      throw new Error(`memory broker: the queue of ${topicName} / ${name} is full (${limits.maxQueueLength} messages); is its consumer running?`);
    }
  }

  private later(delayMs: number, run: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      run();
    }, delayMs);
    // A delayed message must not keep the process alive: the memory broker ends with it anyway.
    timer.unref();
    this.timers.add(timer);
  }

  private topic(name: string): MemoryTopic {
    let topic = this.topics.get(name);
    if (!topic) {
      topic = { groups: new Map(), members: 0, unrouted: [], delayed: 0 };
      this.topics.set(name, topic);
    }
    return topic;
  }

  private group(topic: MemoryTopic, name: string): MemoryGroup {
    let group = topic.groups.get(name);
    if (!group) {
      group = { messages: new MemoryQueue(this.hooks), deadLetters: new MemoryQueue(this.hooks), member: false, delayed: 0 };
      topic.groups.set(name, group);
    }
    return group;
  }
}

/** The consumers' turn a publish to `queue` waits for, if its backlog calls for it. */
function consumersTurn(queue: MemoryQueue, limits: MemoryBrokerLimits): Promise<void> | undefined {
  const turn = queue.consumersTurn;
  return turn && queue.length >= Math.min(BACKLOG_BEFORE_CONSUMERS_TURN, Math.ceil(limits.maxQueueLength / 2)) ? turn : undefined;
}
