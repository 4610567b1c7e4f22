import { AckPolicy, DeliverPolicy, RetentionPolicy, StorageType, type ConsumerConfig, type JetStreamManager, type StreamConfig } from 'nats';
import { SingleFlight } from '../../support/single-flight';
import type { AdapterLogger } from '../broker-adapter';
import { heldStream, heldSubjects, messageStream, messageSubjects, streamKey } from './nats-names';

/** JetStream's API error code for "stream not found". */
const STREAM_NOT_FOUND = 10059;
/** ... and for "consumer not found". */
const CONSUMER_NOT_FOUND = 10014;
/** How long a stream remembers a Nats-Msg-Id (at most its max_age). */
const DUPLICATE_WINDOW_MS = 120_000;

export interface TopologySettings {
  storage: 'file' | 'memory';
  /** How long the message stream keeps a message (0: until the stream's limits). */
  retentionMs: number;
  replicas: number;
  ackWaitMs: number;
}

export type ConsumerKind = 'group' | 'held';

/**
 * What exists on the server: the streams of each product and environment, and the durable
 * consumers of groups, dead letters and delay movers. Each is made once per process (cached), and
 * looked up (and made again if missing) after the server says it may be gone (forgetStream).
 *
 * Design for nats-server 2.9 (checked on 2.9.10): a consumer has one filter subject (several
 * need 2.10), so each group's consumer filters its topic's subject exactly, and what a group
 * reads beside its topic (copies for it alone) lives under subjects of their own with consumers
 * of their own.
 */
export class NatsTopology {
  private readonly streams = new Map<string, Promise<void>>();
  /** Streams known to exist: a publish to one of them skips the await. */
  private readonly madeStreams = new Set<string>();
  private readonly consumers = new Map<string, Promise<void>>();
  private readonly flights = new SingleFlight<string, void>();

  constructor(
    private readonly jsm: () => JetStreamManager,
    private readonly settings: TopologySettings,
    private readonly logger: AdapterLogger,
  ) {}

  /**
   * The message stream of a topic's product and environment: limits retention, a message kept
   * for retentionMs. Not interest retention, which would free a message once every group acked
   * it: on nats-server 2.9.10 a stream with interest retention accepted publishes after a restart
   * before its consumers were back, and dropped them as wanted by no one (150 of 5,000 lost in
   * test/nats/nats.resilience.spec.ts); with limits retention none was lost.
   */
  ensureMessageStream(topic: string): Promise<void> | undefined {
    const name = messageStream(topic);
    if (this.madeStreams.has(name)) return undefined;
    const key = streamKey(topic);
    return this.ensureStream(name, messageSubjects(key), RetentionPolicy.Limits).then(() => void this.madeStreams.add(name));
  }

  /** The held stream (delayed publishes, dead letters) of a topic's product and environment (work queue). */
  ensureHeldStream(topic: string): Promise<void> {
    const key = streamKey(topic);
    return this.ensureStream(heldStream(topic), heldSubjects(key), RetentionPolicy.Workqueue);
  }

  /**
   * A durable pull consumer: a group's (from the messages published after it is made, the
   * issue's rule), or one over the held stream (every message there: delayed ones, dead letters).
   */
  ensureConsumer(stream: string, name: string, filterSubject: string, kind: ConsumerKind, mover = false): Promise<boolean> {
    const id = `${stream}/${name}`;
    const known = this.consumers.get(id);
    if (known) return known.then(() => false);
    const config: Partial<ConsumerConfig> = {
      durable_name: name,
      filter_subject: filterSubject,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: kind === 'group' ? DeliverPolicy.New : DeliverPolicy.All,
      ack_wait: this.settings.ackWaitMs * 1_000_000,
      // The delivery layer counts attempts and moves a message to the dead letters itself
      // (policies differ per subscription); the server must keep delivering until then.
      max_deliver: -1,
      // A group's: far more than any subscription's concurrency (each member pulls only what it
      // can run). A delay mover's: no limit, because every delayed message not yet due is one it
      // gave back with nak(delay), and the server counts those as pending acks: with a limit, once
      // that many delays waited, one coming due would wait behind them.
      max_ack_pending: mover ? -1 : 10_000,
    };
    let created = false;
    const made = this.flights.run(id, async () => {
      const jsm = this.jsm();
      try {
        // An existing durable is kept as it is: re-adding it would fail on a changed setting.
        const info = await jsm.consumers.info(stream, name);
        // A mover made by an earlier version, with the limit: lifted.
        if (mover && info.config.max_ack_pending !== -1) await jsm.consumers.update(stream, name, { max_ack_pending: -1 });
      } catch (error) {
        if (apiCode(error) !== CONSUMER_NOT_FOUND) throw error;
        await jsm.consumers.add(stream, config);
        created = true;
        this.logger.debug(`created consumer '${name}' on stream '${stream}' (filter '${filterSubject}')`);
      }
    });
    this.consumers.set(id, made);
    made.catch(() => this.consumers.delete(id));
    return made.then(() => created);
  }

  /**
   * Forgets a stream, and every consumer on it, after the server said it (or one of them) may be
   * gone: the next ensure asks the server again, and makes what is missing.
   */
  forgetStream(stream: string): void {
    this.madeStreams.delete(stream);
    this.streams.delete(stream);
    for (const id of [...this.consumers.keys()]) if (id.startsWith(`${stream}/`)) this.consumers.delete(id);
  }

  private ensureStream(name: string, subjects: string[], retention: RetentionPolicy): Promise<void> {
    const known = this.streams.get(name);
    if (known) return known;
    const made = this.flights.run(`stream:${name}`, async () => {
      const jsm = this.jsm();
      try {
        const info = await jsm.streams.info(name);
        const missing = subjects.filter((subject) => !info.config.subjects?.includes(subject));
        if (missing.length > 0) {
          throw new Error(`the NATS stream '${name}' exists without the subjects ${missing.join(', ')}: it was not made by this module (or by another version); delete or rename it`);
        }
        return;
      } catch (error) {
        if (apiCode(error) !== STREAM_NOT_FOUND) throw error;
      }
      const maxAgeMs = retention === RetentionPolicy.Limits && this.settings.retentionMs > 0 ? this.settings.retentionMs : undefined;
      const config: Partial<StreamConfig> = {
        name,
        subjects,
        retention,
        storage: this.settings.storage === 'memory' ? StorageType.Memory : StorageType.File,
        num_replicas: this.settings.replicas,
        // Publishes retried after a lost acknowledgement carry the same Nats-Msg-Id: stored once.
        // The server refuses a window longer than max_age (every publish failed with retentionMs under 2 minutes).
        duplicate_window: Math.min(DUPLICATE_WINDOW_MS, maxAgeMs ?? DUPLICATE_WINDOW_MS) * 1_000_000,
        ...(maxAgeMs !== undefined ? { max_age: maxAgeMs * 1_000_000 } : {}),
      };
      try {
        await jsm.streams.add(config);
        this.logger.debug(`created stream '${name}' (${retention} retention, ${config.storage} storage)`);
      } catch (error) {
        // Another process made it meanwhile: the same config is fine.
        if (!/already in use|already exists/i.test(String((error as Error).message))) throw error;
      }
    });
    this.streams.set(name, made);
    made.catch(() => this.streams.delete(name));
    return made;
  }
}

/** The JetStream API error code of a failed request (10059 stream not found, ...), when it has one. */
export function apiCode(error: unknown): number | undefined {
  const api = (error as { api_error?: { err_code?: unknown } } | undefined)?.api_error;
  return typeof api?.err_code === 'number' ? api.err_code : undefined;
}

export const NATS_API_CODES = { STREAM_NOT_FOUND, CONSUMER_NOT_FOUND } as const;
