import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type Redis from 'ioredis';
import { requiredSetting } from '../../broker-options.validator';
import { BrokerError, describeError } from '../../errors';
import type { RedisEnvSettings } from '../../interfaces/broker-options.interface';
import { waitAtMost } from '../../support/with-timeout';
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
import { NoGroupWarnings } from '../no-group-warnings';
import { OpenConsumers } from '../open-consumers';
import { connectClient, createClient, describeRedis, type RedisConnectionSettings } from './redis-connection';
import { RedisConsumer } from './redis-consumer';
import { DelayMover } from './redis-delays';
import { checkHeaders, fromFields, toFields } from './redis-fields';
import { deadLetterStream, groupDelayed, groupStream, topicDelayed, topicStream } from './redis-names';
import { encodeDelayedMember, SCRIPTS } from './redis-scripts';

export const REDIS_CAPABILITIES: AdapterCapabilities = {
  fanOut: true,
  // A group's consumers compete for the stream's entries, each with several in its handlers: no order per key.
  orderingPerKey: false,
  // Delays and retries wait in sorted sets on the server, moved to their stream when due.
  nativeDelay: true,
  nativeDeadLetters: true,
  // One publish per topic per minute (and every one under whenNoGroup: 'reject') is a script that counts the stream's groups.
  detectsNoGroup: true,
};

export const REDIS_DEFAULTS = {
  maxLen: 1_000_000,
  publishTimeoutMs: 30_000,
  connectTimeoutMs: 10_000,
  blockMs: 1000,
  claimIdleMs: 30_000,
  claimIntervalMs: 1000,
  delayPollMs: 250,
} as const;

/** Under whenNoGroup: 'accept', one publish per topic in this long counts the stream's groups, to warn when there are none. */
const NO_GROUP_PROBE_INTERVAL_MS = 60_000;
const MAX_PROBED_TOPICS = 10_000;
/** How long close() waits for the server to answer QUIT before dropping the connection. */
const QUIT_WAIT_MS = 1000;
/** A reader's socket silent this long past blockMs is taken for dead (ioredis socketTimeout). */
const READER_SOCKET_SLACK_MS = 5000;
/** Dead letters read per XRANGE of a drain. */
const DRAIN_PAGE = 100;

type Settings = RedisConnectionSettings & Required<Omit<RedisEnvSettings, 'url' | 'username' | 'password' | 'db' | 'tls'>>;

/**
 * Redis Streams through ioredis. A topic is a stream, published to with XADD (approximately
 * trimmed to maxLen entries); a subscription group is a consumer group on it, created at `$` when
 * the group first subscribes, so it gets what is published from then on; each consumer reads with
 * a blocking XREADGROUP and acks with XACK once the handler is done; a crashed consumer's pending
 * entries are taken over with XAUTOCLAIM. Delayed publishes and retries wait in sorted sets on the
 * server. A group's retries go to a stream of that group's own, read beside the topic's; its dead
 * letters to another. Entries follow the wire format of redis-fields.ts.
 */
export class RedisAdapter implements CompleteBrokerAdapter {
  readonly capabilities = REDIS_CAPABILITIES;
  /** Where the adapter connects, without a password: for logs and errors. */
  readonly endpoint: string;
  private readonly settings: Settings;
  private client?: Redis;
  private readonly consumers = new OpenConsumers();
  private readonly mover: DelayMover;
  private readonly noGroup: NoGroupWarnings;
  private readonly probedAt = new Map<string, number>();
  private closing = false;

  constructor(
    config: RedisEnvSettings,
    private readonly logger: AdapterLogger,
    envSlug = '?',
  ) {
    this.settings = {
      url: requiredSetting(config.url, 'url'),
      username: config.username,
      password: config.password,
      db: config.db,
      tls: config.tls,
      maxLen: config.maxLen ?? REDIS_DEFAULTS.maxLen,
      publishTimeoutMs: config.publishTimeoutMs ?? REDIS_DEFAULTS.publishTimeoutMs,
      connectTimeoutMs: config.connectTimeoutMs ?? REDIS_DEFAULTS.connectTimeoutMs,
      blockMs: config.blockMs ?? REDIS_DEFAULTS.blockMs,
      claimIdleMs: config.claimIdleMs ?? REDIS_DEFAULTS.claimIdleMs,
      claimIntervalMs: config.claimIntervalMs ?? REDIS_DEFAULTS.claimIntervalMs,
      delayPollMs: config.delayPollMs ?? REDIS_DEFAULTS.delayPollMs,
    };
    this.endpoint = describeRedis(this.settings);
    this.noGroup = new NoGroupWarnings(logger, envSlug);
    this.mover = new DelayMover(() => this.requireClient(), this.settings.delayPollMs, logger);
  }

  async connect(): Promise<void> {
    // Publishes, acks, claims and scripts share one connection, pipelined; each blocking read has its own.
    // commandTimeout bounds a command waiting out an outage in the offline queue: publishTimeoutMs.
    // socketTimeout drops a link that went silent (a half-open socket, a lost reply) after as long:
    // nothing here blocks, and a timed-out command stays queued for its reply, so without it every
    // later command would wait on a socket that never answers, or take the reply of the one before.
    this.client = createClient(this.settings, {
      commandTimeout: this.settings.publishTimeoutMs,
      socketTimeout: this.settings.publishTimeoutMs,
      enableAutoPipelining: true,
    });
    let lostAt: number | undefined;
    // Before the first connection a close is a failed attempt: connectClient reports that one.
    let connected = false;
    this.client.on('close', () => {
      if (!connected || this.closing || lostAt !== undefined || this.client?.status === 'connecting') return;
      lostAt = Date.now();
      this.logger.warn(`connection to Redis at ${this.endpoint} lost; reconnecting (publishes wait up to publishTimeoutMs, ${this.settings.publishTimeoutMs} ms)`);
    });
    this.client.on('ready', () => {
      connected = true;
      if (lostAt !== undefined) this.logger.log(`connection to Redis at ${this.endpoint} is back after ${Date.now() - lostAt} ms`);
      lostAt = undefined;
    });
    await connectClient(this.client, this.settings);
    this.logger.log(`connected to Redis at ${this.endpoint}`);
  }

  /**
   * XADD to the topic's stream. With no consumer group on it the entry is kept (trimmed with the
   * rest) but no group created later reads it, as a group starts at the stream's end. A delayed
   * publish waits in the topic's sorted set and goes to the stream when due.
   */
  publish(topic: AdapterTopic, message: OutboundMessage): Promise<void> {
    try {
      checkHeaders(message.headers);
      const stream = topicStream(topic.name);
      const fields = toFields(message);
      const delayMs = wholeDelay(message.delayMs);
      if (delayMs > 0) return this.addDelayed(topicDelayed(topic.name), delayMs, fields);
      const reject = topic.whenNoGroup === 'reject';
      if (reject || this.probeNoGroup(topic.name)) return this.publishCountingGroups(topic.name, stream, fields, reject);
      const { maxLen } = this.settings;
      const sent = maxLen > 0 ? this.requireClient().call('XADD', stream, 'MAXLEN', '~', maxLen, '*', ...fields) : this.requireClient().call('XADD', stream, '*', ...fields);
      return sent.then(RESOLVED, (error: unknown) => this.publishFailed(error));
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }

  async sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    const fields = toFields(message);
    const delayMs = wholeDelay(message.delayMs);
    if (delayMs > 0) return this.addDelayed(groupDelayed(topic.name, group), delayMs, fields);
    await this.requireClient()
      .call('XADD', groupStream(topic.name, group), '*', ...fields)
      .catch((error: unknown) => this.publishFailed(error));
  }

  async sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    // Never trimmed: dead letters leave only when consumed or reprocessed.
    await this.requireClient()
      .call('XADD', deadLetterStream(topic.name, group), '*', ...toFields(message))
      .catch((error: unknown) => this.publishFailed(error));
  }

  async drainDeadLetters(topic: AdapterTopic, group: string, limit: number, visit: (record: InboundMessage) => Promise<void>): Promise<number> {
    const client = this.requireClient();
    const stream = deadLetterStream(topic.name, group);
    // What the group had when the call started: up to its newest entry now.
    const newest = await client.xrevrangeBuffer(stream, '+', '-', 'COUNT', 1);
    if (newest.length === 0 || limit <= 0) return 0;
    const end = newest[0][0].toString();
    let start = '-';
    let removed = 0;
    while (removed < limit) {
      const page = await client.xrangeBuffer(stream, start, end, 'COUNT', Math.min(DRAIN_PAGE, limit - removed));
      if (page.length === 0) break;
      for (const [rawId, fields] of page) {
        const id = rawId.toString();
        await visit({ ...fromFields(stream, id, fields), raw: { stream, id, fields } });
        // Removed only once its copy is in the group's stream.
        await client.xdel(stream, id);
        removed++;
        start = `(${id}`;
      }
    }
    return removed;
  }

  async consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> {
    const { group } = options;
    const messages = options.source === 'messages';
    const main = topicStream(topic.name);
    const copies = groupStream(topic.name, group);
    const deadLetters = deadLetterStream(topic.name, group);
    const streams = messages ? [main, copies] : [deadLetters];
    const ensureGroups = async (again: boolean): Promise<void> => {
      const client = this.requireClient();
      const made: string[] = [];
      if (messages) {
        // The topic's stream from now on (`$`), the rule for a new group; after NOGROUP, all the
        // stream holds (it was made anew since the group read it). The group's copies from the start.
        if (await createGroup(client, main, group, again ? '0' : '$')) made.push(main);
        if (await createGroup(client, copies, group, '0')) made.push(copies);
      } else if (await createGroup(client, deadLetters, group, '0')) {
        made.push(deadLetters);
      }
      if (made.length > 0) this.logger.debug(`created consumer group '${group}' on stream${made.length > 1 ? 's' : ''} ${made.map((name) => `'${name}'`).join(', ')}`);
    };
    try {
      await ensureGroups(false);
    } catch (error) {
      throw new Error(`cannot create consumer group '${group}' on stream '${streams[0]}' at Redis ${this.endpoint}: ${describeError(error)}`);
    }
    // A read answers within blockMs: a socket silent for 5 s beyond it is dead (a peer gone without a
    // reset, a network dropping packets) and is dropped and reconnected, rather than waited on for
    // the minutes TCP takes to notice.
    const reader = createClient(this.settings, { socketTimeout: this.settings.blockMs + READER_SOCKET_SLACK_MS });
    try {
      await connectClient(reader, this.settings);
    } catch (error) {
      reader.disconnect();
      throw error;
    }
    const consumer = new RedisConsumer(
      reader,
      // Not requireClient: a consumer closed by the adapter's close() still acks and hands back on it.
      () => this.connectedClient(),
      {
        streams,
        group,
        consumer: `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`,
        concurrency: options.concurrency,
        blockMs: this.settings.blockMs,
        claimIdleMs: this.settings.claimIdleMs,
        claimIntervalMs: this.settings.claimIntervalMs,
        deleteOnAck: new Set(messages ? [copies] : [deadLetters]),
        ensureGroups,
        listener,
      },
      this.logger,
    );
    try {
      await consumer.start();
    } catch (error) {
      // Its connection would otherwise stay open, reconnecting for ever.
      reader.disconnect();
      throw new Error(`cannot start a consumer of group '${group}' on stream '${streams[0]}' at Redis ${this.endpoint}: ${describeError(error)}`);
    }
    const unwatch = messages
      ? [this.mover.watch(topicDelayed(topic.name), main, this.settings.maxLen), this.mover.watch(groupDelayed(topic.name, group), copies, 0)]
      : [];
    return this.consumers.adopt(
      {
        stop: () => consumer.stop(),
        close: async () => {
          for (const stop of unwatch) stop();
          await consumer.close();
        },
      },
      'Redis',
      this.logger,
      `stream '${streams[0]}' (group '${group}', concurrency ${options.concurrency})`,
    );
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.consumers.closeAll();
    this.mover.close();
    const client = this.client;
    if (!client) return;
    if (client.status !== 'ready') return void client.disconnect();
    const quit = client.quit().catch(() => undefined);
    if (!(await waitAtMost(quit, QUIT_WAIT_MS))) client.disconnect();
  }

  private async addDelayed(zset: string, delayMs: number, fields: (string | Buffer)[]): Promise<void> {
    try {
      await SCRIPTS.addDelayed.run(this.requireClient(), [zset], [delayMs, encodeDelayedMember(fields)]);
    } catch (error) {
      this.publishFailed(error);
    }
    this.mover.nudge(zset, delayMs);
  }

  private async publishCountingGroups(topic: string, stream: string, fields: (string | Buffer)[], reject: boolean): Promise<void> {
    let reply: [number, number];
    try {
      reply = (await SCRIPTS.publishCountingGroups.run(this.requireClient(), [stream], [reject ? '1' : '0', this.settings.maxLen, ...fields])) as [number, number];
    } catch (error) {
      return this.publishFailed(error);
    }
    const [groups] = reply;
    if (groups > 0) return;
    if (reject) throw this.noGroup.error(topic);
    this.noGroup.warn(topic);
  }

  /** Whether this publish to `topic` is the one in its interval that counts the groups (under whenNoGroup: 'accept'). */
  private probeNoGroup(topic: string): boolean {
    const now = Date.now();
    const last = this.probedAt.get(topic);
    if (last !== undefined && now - last < NO_GROUP_PROBE_INTERVAL_MS) return false;
    if (this.probedAt.size >= MAX_PROBED_TOPICS) this.probedAt.clear();
    this.probedAt.set(topic, now);
    return true;
  }

  private publishFailed(error: unknown): never {
    if (error instanceof BrokerError) throw error;
    const text = describeError(error);
    if (/timed out/i.test(text)) {
      throw new Error(
        `Redis at ${this.endpoint} did not accept the message within ${this.settings.publishTimeoutMs} ms (publishTimeoutMs); it may still be written once the connection is back`,
      );
    }
    throw new Error(`Redis at ${this.endpoint} refused the message: ${text}`);
  }

  private connectedClient(): Redis {
    if (!this.client) throw new Error('the Redis adapter is not connected');
    return this.client;
  }

  private requireClient(): Redis {
    if (!this.client || this.closing) throw new Error('the Redis adapter is not connected');
    return this.client;
  }
}

const RESOLVED = (): void => undefined;

/** Creates a consumer group (and its stream), at `start`; one that exists is left as it is. */
/** Resolves true when it made the group, false when the group was there already. */
async function createGroup(client: Redis, stream: string, group: string, start: '$' | '0'): Promise<boolean> {
  try {
    await client.call('XGROUP', 'CREATE', stream, group, start, 'MKSTREAM');
    return true;
  } catch (error) {
    if (!(error instanceof Error) || !error.message.startsWith('BUSYGROUP')) throw error;
    return false;
  }
}

/** Sorted-set scores are whole milliseconds. */
function wholeDelay(delayMs: number | undefined): number {
  return delayMs !== undefined && delayMs > 0 ? Math.ceil(delayMs) : 0;
}

export function createRedisAdapter(config: RedisEnvSettings, context: AdapterContext): CompleteBrokerAdapter {
  return new RedisAdapter(config, context.logger, context.envSlug);
}
