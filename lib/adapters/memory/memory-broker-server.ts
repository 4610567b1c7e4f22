import type { AdapterLogger } from '../broker-adapter';
import { MemoryQueue, type MemoryMessage, type MemoryQueueHooks } from './memory-queue';

export interface MemoryBrokerLimits {
  maxQueueLength: number;
  maxUnroutedPerTopic: number;
  maxDeadLettersPerGroup: number;
}

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
}

interface MemoryTopic {
  readonly groups: Map<string, MemoryGroup>;
  /** Messages published before any group subscribed; handed to the first group that does. */
  readonly unrouted: MemoryMessage[];
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
      onListenerError: (error) => this.logger?.error(`memory broker: a delivery listener failed: ${String(error)}`),
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
   * Delivers to every group of the topic, or keeps it until the first group subscribes. The limits
   * are the publisher's: each module instance sharing a server keeps the bounds it configured.
   */
  publish(topicName: string, message: MemoryMessage, delayMs = 0, limits = DEFAULT_MEMORY_LIMITS): void {
    const topic = this.topic(topicName);
    for (const [name, group] of topic.groups) this.assertRoom(topicName, name, group, limits);
    this.stats.published++;
    this.later(delayMs, () => this.route(topicName, topic, message, limits));
  }

  sendToGroup(topicName: string, group: string, message: MemoryMessage, delayMs = 0, limits = DEFAULT_MEMORY_LIMITS): void {
    const target = this.group(topicName, group);
    this.assertRoom(topicName, group, target, limits);
    this.later(delayMs, () => target.messages.enqueue(message));
  }

  sendToDeadLetters(topicName: string, group: string, message: MemoryMessage, limits = DEFAULT_MEMORY_LIMITS): void {
    const deadLetters = this.group(topicName, group).deadLetters;
    deadLetters.enqueue(message);
    this.stats.deadLettered++;
    if (deadLetters.length > limits.maxDeadLettersPerGroup) {
      deadLetters.dropOldest();
      this.stats.dropped++;
      this.logger?.error(
        `memory broker: dead letters of ${topicName} / ${group} exceed ${limits.maxDeadLettersPerGroup}; the oldest was dropped`,
      );
    }
  }

  /** The group's queue, created (and given the topic's unrouted messages) on first use. */
  queue(topicName: string, group: string, source: 'messages' | 'dead-letters'): MemoryQueue {
    const entry = this.group(topicName, group);
    return source === 'messages' ? entry.messages : entry.deadLetters;
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
    this.publish(topicName, { body, headers, messageId: `raw-${this.stats.published}` });
  }

  clearTimers(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private route(topicName: string, topic: MemoryTopic, message: MemoryMessage, limits: MemoryBrokerLimits): void {
    if (topic.groups.size === 0) {
      topic.unrouted.push(message);
      if (topic.unrouted.length > limits.maxUnroutedPerTopic) {
        topic.unrouted.shift();
        this.stats.dropped++;
        this.logger?.warn(
          `memory broker: ${topicName} has no subscriber and holds ${limits.maxUnroutedPerTopic} messages; the oldest was dropped`,
        );
      }
      return;
    }
    for (const group of topic.groups.values()) group.messages.enqueue(message);
  }

  /** Refuses, before anything is enqueued, a message that a full queue could not take. */
  private assertRoom(topicName: string, name: string, group: MemoryGroup, limits: MemoryBrokerLimits): void {
    if (group.messages.length >= limits.maxQueueLength) {
      throw new Error(`memory broker: the queue of ${topicName} / ${name} is full (${limits.maxQueueLength} messages); is its consumer running?`);
    }
  }

  private later(delayMs: number, run: () => void): void {
    if (delayMs <= 0) return run();
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
      topic = { groups: new Map(), unrouted: [] };
      this.topics.set(name, topic);
    }
    return topic;
  }

  private group(topicName: string, groupName: string): MemoryGroup {
    const topic = this.topic(topicName);
    let group = topic.groups.get(groupName);
    if (!group) {
      group = { messages: new MemoryQueue(this.hooks), deadLetters: new MemoryQueue(this.hooks) };
      topic.groups.set(groupName, group);
      for (const message of topic.unrouted.splice(0)) group.messages.enqueue(message);
    }
    return group;
  }
}
