import { randomUUID } from 'node:crypto';
import { connect, Events, headers as natsHeaders, type ConnectionOptions, type JetStreamClient, type JetStreamManager, type JsMsg, type MsgHdrs, type NatsConnection } from 'nats';
import { requiredSetting } from '../../broker-options.validator';
import { MAX_TIMER_MS } from '../../constants';
import { BrokerError, describeError, redactSecrets } from '../../errors';
import type { NatsEnvSettings } from '../../interfaces/broker-options.interface';
import { sleep } from '../../support/sleep';
import { waitAtMost } from '../../support/with-timeout';
import type {
  AdapterCapabilities,
  AdapterConsumer,
  AdapterContext,
  AdapterLogger,
  AdapterTopic,
  BrokerAdapter,
  ConsumeOptions,
  DeadLetterStore,
  DeliveryListener,
  InboundDelivery,
  InboundMessage,
  OutboundMessage,
} from '../broker-adapter';
import { OpenConsumers } from '../open-consumers';
import { NatsPuller, type Settle } from './nats-consumer';
import { checkHeaders, DUE_HEADER, headerTable, inboundMessage, toNatsHeaders } from './nats-headers';
import { deadLetterConsumer, deadLetterSubject, delayConsumer, delaySubject, groupConsumer, heldStream, messageStream } from './nats-names';
import { apiCode, NATS_API_CODES, NatsTopology } from './nats-topology';

export const NATS_CAPABILITIES: AdapterCapabilities = {
  fanOut: true,
  // One durable consumer per group, pulled by every member with several messages in hand: no order per key.
  orderingPerKey: false,
  // JetStream 2.9 has no delayed messages: a delayed publish waits in the held stream, and a
  // durable mover (run by every process that publishes delays to or consumes the topic) moves it when due.
  nativeDelay: false,
  nativeDeadLetters: true,
  // A publish acknowledgement does not say whether any consumer's filter matched.
  detectsNoGroup: false,
};

export const NATS_DEFAULTS = {
  name: 'ductape',
  connectTimeoutMs: 10_000,
  publishTimeoutMs: 30_000,
  reconnectDelayMs: 1000,
  ackWaitMs: 30_000,
  storage: 'file',
  replicas: 1,
  /** 7 days, Kafka's default retention. */
  retentionMs: 7 * 24 * 3_600_000,
} as const;

const RESOLVED: Promise<void> = Promise.resolve();
/** A publish that found no stream looks the stream up again at most this often. */
const STREAM_LOOKUP_MS = 1000;

/** The stream a publish goes to, and how to make it (again). */
interface StreamTarget {
  stream: string;
  ensure(): Promise<void>;
}
/** One publish request waits at most this long for its acknowledgement before it is sent again (same Nats-Msg-Id). */
const PUBLISH_ATTEMPT_MS = 5000;
/** Between publish attempts while the server is away. */
const PUBLISH_RETRY_MS = 250;
/** A topic's delay mover handles this many delayed messages at once. */
const MOVER_CONCURRENCY = 32;
/** How long close() waits for the connection to flush its acks and close. */
const CLOSE_WAIT_MS = 3000;
/** A dead-letter drain waits this long for the next dead letter the group had. */
const DRAIN_FETCH_MS = 2000;

type Settings = Required<Omit<NatsEnvSettings, 'servers' | 'token' | 'user' | 'pass' | 'tls'>> &
  Pick<NatsEnvSettings, 'token' | 'user' | 'pass' | 'tls'> & { servers: string[] };

/**
 * NATS JetStream through the `nats` client. What exists on the server is described in
 * nats-names.ts and made by NatsTopology: a limits-retention stream per product and
 * environment (each topic is its own subject), a durable pull consumer per group made with
 * deliver policy `new`, and a work-queue stream beside it for delayed publishes and dead letters.
 * Retries are the same stored message, given back with `nak(delay)`: JetStream counts the
 * deliveries, so the attempt survives a crash. Messages follow the CloudEvents NATS binding.
 */
export class NatsAdapter implements BrokerAdapter, DeadLetterStore {
  readonly capabilities = NATS_CAPABILITIES;
  private readonly settings: Settings;
  /** The servers, without credentials: for logs and errors. */
  readonly endpoint: string;
  private nc?: NatsConnection;
  private jsClient?: JetStreamClient;
  private jsManager?: JetStreamManager;
  private readonly topology: NatsTopology;
  private readonly consumers = new OpenConsumers();
  /** Topics whose delayed publishes this process moves when due. */
  private readonly movers = new Map<string, Promise<NatsPuller>>();
  private readonly rejectWarned = new Set<string>();
  private closing = false;

  constructor(
    config: NatsEnvSettings,
    private readonly logger: AdapterLogger,
    private readonly envSlug = '?',
  ) {
    this.settings = {
      servers: requiredSetting(config.servers, 'servers'),
      token: config.token,
      user: config.user,
      pass: config.pass,
      tls: config.tls,
      name: config.name ?? NATS_DEFAULTS.name,
      connectTimeoutMs: config.connectTimeoutMs ?? NATS_DEFAULTS.connectTimeoutMs,
      publishTimeoutMs: config.publishTimeoutMs ?? NATS_DEFAULTS.publishTimeoutMs,
      reconnectDelayMs: config.reconnectDelayMs ?? NATS_DEFAULTS.reconnectDelayMs,
      ackWaitMs: config.ackWaitMs ?? NATS_DEFAULTS.ackWaitMs,
      storage: config.storage ?? NATS_DEFAULTS.storage,
      replicas: config.replicas ?? NATS_DEFAULTS.replicas,
      retentionMs: config.retentionMs ?? NATS_DEFAULTS.retentionMs,
    };
    this.endpoint = describeServers(this.settings.servers);
    this.topology = new NatsTopology(() => this.requireManager(), this.settings, this.logger);
  }

  async connect(): Promise<void> {
    const { servers, token, user, pass, tls, name, connectTimeoutMs, reconnectDelayMs } = this.settings;
    const options: ConnectionOptions = {
      servers,
      name,
      timeout: connectTimeoutMs,
      maxReconnectAttempts: -1,
      reconnectTimeWait: reconnectDelayMs,
      // A refused login after a server restart is retried like any other failure (the server may come back with the user).
      ignoreAuthErrorAbort: true,
      // Without it the client builds an Error (its stack captured) for every request, a JetStream
      // publish included, to add where it started to a timeout's trace: a quarter of the CPU of a
      // publish in a profile. The adapter reports its own errors, which name what failed.
      noAsyncTraces: true,
      ...(token !== undefined ? { token } : {}),
      ...(user !== undefined ? { user, pass } : {}),
      ...(tls === true ? { tls: {} } : tls ? { tls } : {}),
    };
    try {
      this.nc = await connect(options);
    } catch (error) {
      throw new Error(`cannot connect to NATS at ${this.endpoint}: ${this.explain(error)}`);
    }
    try {
      this.jsManager = await this.nc.jetstreamManager({ timeout: connectTimeoutMs });
    } catch (error) {
      await this.nc.close().catch(() => undefined);
      throw new Error(`NATS at ${this.endpoint} has no JetStream for this account (start nats-server with -js): ${this.explain(error)}`);
    }
    this.jsClient = this.nc.jetstream({ timeout: PUBLISH_ATTEMPT_MS });
    void this.watchStatus(this.nc);
    this.logger.log(`connected to NATS at ${this.endpoint} (JetStream)`);
  }

  /**
   * To the topic's subject, once JetStream stored it (the stream made first if this process has
   * not yet). With no group yet the publish resolves, and no group made later gets it (a group's
   * consumer starts at `new`). A delayed publish waits in the held stream.
   */
  async publish(topic: AdapterTopic, message: OutboundMessage): Promise<void> {
    checkHeaders(message.headers);
    const delayMs = message.delayMs ?? 0;
    if (delayMs > MAX_TIMER_MS) {
      throw new BrokerError('INVALID_MESSAGE', `delayMs ${delayMs} is beyond the longest delay on NATS, ${MAX_TIMER_MS} ms (about 24.8 days)`);
    }
    if (topic.whenNoGroup === 'reject' && !this.rejectWarned.has(topic.name)) this.warnRejectUnsupported(topic.name);
    const deadline = Date.now() + this.settings.publishTimeoutMs;
    if (delayMs > 0) {
      await this.topology.ensureHeldStream(topic.name);
      // The mover runs before the message is stored: work-queue retention keeps it either way, and it is moved when due.
      await this.ensureMover(topic.name);
      await this.send(this.heldTarget(topic.name), delaySubject(topic.name), message, deadline, { [DUE_HEADER]: String(Date.now() + Math.ceil(delayMs)) });
      return;
    }
    const made = this.topology.ensureMessageStream(topic.name);
    if (made) await made;
    await this.send(this.messageTarget(topic.name), topic.name, message, deadline);
  }

  /**
   * Stores a dead letter on the held stream. Made from a delivery (`fromDelivery`), its Nats-Msg-Id
   * is that delivery's and the group's: the stream keeps one copy when a process that crashed
   * between storing it and acking the delivery stores it again (within the duplicate window).
   */
  async sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    await this.topology.ensureHeldStream(topic.name);
    const msgID = message.fromDelivery === undefined ? randomUUID() : `dl:${group}:${message.fromDelivery}`;
    await this.send(this.heldTarget(topic.name), deadLetterSubject(topic.name, group), message, Date.now() + this.settings.publishTimeoutMs, undefined, msgID);
  }

  /**
   * Visits the group's dead letters through their durable consumer (the one a dead-letter
   * subscription reads), at most as many as it had when the call started; each is acked (and so
   * removed from the work-queue stream) only after `visit` resolved for it.
   */
  async drainDeadLetters(topic: AdapterTopic, group: string, limit: number, visit: (record: InboundMessage) => Promise<void>): Promise<number> {
    const stream = heldStream(topic.name);
    const name = deadLetterConsumer(topic.name, group);
    await this.topology.ensureHeldStream(topic.name);
    await this.topology.ensureConsumer(stream, name, deadLetterSubject(topic.name, group), 'held');
    const info = await this.requireManager().consumers.info(stream, name);
    const had = Math.min(limit, info.num_pending + info.num_ack_pending);
    const consumer = await this.requireClient().consumers.get(stream, name);
    let removed = 0;
    while (removed < had) {
      const msg = await consumer.next({ expires: DRAIN_FETCH_MS });
      if (!msg) break;
      try {
        await visit(this.inbound(msg));
      } catch (error) {
        msg.nak();
        throw error;
      }
      // Removed only once the server confirmed the ack.
      await msg.ackAck();
      removed++;
    }
    return removed;
  }

  async consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> {
    if (this.closing) throw new Error('the NATS adapter is closed');
    const messages = options.source === 'messages';
    const stream = messages ? messageStream(topic.name) : heldStream(topic.name);
    const name = messages ? groupConsumer(topic.name, options.group) : deadLetterConsumer(topic.name, options.group);
    const subject = messages ? topic.name : deadLetterSubject(topic.name, options.group);
    const puller = new NatsPuller(
      () => this.requireConnection(),
      {
        stream,
        consumer: name,
        concurrency: options.concurrency,
        ackWaitMs: this.settings.ackWaitMs,
        ensure: async (lost) => {
          if (lost) this.topology.forgetStream(stream);
          if (messages) await this.topology.ensureMessageStream(topic.name);
          else await this.topology.ensureHeldStream(topic.name);
          const created = await this.topology.ensureConsumer(stream, name, subject, messages ? 'group' : 'held');
          if (lost && created) {
            this.logger.error(
              messages
                ? `NATS consumer '${name}' of group '${options.group}' on stream '${stream}' at ${this.endpoint} was gone (deleted) and is made again, with deliver policy new: what was published to '${topic.name}' while it was gone is not delivered to the group`
                : `NATS consumer '${name}' (dead letters of group '${options.group}') on stream '${stream}' at ${this.endpoint} was gone (deleted) and is made again`,
            );
          }
        },
        handle: (msg, settle) => listener(this.delivery(msg, settle, messages)),
      },
      this.logger,
    );
    try {
      await puller.start();
      // Delayed publishes to this topic are moved by every process that reads it.
      if (messages) await this.ensureMover(topic.name);
    } catch (error) {
      // Not left pulling for a subscription its caller was told failed.
      await puller.close();
      throw new Error(`cannot start the consumer '${name}' of stream '${stream}' on NATS at ${this.endpoint}: ${this.explain(error)}`);
    }
    return this.consumers.adopt(puller, 'NATS', this.logger, `stream '${stream}' by consumer '${name}' (group '${options.group}', concurrency ${options.concurrency})`);
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.consumers.closeAll();
    const movers = await Promise.all([...this.movers.values()].map((mover) => mover.catch(() => undefined)));
    await Promise.all(movers.map((mover) => (mover ? mover.close() : Promise.resolve())));
    const nc = this.nc;
    if (!nc || nc.isClosed()) return;
    // Acks and naks are written asynchronously: flushed before the connection closes.
    await waitAtMost(
      nc.flush().catch(() => undefined).then(() => nc.close()),
      CLOSE_WAIT_MS,
    ).catch(() => false);
    if (!nc.isClosed()) void nc.close().catch(() => undefined);
  }

  /**
   * Publishes and waits for JetStream's acknowledgement, sending again while the server is away
   * (a restart, a reconnect) until the publish timeout: each attempt carries the same
   * Nats-Msg-Id, so the stream keeps one copy even when an acknowledgement was lost.
   */
  private async send(target: StreamTarget, subject: string, message: OutboundMessage, deadline: number, extra?: Record<string, string>, msgID: string = randomUUID()): Promise<void> {
    const headers = toNatsHeaders(message, extra);
    const data = typeof message.body === 'string' ? Buffer.from(message.body) : message.body;
    await this.sendRaw(target, subject, data, headers, deadline, msgID);
  }

  /** The message stream a publish to `topic` goes to, and how to make it again. */
  private messageTarget(topic: string): StreamTarget {
    return { stream: messageStream(topic), ensure: () => this.topology.ensureMessageStream(topic) ?? RESOLVED };
  }

  private heldTarget(topic: string): StreamTarget {
    return { stream: heldStream(topic), ensure: () => this.topology.ensureHeldStream(topic) };
  }

  /**
   * A publish refused for want of a stream (503 no responders: no stream takes the subject) may
   * mean the stream was deleted since this process made it: the stream is looked up again (at most
   * once a second) and made if missing, and the publish sent again. A server still starting up
   * answers 503 too: the lookup then fails as retriable, and the publish is retried as before.
   */
  private async sendRaw(target: StreamTarget, subject: string, data: Uint8Array, headers: MsgHdrs, deadline: number, msgID: string): Promise<void> {
    const nc = this.requireConnection();
    const maxPayload = nc.info?.max_payload;
    if (maxPayload !== undefined && data.byteLength > maxPayload) {
      throw new BrokerError('INVALID_MESSAGE', `the message is ${data.byteLength} bytes, more than this NATS server takes (max_payload ${maxPayload})`);
    }
    let lastError: unknown;
    let nextLookup = 0;
    for (;;) {
      if (this.closing) throw new Error('the NATS adapter closed before JetStream acknowledged the message');
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`JetStream at ${this.endpoint} did not acknowledge the message within publishTimeoutMs (${this.settings.publishTimeoutMs} ms): ${this.explain(lastError)}`);
      }
      try {
        await this.requireClient().publish(subject, data, { headers, msgID, timeout: Math.min(PUBLISH_ATTEMPT_MS, left) });
        return;
      } catch (error) {
        lastError = error;
        if (isNoStream(error) && Date.now() >= nextLookup) {
          nextLookup = Date.now() + STREAM_LOOKUP_MS;
          this.topology.forgetStream(target.stream);
          try {
            await target.ensure();
            continue;
          } catch (lookup) {
            lastError = lookup;
            if (!retriable(lookup)) throw new Error(`JetStream at ${this.endpoint} refused the message: ${this.explain(lookup)}`);
          }
        } else if (!retriable(error)) {
          throw new Error(`JetStream at ${this.endpoint} refused the message: ${this.explain(error)}`);
        }
        await sleep(Math.min(PUBLISH_RETRY_MS, Math.max(0, deadline - Date.now())));
      }
    }
  }

  /** A delivery as the delivery layer reads it. */
  private delivery(msg: JsMsg, settle: Settle, messages: boolean): InboundDelivery {
    const info = msg.info;
    const { body, headers, metadata } = inboundMessage(msg.data, msg.headers, info.stream, msg.seq, info.timestampNanos, msg);
    const ack = (): Promise<void> => {
      settle.ack();
      return RESOLVED;
    };
    const release = (): Promise<void> => {
      settle.nak();
      return RESOLVED;
    };
    if (!messages) return { body, headers, metadata, raw: msg, ack, release };
    // JetStream counts every delivery of this stored message to the group, crashes included; a
    // copy sent for one group (a reprocessed dead letter) starts from the attempt it carries.
    const attempt = (metadata.attempt ?? 1) + info.deliveryCount - 1;
    const retryLater = (delayMs: number): Promise<void> => {
      settle.nak(delayMs);
      return RESOLVED;
    };
    return { body, headers, metadata, raw: msg, attempt, ack, release, retryLater };
  }

  private inbound(msg: JsMsg): InboundMessage {
    return inboundMessage(msg.data, msg.headers, msg.info.stream, msg.seq, msg.info.timestampNanos, msg);
  }

  /**
   * Runs the topic's delay mover in this process (once): its durable consumer on the held
   * stream is shared by every process, so each delayed message is moved by one of them. A
   * message not yet due is given back until then (`nak` with the time left); a due one is
   * published to the topic (its own Nats-Msg-Id, so a move retried after a lost ack is stored
   * once), then acked, which removes it.
   */
  private ensureMover(topic: string): Promise<NatsPuller> {
    const known = this.movers.get(topic);
    if (known) return known;
    const stream = heldStream(topic);
    const name = delayConsumer(topic);
    const mover = new NatsPuller(
      () => this.requireConnection(),
      {
        stream,
        consumer: name,
        concurrency: MOVER_CONCURRENCY,
        ackWaitMs: this.settings.ackWaitMs,
        ensure: async (lost) => {
          if (lost) this.topology.forgetStream(stream);
          await this.topology.ensureHeldStream(topic);
          const created = await this.topology.ensureConsumer(stream, name, delaySubject(topic), 'held', true);
          // warn: the delayed messages wait in the held stream, and the new mover reads them all (deliver policy all).
          if (lost && created) this.logger.warn(`NATS delay mover '${name}' on stream '${stream}' at ${this.endpoint} was gone (deleted) and is made again`);
        },
        handle: async (msg, settle) => {
          const due = Number(msg.headers?.get(DUE_HEADER));
          const wait = Number.isFinite(due) ? due - Date.now() : 0;
          if (wait > 0) return settle.nak(wait);
          const headers = headersWithout(msg.headers, DUE_HEADER);
          await this.topology.ensureMessageStream(topic);
          // The stored message's stream, sequence and store time: the same for a move repeated after
          // a lost ack, another for a message of a held stream made again with the same sequence.
          const msgID = `moved:${msg.info.stream}:${msg.seq}:${msg.info.timestampNanos}`;
          await this.sendRaw(this.messageTarget(topic), topic, msg.data, headers, Date.now() + this.settings.publishTimeoutMs, msgID);
          settle.ack();
        },
      },
      this.logger,
    );
    const started = mover.start().then(() => mover);
    this.movers.set(topic, started);
    started.catch(() => this.movers.delete(topic));
    return started;
  }

  /** Logs the connection's disconnects and reconnects, naming the servers but no credential. */
  private async watchStatus(nc: NatsConnection): Promise<void> {
    let lostAt: number | undefined;
    for await (const status of nc.status()) {
      if (this.closing) continue;
      if (status.type === Events.Disconnect && lostAt === undefined) {
        lostAt = Date.now();
        this.logger.warn(`connection to NATS at ${this.endpoint} lost; reconnecting every ${this.settings.reconnectDelayMs} ms`);
      } else if (status.type === Events.Reconnect) {
        this.logger.log(`connection to NATS at ${this.endpoint} is back${lostAt === undefined ? '' : ` after ${Date.now() - lostAt} ms`}`);
        lostAt = undefined;
      } else if (status.type === Events.Error) {
        this.logger.warn(`NATS at ${this.endpoint}: ${this.explain(status.data)}`);
      }
    }
  }

  /**
   * whenNoGroup 'reject' asks to fail a publish to a topic no group reads yet; a JetStream
   * acknowledgement does not say whether a consumer's filter matched, so the publish goes on and
   * the setting is named once per topic rather than ignored in silence.
   */
  private warnRejectUnsupported(topic: string): void {
    this.rejectWarned.add(topic);
    this.logger.warn(
      `topic '${topic}' [${this.envSlug}] has whenNoGroup: 'reject', which NATS JetStream cannot honour cheaply: publishes are accepted with or without a group (a group gets what is published after it first subscribed; none made later gets earlier messages). Warned once per topic`,
    );
  }

  /** An error's text without any credential of this config (the client may echo what it sent). */
  private explain(error: unknown): string {
    let text = describeError(error);
    for (const secret of [this.settings.token, this.settings.pass]) {
      if (secret) text = text.split(secret).join('***');
    }
    if (/authorization violation|authentication/i.test(text)) {
      const how = this.settings.token !== undefined ? 'the token' : this.settings.user !== undefined ? `user '${this.settings.user}' and its password` : 'no credentials';
      return `the server refused the login (${text}): check ${how}`;
    }
    return text;
  }

  private requireConnection(): NatsConnection {
    if (!this.nc || this.closing) throw new Error('the NATS adapter is not connected');
    return this.nc;
  }

  private requireClient(): JetStreamClient {
    if (!this.jsClient || this.closing) throw new Error('the NATS adapter is not connected');
    return this.jsClient;
  }

  private requireManager(): JetStreamManager {
    if (!this.jsManager || this.closing) throw new Error('the NATS adapter is not connected');
    return this.jsManager;
  }
}

/** Worth sending again: the server is away or restarting (no responders, a timeout, a reconnect). */
function retriable(error: unknown): boolean {
  const raw = (error as { code?: unknown } | undefined)?.code;
  const code = typeof raw === 'string' || typeof raw === 'number' ? String(raw) : '';
  if (['503', 'TIMEOUT', 'CONNECTION_CLOSED', 'DISCONNECT', 'CONNECTION_REFUSED', 'CONNECTION_DRAINING', 'STALE_CONNECTION_ERROR'].includes(code)) return true;
  const apiError = apiCode(error);
  // JetStream not ready yet after a restart (no leader, temporarily unavailable).
  if (apiError === 10008 || apiError === 10023) return true;
  return /timeout|no responders|disconnect|unavailable|not ready/i.test(describeError(error));
}

/** No stream takes the subject: JetStream's error, or (what js.publish gives) 503 no responders. */
function isNoStream(error: unknown): boolean {
  const raw = (error as { code?: unknown } | undefined)?.code;
  if (raw === '503' || raw === 503) return true;
  return apiCode(error) === NATS_API_CODES.STREAM_NOT_FOUND || /no stream matches subject|no responders/i.test(describeError(error));
}


function headersWithout(hdrs: MsgHdrs | undefined, drop: string): MsgHdrs {
  const table = headerTable(hdrs);
  const result = natsHeaders();
  for (const name in table) if (name.toLowerCase() !== drop && !name.toLowerCase().startsWith('nats-')) result.set(name, table[name]);
  return result;
}

/** The servers as `host:port`, without user, password or token. */
export function describeServers(servers: readonly string[]): string {
  return servers.map((server) => redactSecrets(server).replace(/^([a-z]+:\/\/)?[^@/]*@/i, '$1')).join(',');
}

export function createNatsAdapter(config: NatsEnvSettings, context: AdapterContext): NatsAdapter {
  return new NatsAdapter(config, context.logger, context.envSlug);
}
