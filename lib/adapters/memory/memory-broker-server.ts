import { describeError } from '../../errors';
import type { AdapterLogger, InboundMetadata } from '../broker-adapter';
import { MemoryQueue, type MemoryMessage, type MemoryQueueHooks } from './memory-queue';

export interface MemoryBrokerLimits {
  maxQueueLength: number;
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
/** A group's full queue is logged at most this often. */
const QUEUE_FULL_LOG_INTERVAL_MS = 60_000;

export const DEFAULT_MEMORY_LIMITS: MemoryBrokerLimits = {
  maxQueueLength: 100_000,
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
  /** When the queue-full error was last logged for this group. */
  fullLoggedAt?: number;
}

interface MemoryTopic {
  readonly groups: Map<string, MemoryGroup>;
  members: number;
  /** Delayed publishes not yet routed, at most maxQueueLength. */
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
   * Delivers to every group subscribed to the topic; with none, the message is accepted and kept
   * by no one (no group created later receives it). A group whose queue is full loses its oldest
   * message, with an error log naming it; the other groups are not affected. The limits are the
   * publisher's: each module instance sharing a server keeps its own bounds. Returns a promise to
   * wait for when a receiving queue holds a backlog and has put its consumers' turn off to the
   * next turn of the event loop (see BACKLOG_BEFORE_CONSUMERS_TURN).
   */
  publish(topicName: string, message: MemoryMessage, delayMs = 0, limits = DEFAULT_MEMORY_LIMITS): Promise<void> | undefined {
    const topic = this.topic(topicName);
    this.stats.published++;
    if (delayMs <= 0) return this.route(topicName, topic, message, limits);
    // Published with no group: no group may receive it, whenever it is due.
    if (topic.members === 0) return undefined;
    if (topic.delayed >= limits.maxQueueLength) {
      this.stats.published--;
      throw new Error(`memory broker: ${topicName} already holds ${limits.maxQueueLength} delayed messages (maxQueueLength)`);
    }
    topic.delayed++;
    this.later(delayMs, () => {
      topic.delayed--;
      void this.route(topicName, topic, message, limits);
    });
    return undefined;
  }

  /** Whether any group has subscribed to the topic (its queue was asked for, as a declare and bind would). */
  hasGroups(topicName: string): boolean {
    return (this.topics.get(topicName)?.members ?? 0) > 0;
  }

  /** To one group only (a retry, a reprocessed dead letter); it does not subscribe the group. */
  sendToGroup(topicName: string, groupName: string, message: MemoryMessage, delayMs = 0, limits = DEFAULT_MEMORY_LIMITS): Promise<void> | undefined {
    const topic = this.topic(topicName);
    const group = this.group(topic, groupName);
    this.assertRoom(topicName, groupName, group, limits);
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
   * to the topic (as declaring and binding a queue would): it gets every message published from then on.
   */
  queue(topicName: string, groupName: string, source: 'messages' | 'dead-letters'): MemoryQueue {
    const topic = this.topic(topicName);
    const group = this.group(topic, groupName);
    if (source === 'dead-letters') return group.deadLetters;
    if (!group.member) {
      group.member = true;
      topic.members++;
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

  /**
   * Publishes bytes that bypass the module, with no metadata: what another producer would send
   * (tests: a foreign or a poison message). `metadata` stands for the broker fields such a producer set.
   */
  publishRaw(topicName: string, body: string | Buffer, headers: Record<string, string> = {}, metadata: InboundMetadata = {}): void {
    void this.publish(topicName, { ...metadata, body, headers, messageId: metadata.id ?? '' });
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
    let turn: Promise<void> | undefined;
    for (const [name, group] of topic.groups) {
      if (!group.member) continue;
      if (group.messages.length + group.delayed >= limits.maxQueueLength) {
        this.stats.dropped++;
        this.queueFull(topicName, name, group, limits);
        // Nothing to drop when retries waiting for their delay fill it: this message is the one lost.
        if (!group.messages.dropOldest()) continue;
      }
      group.messages.enqueue(message);
      turn ??= consumersTurn(group.messages, limits);
    }
    return turn;
  }

  /** A full group's queue, once a minute at most per group: its consumers are gone or too slow. */
  private queueFull(topicName: string, name: string, group: MemoryGroup, limits: MemoryBrokerLimits): void {
    const now = Date.now();
    if (group.fullLoggedAt !== undefined && now - group.fullLoggedAt < QUEUE_FULL_LOG_INTERVAL_MS) return;
    group.fullLoggedAt = now;
    this.logger?.error(
      `memory broker: the queue of ${topicName} / group ${name} is full (${limits.maxQueueLength} messages; is its consumer running?): its oldest messages are dropped; other groups are not affected`,
    );
  }

  /** Refuses, before anything is enqueued, a message that a full queue could not take. */
  private assertRoom(topicName: string, name: string, group: MemoryGroup, limits: MemoryBrokerLimits): void {
    if (group.messages.length + group.delayed >= limits.maxQueueLength) {
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
      topic = { groups: new Map(), members: 0, delayed: 0 };
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
