import type { Channel, Options } from 'amqplib';
import type { RabbitMqEnvConfig } from '../../interfaces/broker-options.interface';
import { singleFlight } from '../../support/single-flight';
import { withTimeout } from '../../support/with-timeout';
import type { AdapterLogger } from '../broker-adapter';
import { deadLetterQueue, groupQueue, topicExchange } from './rabbitmq-names';

/** A delay queue idle this much longer than its delay is removed by the broker. */
const DELAY_QUEUE_IDLE_MS = 60_000;
/** Delay queues remembered as declared; beyond this, the stale ones are forgotten (declared again on use). */
const MAX_REMEMBERED_DELAY_QUEUES = 1000;

type TopologySettings = Required<Pick<RabbitMqEnvConfig['config'], 'queueType' | 'publishTimeoutMs'>>;

/** Runs work on a short-lived channel, waiting at most `waitMs` for a connection. */
export type WithChannel = <T>(work: (channel: Channel) => Promise<T>, waitMs: number) => Promise<T>;

/**
 * What exists on the RabbitMQ broker, per physical topic `T`: a durable fanout exchange `T`; per
 * subscription group `G` a durable queue `T:G` bound to it and a dead-letter queue
 * `T:G:dead-letters`; retries wait in `T:G:delay-<ms>ms` queues whose message TTL dead-letters
 * them back to `T:G`, and delayed publishes in `T::delay-<ms>ms`, which dead-letters to the
 * exchange (names in rabbitmq-names.ts).
 *
 * What this process has declared is remembered, so the publish path declares nothing most of the
 * time and stays synchronous: the `ensure*` methods return undefined when there is nothing to wait for.
 */
export class RabbitMqTopology {
  private readonly declaredExchanges = new Set<string>();
  private readonly declaring = singleFlight<string, void>();
  /** Delay queue → when this process last declared it (a declare keeps its idle expiry away). */
  private readonly delayQueues = new Map<string, { declaredAt: number; expiresMs: number }>();

  constructor(
    private readonly settings: TopologySettings,
    private readonly withChannel: WithChannel,
    private readonly logger: AdapterLogger,
  ) {}

  /** Declares a group's queues (and its topic's exchange) on a channel; idempotent. */
  async declareGroup(channel: Channel, topic: string, group: string): Promise<void> {
    const exchange = topicExchange(topic);
    const queue = groupQueue(topic, group);
    await channel.assertExchange(exchange, 'fanout', { durable: true });
    this.declaredExchanges.add(exchange);
    await channel.assertQueue(queue, this.queueOptions());
    await channel.bindQueue(queue, exchange, '');
    await channel.assertQueue(deadLetterQueue(topic, group), this.queueOptions());
    this.logger.debug(`declared exchange '${exchange}', queue '${queue}' bound to it, and queue '${deadLetterQueue(topic, group)}'`);
  }

  /** undefined when the exchange is known to exist (the hot path stays synchronous). */
  ensureExchange(exchange: string, deadline: number): Promise<void> | undefined {
    if (this.declaredExchanges.has(exchange)) return undefined;
    const declared = this.declaring.run(`exchange ${exchange}`, async () => {
      await this.withChannel((channel) => channel.assertExchange(exchange, 'fanout', { durable: true }), this.settings.publishTimeoutMs);
      this.declaredExchanges.add(exchange);
      this.logger.debug(`declared exchange '${exchange}'`);
    });
    return beforeDeadline(declared, deadline, `declaring exchange '${exchange}'`);
  }

  /**
   * A delay queue's TTL holds its messages back, then RabbitMQ dead-letters them to `target`. The
   * queue removes itself once idle, so one-off delays do not pile up; every sender declares it
   * again well before that. undefined when it was declared recently enough.
   */
  ensureDelayQueue(queue: string, delayMs: number, target: { exchange: string; routingKey?: string }, deadline: number): Promise<void> | undefined {
    const expiresMs = 2 * delayMs + DELAY_QUEUE_IDLE_MS;
    const known = this.delayQueues.get(queue);
    if (known && Date.now() - known.declaredAt < expiresMs / 4) return undefined;
    const declared = this.declaring.run(`queue ${queue}`, async () => {
      const deadLetter: Record<string, unknown> = { 'x-dead-letter-exchange': target.exchange };
      if (target.routingKey !== undefined) deadLetter['x-dead-letter-routing-key'] = target.routingKey;
      // Quorum queues dead-letter at least once; classic ones may lose the hop if the broker crashes during it.
      const safety = this.settings.queueType === 'quorum' ? { 'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish' } : {};
      const args = { 'x-message-ttl': delayMs, 'x-expires': expiresMs, ...deadLetter, ...safety };
      await this.withChannel((channel) => channel.assertQueue(queue, this.queueOptions(args)), this.settings.publishTimeoutMs);
      this.rememberDelayQueue(queue, expiresMs);
      this.logger.debug(`declared delay queue '${queue}' (${delayMs} ms)`);
    });
    return beforeDeadline(declared, deadline, `declaring queue '${queue}'`);
  }

  /** Forgets a delay queue that turned out to be gone; true when it was remembered. */
  forgetDelayQueue(queue: string): boolean {
    return this.delayQueues.delete(queue);
  }

  /** Forgets every exchange (one was deleted): each is declared again before its next publish. */
  forgetExchanges(): void {
    this.declaredExchanges.clear();
  }

  private queueOptions(extra: Record<string, unknown> = {}): Options.AssertQueue {
    // A classic queue is declared without x-queue-type, as most existing ones were.
    const type = this.settings.queueType === 'quorum' ? { 'x-queue-type': 'quorum' } : {};
    return { durable: true, arguments: { ...type, ...extra } };
  }

  private rememberDelayQueue(queue: string, expiresMs: number): void {
    const now = Date.now();
    this.delayQueues.set(queue, { declaredAt: now, expiresMs });
    if (this.delayQueues.size <= MAX_REMEMBERED_DELAY_QUEUES) return;
    // Forgetting a queue only costs a declare on its next use.
    for (const [name, known] of this.delayQueues) if (now - known.declaredAt >= known.expiresMs / 4) this.delayQueues.delete(name);
  }
}

/** Waits for a shared declaration, but no longer than this caller's own deadline. */
function beforeDeadline(declared: Promise<void>, deadline: number, what: string): Promise<void> {
  const left = deadline - Date.now();
  if (left <= 0) return Promise.reject(new Error(`publish timeout passed while ${what}`));
  return withTimeout(declared, left, () => new Error(`publish timeout passed while ${what} (no connection to RabbitMQ?)`));
}
