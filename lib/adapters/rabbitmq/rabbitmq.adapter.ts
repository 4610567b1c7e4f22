import type { Channel, ChannelModel, Options } from 'amqplib';
import { AmqpConnectionManagerClass, type AmqpConnectionManager } from 'amqp-connection-manager';
import { describeError } from '../../errors';
import type { RabbitMqEnvConfig } from '../../interfaces/broker-options.interface';
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
import { RabbitMqConsumer } from './rabbitmq-consumer';
import { inboundHeaders } from './rabbitmq-headers';
import { deadLetterQueue, groupDelayQueue, groupQueue, topicDelayQueue, topicExchange } from './rabbitmq-names';
import { RabbitMqPublisher } from './rabbitmq-publisher';

export const RABBITMQ_CAPABILITIES: AdapterCapabilities = {
  fanOut: true,
  // One queue per group with competing consumers and prefetch > 1: RabbitMQ gives no order per key.
  orderingPerKey: false,
  // Delays are held by the broker, in TTL queues that dead-letter back (no plugin needed).
  nativeDelay: true,
  nativeDeadLetters: true,
};

export const RABBITMQ_DEFAULTS = {
  publishTimeoutMs: 30_000,
  connectTimeoutMs: 10_000,
  reconnectDelayMs: 1000,
  heartbeatSeconds: 10,
  queueType: 'classic',
} as const;

/** A delay queue idle this much longer than its delay is removed by the broker. */
const DELAY_QUEUE_IDLE_MS = 60_000;
const CONNECTION_POLL_MS = 50;

type Settings = Required<Omit<RabbitMqEnvConfig['config'], 'socketOptions'>> & Pick<RabbitMqEnvConfig['config'], 'socketOptions'>;

/**
 * RabbitMQ through amqplib and amqp-connection-manager. The topology, per physical topic `T`:
 * a durable fanout exchange `T`; per subscription group `G` a durable queue `T:G` bound to it and
 * a dead-letter queue `T:G:dead-letters`; retries wait in `T:G:delay-<ms>ms` queues whose message
 * TTL dead-letters them back to `T:G`, and delayed publishes in `T::delay-<ms>ms`, which
 * dead-letters to the exchange. Messages are persistent; every publish is confirmed.
 */
export class RabbitMqAdapter implements BrokerAdapter {
  readonly capabilities = RABBITMQ_CAPABILITIES;
  private readonly settings: Settings;
  /** Where the adapter connects, without credentials: for logs and errors. */
  readonly endpoint: string;
  private manager?: AmqpConnectionManager;
  private publisher?: RabbitMqPublisher;
  private readonly consumers = new Set<RabbitMqConsumer>();
  private readonly declaredExchanges = new Set<string>();
  private readonly declaring = new Map<string, Promise<void>>();
  /** Delay queue → when this process last declared it (a declare keeps its idle expiry away). */
  private readonly delayQueues = new Map<string, number>();
  private closing = false;
  private connectedOnce = false;
  private disconnectedAt?: number;
  private lastConnectError?: unknown;

  constructor(
    config: RabbitMqEnvConfig['config'],
    private readonly logger: AdapterLogger,
  ) {
    this.settings = {
      url: config.url,
      publishTimeoutMs: config.publishTimeoutMs ?? RABBITMQ_DEFAULTS.publishTimeoutMs,
      connectTimeoutMs: config.connectTimeoutMs ?? RABBITMQ_DEFAULTS.connectTimeoutMs,
      reconnectDelayMs: config.reconnectDelayMs ?? RABBITMQ_DEFAULTS.reconnectDelayMs,
      heartbeatSeconds: config.heartbeatSeconds ?? RABBITMQ_DEFAULTS.heartbeatSeconds,
      queueType: config.queueType ?? RABBITMQ_DEFAULTS.queueType,
      socketOptions: config.socketOptions,
    };
    this.endpoint = describeEndpoint(config.url);
  }

  async connect(): Promise<void> {
    const { url, heartbeatSeconds, reconnectDelayMs, connectTimeoutMs, socketOptions } = this.settings;
    const manager = new AmqpConnectionManagerClass([url], {
      heartbeatIntervalInSeconds: heartbeatSeconds,
      reconnectTimeInSeconds: reconnectDelayMs / 1000,
      connectionOptions: socketOptions,
    });
    this.manager = manager;
    // The events carry the URL; only the endpoint, which has no credentials, is ever logged.
    manager.on('connect', () => {
      if (this.connectedOnce && this.disconnectedAt !== undefined) {
        this.logger.log(`reconnected to RabbitMQ at ${this.endpoint} after ${Date.now() - this.disconnectedAt} ms`);
      }
      this.connectedOnce = true;
      this.disconnectedAt = undefined;
    });
    manager.on('disconnect', ({ err }: { err?: Error }) => {
      if (this.closing) return;
      this.disconnectedAt ??= Date.now();
      this.logger.warn(`connection to RabbitMQ at ${this.endpoint} lost (${describeError(err)}); reconnecting every ${reconnectDelayMs} ms`);
    });
    manager.on('connectFailed', ({ err }: { err: Error }) => {
      this.lastConnectError = err;
    });
    manager.on('blocked', ({ reason }: { reason: string }) => this.logger.warn(`RabbitMQ at ${this.endpoint} blocks publishing: ${reason}`));
    manager.on('unblocked', () => this.logger.log(`RabbitMQ at ${this.endpoint} accepts publishing again`));
    try {
      await manager.connect({ timeout: connectTimeoutMs });
    } catch (error) {
      const cause = this.lastConnectError ?? error;
      // A refused login fails at once; anything else was retried until the connect timeout.
      const refused = /ACCESS.REFUSED|403/.test(String((cause as Error | undefined)?.message));
      const when = refused ? 'the login was refused' : `gave up after ${connectTimeoutMs} ms`;
      throw new Error(`cannot connect to RabbitMQ at ${this.endpoint} (${when}): ${describeError(cause)}`);
    }
    this.publisher = new RabbitMqPublisher(manager, this.settings.publishTimeoutMs, this.logger);
  }

  publish(topic: AdapterTopic, message: OutboundMessage): Promise<void> {
    const exchange = topicExchange(topic.name);
    const delayMs = wholeDelay(message.delayMs);
    if (delayMs > 0) {
      return this.sendDelayed(topicDelayQueue(topic.name, delayMs), delayMs, { exchange }, message, () => this.ensureExchange(exchange));
    }
    const declared = this.ensureExchange(exchange);
    if (!declared) return this.requirePublisher().publish(exchange, '', toContent(message.body), publishOptions(message));
    return declared.then(() => this.requirePublisher().publish(exchange, '', toContent(message.body), publishOptions(message)));
  }

  sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    const queue = groupQueue(topic.name, group);
    const delayMs = wholeDelay(message.delayMs);
    if (delayMs > 0) {
      return this.sendDelayed(groupDelayQueue(topic.name, group, delayMs), delayMs, { exchange: '', routingKey: queue }, message);
    }
    return this.requirePublisher().publish('', queue, toContent(message.body), publishOptions(message));
  }

  sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    const options = publishOptions(message);
    delete options.contentType; // a poison body is kept as it came, and may not be JSON
    return this.requirePublisher().publish('', deadLetterQueue(topic.name, group), toContent(message.body), options);
  }

  drainDeadLetters(topic: AdapterTopic, group: string, limit: number, visit: (record: InboundMessage) => Promise<void>): Promise<number> {
    const queue = deadLetterQueue(topic.name, group);
    return this.withChannel(async (channel) => {
      let count: number;
      try {
        ({ messageCount: count } = await channel.checkQueue(queue));
      } catch (error) {
        if ((error as { code?: unknown }).code === 404) return 0; // no group ever consumed: no dead letters
        throw error;
      }
      let removed = 0;
      for (let visited = 0; visited < Math.min(limit, count); visited++) {
        const message = await channel.get(queue, { noAck: false });
        if (message === false) break;
        try {
          await visit({ body: message.content, headers: inboundHeaders(message), raw: message });
        } catch (error) {
          channel.nack(message, false, true);
          throw error;
        }
        // Removed only now that its copy is confirmed in the group's queue.
        channel.ack(message);
        removed++;
      }
      return removed;
    });
  }

  async consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> {
    const manager = this.requireManager();
    const queue = options.source === 'messages' ? groupQueue(topic.name, options.group) : deadLetterQueue(topic.name, options.group);
    const consumer = new RabbitMqConsumer(
      manager,
      {
        queue,
        concurrency: options.concurrency,
        declare: (channel) => this.declareGroup(channel, topic.name, options.group),
        listener,
        attachTimeoutMs: this.settings.connectTimeoutMs,
      },
      this.logger,
    );
    await consumer.start();
    this.consumers.add(consumer);
    return {
      stop: () => consumer.stop(),
      close: async () => {
        this.consumers.delete(consumer);
        await consumer.close();
      },
    };
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all([...this.consumers].map((consumer) => consumer.close()));
    this.consumers.clear();
    await this.publisher?.close();
    const manager = this.manager;
    if (!manager) return;
    if (manager.isConnected()) {
      await manager.close();
      return;
    }
    // amqp-connection-manager's close() never settles while it waits to retry a failed connect;
    // it stops the retries at once, though, and a connect already under way is closed on arrival.
    manager.once('connect', ({ connection }: { connection: ChannelModel }) => void connection.close().catch(() => undefined));
    void manager.close().catch(() => undefined);
  }

  /** Declares a group's queues (and its topic's exchange) on a channel; idempotent. */
  private async declareGroup(channel: Channel, topic: string, group: string): Promise<void> {
    const exchange = topicExchange(topic);
    const queue = groupQueue(topic, group);
    await channel.assertExchange(exchange, 'fanout', { durable: true });
    this.declaredExchanges.add(exchange);
    await channel.assertQueue(queue, this.queueOptions());
    await channel.bindQueue(queue, exchange, '');
    await channel.assertQueue(deadLetterQueue(topic, group), this.queueOptions());
  }

  private queueOptions(extra: Record<string, unknown> = {}): Options.AssertQueue {
    // A classic queue is declared without x-queue-type, as most existing ones were.
    const type = this.settings.queueType === 'quorum' ? { 'x-queue-type': 'quorum' } : {};
    return { durable: true, arguments: { ...type, ...extra } };
  }

  /** undefined when the exchange is known to exist (the hot path stays synchronous). */
  private ensureExchange(exchange: string): Promise<void> | undefined {
    if (this.declaredExchanges.has(exchange)) return undefined;
    return this.once(`exchange ${exchange}`, async () => {
      // On the publish path: a publish made while disconnected waits as long as its timeout allows.
      await this.withChannel((channel) => channel.assertExchange(exchange, 'fanout', { durable: true }), this.settings.publishTimeoutMs);
      this.declaredExchanges.add(exchange);
    });
  }

  /**
   * Sends a message through a delay queue: its TTL holds the message back, then RabbitMQ
   * dead-letters it to `target`. The queue removes itself once idle, so one-off delays do not
   * pile up; every sender declares it again well before that.
   */
  private async sendDelayed(
    queue: string,
    delayMs: number,
    target: { exchange: string; routingKey?: string },
    message: OutboundMessage,
    before?: () => Promise<void> | undefined,
  ): Promise<void> {
    await before?.();
    const expiresMs = 2 * delayMs + DELAY_QUEUE_IDLE_MS;
    const declaredAt = this.delayQueues.get(queue);
    if (declaredAt === undefined || Date.now() - declaredAt > expiresMs / 4) {
      await this.once(`queue ${queue}`, async () => {
        const deadLetter: Record<string, unknown> = { 'x-dead-letter-exchange': target.exchange };
        if (target.routingKey !== undefined) deadLetter['x-dead-letter-routing-key'] = target.routingKey;
        // Quorum queues dead-letter at least once; classic ones may lose the hop if the broker crashes during it.
        const safety = this.settings.queueType === 'quorum' ? { 'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish' } : {};
        await this.withChannel(
          (channel) => channel.assertQueue(queue, this.queueOptions({ 'x-message-ttl': delayMs, 'x-expires': expiresMs, ...deadLetter, ...safety })),
          this.settings.publishTimeoutMs,
        );
        this.delayQueues.set(queue, Date.now());
      });
    }
    await this.requirePublisher().publish('', queue, toContent(message.body), publishOptions(message));
  }

  /** Runs one declaration at a time per name; callers that arrive meanwhile share it. */
  private once(key: string, declare: () => Promise<void>): Promise<void> {
    let pending = this.declaring.get(key);
    if (!pending) {
      pending = declare().finally(() => this.declaring.delete(key));
      this.declaring.set(key, pending);
    }
    return pending;
  }

  /** A short-lived channel for declarations and dead-letter reads, opened once a connection is up. */
  private async withChannel<T>(work: (channel: Channel) => Promise<T>, waitMs = this.settings.connectTimeoutMs): Promise<T> {
    const channel = await this.openChannel(waitMs);
    try {
      return await work(channel);
    } finally {
      await channel.close().catch(() => undefined);
    }
  }

  private async openChannel(waitMs: number): Promise<Channel> {
    const manager = this.requireManager();
    const deadline = Date.now() + waitMs;
    for (;;) {
      if (this.closing) throw new Error('the RabbitMQ adapter is closed');
      const connection = manager.connection;
      if (connection) {
        try {
          const channel = await connection.createChannel();
          // Its failures reject the operation that caused them; amqplib throws on an unheard 'error'.
          channel.on('error', () => undefined);
          return channel;
        } catch (error) {
          if (Date.now() >= deadline) throw error;
        }
      }
      if (Date.now() >= deadline) {
        throw new Error(`no connection to RabbitMQ at ${this.endpoint} within ${waitMs} ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, CONNECTION_POLL_MS));
    }
  }

  private requireManager(): AmqpConnectionManager {
    if (!this.manager || this.closing) throw new Error('the RabbitMQ adapter is not connected');
    return this.manager;
  }

  private requirePublisher(): RabbitMqPublisher {
    if (!this.publisher || this.closing) throw new Error('the RabbitMQ adapter is not connected');
    return this.publisher;
  }
}

function publishOptions(message: OutboundMessage): Options.Publish {
  return {
    persistent: true,
    contentType: 'application/json',
    messageId: message.messageId || undefined,
    correlationId: message.correlationId,
    timestamp: Math.floor(Date.now() / 1000),
    headers: { ...message.headers },
  };
}

function toContent(body: string | Buffer): Buffer {
  return typeof body === 'string' ? Buffer.from(body) : body;
}

/** RabbitMQ TTLs are whole milliseconds. */
function wholeDelay(delayMs: number | undefined): number {
  return delayMs !== undefined && delayMs > 0 ? Math.ceil(delayMs) : 0;
}

/** `amqp://host:port/vhost`, without user or password. */
export function describeEndpoint(url: string): string {
  try {
    const parsed = new URL(url);
    const port = parsed.port || (parsed.protocol === 'amqps:' ? '5671' : '5672');
    const vhost = parsed.pathname && parsed.pathname !== '/' ? parsed.pathname : '';
    return `${parsed.protocol}//${parsed.hostname}:${port}${vhost}`;
  } catch {
    return '(an invalid URL)';
  }
}

export function createRabbitMqAdapter(config: RabbitMqEnvConfig['config'], context: AdapterContext): BrokerAdapter {
  return new RabbitMqAdapter(config, context.logger);
}
