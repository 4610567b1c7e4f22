import type { Channel, ChannelModel } from 'amqplib';
import { AmqpConnectionManagerClass, type AmqpConnectionManager } from 'amqp-connection-manager';
import { requiredSetting } from '../../broker-options.validator';
import { BrokerError, describeError } from '../../errors';
import type { RabbitMqEnvConfig } from '../../interfaces/broker-options.interface';
import type {
  AdapterCapabilities,
  AdapterConsumer,
  AdapterHealth,
  AdapterContext,
  AdapterLogger,
  AdapterTopic,
  CompleteBrokerAdapter,
  ConsumeOptions,
  DeliveryListener,
  InboundMessage,
  OutboundMessage,
} from '../broker-adapter';
import { NoGroupWarnings } from '../no-group-warnings';
import { OpenConsumers } from '../open-consumers';
import { RabbitMqConsumer } from './rabbitmq-consumer';
import { inboundMessage, publishOptions, refusedHeader } from './rabbitmq-headers';
import { deadLetterQueue, groupDelayQueue, groupQueue, topicDelayQueue, topicExchange } from './rabbitmq-names';
import { ChannelLostError, RabbitMqPublisher, UnroutableError } from './rabbitmq-publisher';
import { closeChannel } from './rabbitmq-channels';
import { RabbitMqTopology } from './rabbitmq-topology';
import { sleep } from '../../support/sleep';
import { waitAtMost, withTimeout } from '../../support/with-timeout';
import { describeRabbitMq, explainConnectFailure, rabbitMqEndpoint, type ConnectFailure, type RabbitMqEndpoint } from './rabbitmq-connection';

export const RABBITMQ_CAPABILITIES: AdapterCapabilities = {
  fanOut: true,
  // One queue per group with competing consumers and prefetch > 1: RabbitMQ gives no order per key.
  orderingPerKey: false,
  // Delays are held by the broker, in TTL queues that dead-letter back (no plugin needed).
  nativeDelay: true,
  nativeDeadLetters: true,
  // A mandatory publish to a topic's exchange comes back when no group's queue is bound to it.
  detectsNoGroup: true,
};

export const RABBITMQ_DEFAULTS = {
  publishTimeoutMs: 30_000,
  connectTimeoutMs: 10_000,
  reconnectDelayMs: 1000,
  heartbeatSeconds: 10,
  queueType: 'classic',
} as const;

const CONNECTION_POLL_MS = 50;
/** amqp-connection-manager's close() can wait for ever on a connection that dropped meanwhile. */
const MANAGER_CLOSE_WAIT_MS = 3000;
/**
 * Under `whenNoGroup: 'accept'`, one publish per topic in this long is sent `mandatory`, to learn
 * from its return that the topic has no group (the warning comes at most this often anyway).
 * `mandatory` on every publish only bought that warning, for about 3 % of publish throughput
 * (12,079 against 12,515 msg/s, broker 72.5 against 69 µs per message; 2026-12-04, 6 rounds).
 */
const NO_GROUP_PROBE_INTERVAL_MS = 60_000;
/** Topics whose last probe is remembered; beyond it the memory is cleared (probes then come sooner). */
const MAX_PROBED_TOPICS = 10_000;
/** A connection failure of the cause last logged is logged again after this long (both connections share it). */
const CONNECT_FAILURE_LOG_INTERVAL_MS = 30_000;
const MAX_LOGGED_FAILURE_REASONS = 20;
/** A first connection with no answer yet (no failure either: a host that drops packets) is logged after this long. */
const SLOW_CONNECT_LOG_MS = 2000;

interface SendOptions {
  /** Returned by the broker when nothing takes it, rather than dropped. */
  mandatory: boolean;
  /** Declares what the target needs (cached; undefined when done). */
  prepare?: () => Promise<void> | undefined;
  /** A publish to a topic's exchange: a return means the topic has no group. */
  noGroup?: { topic: string; reject: boolean };
}

type Settings = Required<Omit<RabbitMqEnvConfig['config'], 'url' | 'socketOptions'>> & Pick<RabbitMqEnvConfig['config'], 'socketOptions'> & { url: string };

/**
 * RabbitMQ through amqplib and amqp-connection-manager. What exists on the broker (exchanges,
 * group queues, dead-letter and delay queues) is declared by RabbitMqTopology
 * (rabbitmq-topology.ts). Messages are persistent; every publish is confirmed.
 *
 * Publishing and consuming use separate connections, as RabbitMQ advises: a broker that blocks
 * publishers (memory or disk alarm) stops reading their connection, and consumers' acks must
 * still get through so queues can drain.
 */
export class RabbitMqAdapter implements CompleteBrokerAdapter {
  readonly capabilities = RABBITMQ_CAPABILITIES;
  private readonly settings: Settings;
  /** Where the adapter connects, without credentials: for logs and errors. */
  readonly endpoint: string;
  /** The endpoint's host, port, vhost and user: for connection failures. */
  private readonly target: RabbitMqEndpoint;
  /** Until connect() resolves, a refused login or vhost ends it at once; later, reconnects go on. */
  private firstConnectionDone = false;
  /** Connection failures logged since the last connect, by reason, and when: a repeat is not logged every attempt. */
  private readonly failuresLogged = new Map<string, number>();
  private publishing?: AmqpConnectionManager;
  private consuming?: AmqpConnectionManager;
  private publisher?: RabbitMqPublisher;
  private readonly consumers = new OpenConsumers();
  private readonly topology: RabbitMqTopology;
  /** Topic → when its last mandatory publish was sent, under `whenNoGroup: 'accept'`. */
  private readonly probedAt = new Map<string, number>();
  private readonly noGroup: NoGroupWarnings;
  private closing = false;

  constructor(
    config: RabbitMqEnvConfig['config'],
    private readonly logger: AdapterLogger,
    envSlug = '?',
  ) {
    this.noGroup = new NoGroupWarnings(logger, envSlug);
    const url = requiredSetting(config.url, 'url');
    this.settings = {
      url,
      publishTimeoutMs: config.publishTimeoutMs ?? RABBITMQ_DEFAULTS.publishTimeoutMs,
      connectTimeoutMs: config.connectTimeoutMs ?? RABBITMQ_DEFAULTS.connectTimeoutMs,
      reconnectDelayMs: config.reconnectDelayMs ?? RABBITMQ_DEFAULTS.reconnectDelayMs,
      heartbeatSeconds: config.heartbeatSeconds ?? RABBITMQ_DEFAULTS.heartbeatSeconds,
      queueType: config.queueType ?? RABBITMQ_DEFAULTS.queueType,
      // TCP_NODELAY, as RabbitMQ's own clients and server set it: amqplib leaves Nagle's algorithm on,
      // which holds a lone small frame back; measured in bench/, median latency 1.2 -> 0.8 ms.
      socketOptions: { ...config.socketOptions, noDelay: config.socketOptions?.noDelay ?? true },
    };
    this.target = rabbitMqEndpoint(url);
    this.endpoint = this.target.address;
    this.topology = new RabbitMqTopology(this.settings, (work, waitMs) => this.withChannel(work, waitMs), this.logger);
  }

  health(): AdapterHealth {
    const down = (['publishing', 'consuming'] as const).filter((name) => !this[name]?.isConnected());
    if (this.closing) return { up: false, reason: 'closed' };
    return down.length === 0 ? { up: true } : { up: false, reason: `${down.join(' and ')} connection to ${this.endpoint} not open (reconnecting)` };
  }

  async connect(): Promise<void> {
    this.publishing = this.createManager('publishing');
    this.consuming = this.createManager('consuming');
    // A host that drops packets fails no attempt for a long while: say what is being waited for.
    const slow = setTimeout(() => {
      if (this.failuresLogged.size > 0 || this.closing) return;
      this.logger.warn(
        `no answer yet from ${describeRabbitMq(this.target)}; still trying (startup gives up after connectTimeoutMs, ${this.settings.connectTimeoutMs} ms)`,
      );
    }, SLOW_CONNECT_LOG_MS);
    slow.unref();
    try {
      await Promise.all([this.waitForFirstConnection(this.publishing), this.waitForFirstConnection(this.consuming)]);
    } finally {
      clearTimeout(slow);
    }
    this.firstConnectionDone = true;
    this.logger.log(`connected to ${describeRabbitMq(this.target)}`);
    this.publisher = new RabbitMqPublisher(this.publishing, this.settings.publishTimeoutMs, this.logger, (error) => {
      // A deleted exchange closes the publisher's channel (404): declare again before the next send.
      if (error.code === 404) {
        this.topology.forgetExchanges();
        this.probedAt.clear();
      }
    });
  }

  /**
   * To the topic's exchange (declared first if this process has not yet). With no group's queue
   * bound, the broker takes the message and drops it: the publish resolves, with a warning when
   * the broker said so (a mandatory probe's return); under `whenNoGroup: 'reject'` every publish is
   * mandatory and a return fails it. A delayed publish waits in a delay queue, which always takes
   * it: whether a group exists is only known when it is due, and a topic with none drops it then.
   */
  publish(topic: AdapterTopic, message: OutboundMessage): Promise<void> {
    const refused = refusedHeader(message.headers);
    if (refused !== undefined) return Promise.reject(new BrokerError('INVALID_MESSAGE', refused));
    const deadline = Date.now() + this.settings.publishTimeoutMs;
    const exchange = topicExchange(topic.name);
    const delayMs = wholeDelay(message.delayMs);
    if (delayMs > 0) {
      const queue = topicDelayQueue(topic.name, delayMs);
      // The delay queue dead-letters to the exchange: both must exist.
      return this.send('', queue, message, deadline, {
        mandatory: true,
        prepare: () => andThen(this.topology.ensureExchange(exchange, deadline), () => this.topology.ensureDelayQueue(queue, delayMs, { exchange }, deadline)),
      });
    }
    const reject = topic.whenNoGroup === 'reject';
    return this.send(exchange, '', message, deadline, {
      mandatory: reject || this.probeNoGroup(topic.name),
      prepare: () => this.topology.ensureExchange(exchange, deadline),
      noGroup: { topic: topic.name, reject },
    });
  }

  sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    const deadline = Date.now() + this.settings.publishTimeoutMs;
    const queue = groupQueue(topic.name, group);
    const delayMs = wholeDelay(message.delayMs);
    // Mandatory: a group queue or delay queue that is gone must fail the send, not drop the message.
    if (delayMs > 0) {
      const delayQueue = groupDelayQueue(topic.name, group, delayMs);
      return this.send('', delayQueue, message, deadline, {
        mandatory: true,
        prepare: () => this.topology.ensureDelayQueue(delayQueue, delayMs, { exchange: '', routingKey: queue }, deadline),
      });
    }
    return this.send('', queue, message, deadline, { mandatory: true });
  }

  sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    const deadline = Date.now() + this.settings.publishTimeoutMs;
    return this.send('', deadLetterQueue(topic.name, group), message, deadline, { mandatory: true });
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
          await visit(inboundMessage(message));
        } catch (error) {
          channel.nack(message, false, true);
          throw error;
        }
        // Removed only now that its copy is confirmed in the group's queue.
        channel.ack(message);
        removed++;
      }
      return removed;
    }, this.settings.connectTimeoutMs);
  }

  async consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> {
    const manager = this.requireConnected(this.consuming);
    const queue = options.source === 'messages' ? groupQueue(topic.name, options.group) : deadLetterQueue(topic.name, options.group);
    const consumer = new RabbitMqConsumer(
      manager,
      {
        queue,
        concurrency: options.concurrency,
        declare: (channel) => this.topology.declareGroup(channel, topic.name, options.group),
        listener,
        attachTimeoutMs: this.settings.connectTimeoutMs,
      },
      this.logger,
    );
    await consumer.start();
    return this.consumers.adopt(consumer, 'RabbitMQ', this.logger, `queue '${queue}' (group '${options.group}', concurrency ${options.concurrency})`);
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.consumers.closeAll();
    await this.publisher?.close();
    const managers = [this.publishing, this.consuming].filter((manager) => manager !== undefined);
    await Promise.all(managers.map((manager) => closeManager(manager)));
  }

  private createManager(role: 'publishing' | 'consuming'): AmqpConnectionManager {
    const { url, heartbeatSeconds, reconnectDelayMs, socketOptions } = this.settings;
    const manager = new AmqpConnectionManagerClass([url], {
      heartbeatIntervalInSeconds: heartbeatSeconds,
      reconnectTimeInSeconds: reconnectDelayMs / 1000,
      connectionOptions: socketOptions,
    });
    // The events carry the URL; only the endpoint, which has no credentials, is ever logged.
    let disconnectedAt: number | undefined;
    manager.on('connect', () => {
      this.failuresLogged.clear();
      if (disconnectedAt !== undefined) this.logger.log(`${role} connection to RabbitMQ at ${this.endpoint} is back after ${Date.now() - disconnectedAt} ms`);
      disconnectedAt = undefined;
    });
    manager.on('disconnect', ({ err }: { err?: Error }) => {
      if (this.closing) return;
      disconnectedAt ??= Date.now();
      this.logger.warn(`${role} connection to RabbitMQ at ${this.endpoint} lost (${describeError(err)}); reconnecting every ${reconnectDelayMs} ms`);
    });
    manager.on('connectFailed', ({ err }: { err: Error }) => {
      if (!this.closing) this.logConnectFailure(explainConnectFailure(err, this.target));
    });
    manager.on('blocked', ({ reason }: { reason: string }) => this.logger.warn(`RabbitMQ at ${this.endpoint} blocks publishing: ${reason}`));
    manager.on('unblocked', () => this.logger.log(`RabbitMQ at ${this.endpoint} accepts publishing again`));
    return manager;
  }

  /**
   * Logs a failed connection attempt at once, naming the endpoint (never a credential), and a
   * reason already logged again only after CONNECT_FAILURE_LOG_INTERVAL_MS: the two connections
   * fail alike, reconnects come every reconnectDelayMs, and causes may alternate (a reset, a close).
   */
  private logConnectFailure(failure: ConnectFailure): void {
    const now = Date.now();
    const loggedAt = this.failuresLogged.get(failure.reason);
    if (loggedAt !== undefined && now - loggedAt < CONNECT_FAILURE_LOG_INTERVAL_MS) return;
    // Reasons are few (the system's messages name one address); the bound only guards the unforeseen.
    if (this.failuresLogged.size >= MAX_LOGGED_FAILURE_REASONS) this.failuresLogged.clear();
    this.failuresLogged.set(failure.reason, now);
    const { reconnectDelayMs, connectTimeoutMs } = this.settings;
    // Before the first connection a refusal ends startup; after it, reconnects go on whatever the cause.
    const next = !this.firstConnectionDone
      ? failure.refused
        ? ''
        : `; retrying every ${reconnectDelayMs} ms (startup gives up after connectTimeoutMs, ${connectTimeoutMs} ms)`
      : `; retrying every ${reconnectDelayMs} ms`;
    const line = `cannot connect to ${describeRabbitMq(this.target)}: ${failure.reason}${next}`;
    if (failure.refused) this.logger.error(line);
    else this.logger.warn(line);
  }

  /**
   * Waits for a manager's first connection. A refused login or vhost fails it at once (retrying
   * the same URL cannot help); anything else is retried until connectTimeoutMs.
   */
  private async waitForFirstConnection(manager: AmqpConnectionManager): Promise<void> {
    const { connectTimeoutMs, reconnectDelayMs } = this.settings;
    const where = describeRabbitMq(this.target);
    let lastFailure: ConnectFailure | undefined;
    const refusal = (failure: ConnectFailure) => new Error(`cannot connect to ${where}: ${failure.reason}`);
    let onFailure: (event: { err: Error }) => void = () => undefined;
    const refused = new Promise<never>((_, reject) => {
      onFailure = ({ err }) => {
        lastFailure = explainConnectFailure(err, this.target);
        if (lastFailure.refused) reject(refusal(lastFailure));
      };
    });
    manager.on('connectFailed', onFailure);
    const timedOut = (): Error => {
      const why = lastFailure ? `; last attempt: ${lastFailure.reason}` : ': no attempt was answered';
      return new Error(`cannot connect to ${where} within ${connectTimeoutMs} ms (connectTimeoutMs), retrying every ${reconnectDelayMs} ms${why}`);
    };
    // Without amqp-connection-manager's own timeout: its timer outlives a failure it does not
    // know as one (a refused vhost), holding the process for the rest of connectTimeoutMs.
    // It rejects by itself only on a refused login, which onFailure has explained first.
    const connected = manager.connect().catch((error: unknown) => {
      throw lastFailure?.refused ? refusal(lastFailure) : error;
    });
    try {
      await withTimeout(Promise.race([connected, refused]), connectTimeoutMs, timedOut);
    } finally {
      manager.removeListener('connectFailed', onFailure);
      // Those that lost the race must not reject unheard.
      for (const pending of [connected, refused]) pending.catch(() => undefined);
    }
  }

  /**
   * Publishes through the confirm channel until the broker confirms, `deadline` passes, or it
   * refuses. A message whose channel closed before its confirm is sent again: a duplicate at
   * worst, never a loss.
   */
  private async send(exchange: string, routingKey: string, message: OutboundMessage, deadline: number, how: SendOptions): Promise<void> {
    const publisher = this.requirePublisher();
    const content = typeof message.body === 'string' ? Buffer.from(message.body) : message.body;
    const options = publishOptions(message, how.mandatory);
    const { prepare, noGroup } = how;
    let rerouted = false;
    let brokerRefusals = 0;
    for (;;) {
      const prepared = prepare?.();
      if (prepared) await prepared;
      try {
        return await publisher.publish(exchange, routingKey, content, options, deadline);
      } catch (error) {
        if (error instanceof ChannelLostError && !this.closing) {
          // A channel the broker itself closed may have been closed by this very message (too
          // large, say): sent again only once, so it cannot keep killing the channel of every publish.
          if (error.brokerError && ++brokerRefusals > 1) {
            throw new Error(`RabbitMQ closed the publishing channel twice while this message was in flight: ${describeError(error.brokerError)}`);
          }
          if (Date.now() < deadline) {
            // A deleted exchange (404) is declared again, without its bindings: the resend probes for a group.
            if (noGroup && !options.mandatory) options.mandatory = this.probeNoGroup(noGroup.topic);
            continue;
          }
          throw new Error(`the connection to RabbitMQ at ${this.endpoint} dropped before the broker confirmed the message, and the publish timeout passed`);
        }
        if (error instanceof UnroutableError && noGroup) {
          // The exchange has no queue bound: the topic has no group. The broker took the message and dropped it.
          if (noGroup.reject) throw this.noGroup.error(noGroup.topic);
          this.noGroup.warn(noGroup.topic);
          return;
        }
        // A delay queue that expired or was deleted since this process declared it: declare it again, once.
        if (error instanceof UnroutableError && prepare && !rerouted && Date.now() < deadline && this.topology.forgetDelayQueue(routingKey)) {
          rerouted = true;
          continue;
        }
        throw error;
      }
    }
  }

  /** Whether this publish to `topic` is the one sent mandatory in its interval (under `whenNoGroup: 'accept'`). */
  private probeNoGroup(topic: string): boolean {
    const now = Date.now();
    const last = this.probedAt.get(topic);
    if (last !== undefined && now - last < NO_GROUP_PROBE_INTERVAL_MS) return false;
    if (this.probedAt.size >= MAX_PROBED_TOPICS) this.probedAt.clear();
    this.probedAt.set(topic, now);
    return true;
  }

  /** A short-lived channel on the consuming connection, for declarations and dead-letter reads. */
  private async withChannel<T>(work: (channel: Channel) => Promise<T>, waitMs: number): Promise<T> {
    const channel = await this.openChannel(waitMs);
    try {
      return await work(channel);
    } finally {
      void closeChannel(channel);
    }
  }

  private async openChannel(waitMs: number): Promise<Channel> {
    const manager = this.requireConnected(this.consuming);
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
      if (Date.now() >= deadline) throw new Error(`no connection to RabbitMQ at ${this.endpoint} within ${waitMs} ms`);
      await sleep(CONNECTION_POLL_MS);
    }
  }

  private requireConnected(manager: AmqpConnectionManager | undefined): AmqpConnectionManager {
    if (!manager || this.closing) throw new Error('the RabbitMQ adapter is not connected');
    return manager;
  }

  private requirePublisher(): RabbitMqPublisher {
    if (!this.publisher || this.closing) throw new Error('the RabbitMQ adapter is not connected');
    return this.publisher;
  }
}

/** Runs `next` after `first`, staying synchronous (undefined) when neither has anything to wait for. */
function andThen(first: Promise<void> | undefined, next: () => Promise<void> | undefined): Promise<void> | undefined {
  return first ? first.then(() => next()) : next();
}

/**
 * Closes a connection manager. Its close() never settles while it waits to retry a failed
 * connect, nor when the connection drops during the close; it stops its retries at once, though,
 * and a connection it opens afterwards is closed on arrival.
 */
async function closeManager(manager: AmqpConnectionManager): Promise<void> {
  manager.once('connect', ({ connection }: { connection: ChannelModel }) => void connection.close().catch(() => undefined));
  await waitAtMost(
    manager.close().catch(() => undefined),
    manager.isConnected() ? MANAGER_CLOSE_WAIT_MS : 0,
  );
}

/** RabbitMQ TTLs are whole milliseconds. */
function wholeDelay(delayMs: number | undefined): number {
  return delayMs !== undefined && delayMs > 0 ? Math.ceil(delayMs) : 0;
}

/** `amqp://host:port/vhost`, without user or password. */
export function describeEndpoint(url: string): string {
  return rabbitMqEndpoint(url).address;
}

export function createRabbitMqAdapter(config: RabbitMqEnvConfig['config'], context: AdapterContext): CompleteBrokerAdapter {
  return new RabbitMqAdapter(config, context.logger, context.envSlug);
}
