import type Redis from 'ioredis';
import { describeError } from '../../errors';
import { sleep } from '../../support/sleep';
import { waitAtMost } from '../../support/with-timeout';
import type { AdapterConsumer, AdapterLogger, DeliveryListener, InboundDelivery } from '../broker-adapter';
import { isNoGroup } from './redis-connection';
import { fromFields } from './redis-fields';

/**
 * Idle time given to an entry handed back (release, or a close with its handler unfinished): far
 * beyond any claimIdleMs, so the next XAUTOCLAIM of any consumer of the group takes it.
 */
const RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000;
/** Own pending entries read back after a reconnect, at most. */
const RECOVER_COUNT = 1000;
/** How long stop() waits for the read loop to leave its blocking read. */
const STOP_WAIT_MS = 2000;
/** How long stop() waits for Redis to end the blocking read (CLIENT UNBLOCK) before cutting the reader's connection. */
const UNBLOCK_WAIT_MS = 500;
/** How long close() waits to hand back the unacked entries: a server that is away leaves them to claimIdleMs. */
const HAND_BACK_WAIT_MS = 2000;
/** Between two failed reads, growing to at most this. */
const MAX_FAILURE_PAUSE_MS = 1000;

export interface RedisConsumerOptions {
  /** The streams read with one XREADGROUP, all by the consumer group `group`. */
  streams: readonly string[];
  group: string;
  /** This consumer's name in the group, unique to it. */
  consumer: string;
  concurrency: number;
  blockMs: number;
  claimIdleMs: number;
  /** How often the pending entries of other consumers are looked at for ones idle past claimIdleMs. */
  claimIntervalMs: number;
  /** Streams only this group reads (its copies, its dead letters): an entry acked is deleted. */
  deleteOnAck: ReadonlySet<string>;
  /** Creates the consumer groups; `again` after NOGROUP (a server that lost them). */
  ensureGroups(again: boolean): Promise<void>;
  listener: DeliveryListener;
}

interface InFlight {
  stream: string;
  id: string;
  key: string;
  /** Handed back: no longer kept alive, and never acked by this consumer. */
  released: boolean;
}

const RESOLVED = (): void => undefined;

type StreamEntries = [Buffer, [Buffer, Buffer[] | null][]][];

/** An entry read (pending under this consumer) but not yet in a handler: a read returned more than the free slots. */
interface Waiting {
  stream: string;
  id: string;
  fields: Buffer[];
}

/**
 * One consumer of a group: a blocking XREADGROUP over the group's streams on a connection of its
 * own, at most `concurrency` entries in its handlers at once. An entry is acked (XACK) only when
 * the delivery layer acks it. Entries pending too long at another consumer of the group (one that
 * crashed) are taken over with XAUTOCLAIM; this consumer's own in-flight entries are kept from
 * looking idle (an XCLAIM that resets their idle time every claimIdleMs / 3), so a slow handler is
 * not taken over while it runs.
 */
export class RedisConsumer implements AdapterConsumer {
  private readonly inFlight = new Map<string, InFlight>();
  private readonly claimCursors = new Map<string, string>();
  private stopped = false;
  private closed = false;
  private loopDone: Promise<void> = Promise.resolve();
  private wake: () => void = () => undefined;
  private readerId?: number;
  private blocked = false;
  private nextClaimAt = 0;
  /** Read this consumer's own pending entries before new ones: after a start or a reconnect, a read's reply may have been lost. */
  private recoverOwn = true;
  private keepAlive?: NodeJS.Timeout;
  /** Failed passes in a row, for the pause before the next; and of each kind, for their warnings. */
  private failures = 0;
  private noGroups = 0;
  private otherFailures = 0;
  /** Acks waiting for this turn's XACK, by stream. */
  private readonly acks = new Map<string, { ids: string[]; keys: string[]; settle: { resolve: () => void; reject: (error: Error) => void }[] }>();
  /** Entries whose XACK is sent or about to be. */
  private readonly acking = new Set<string>();
  /** The XACKs sent and not answered yet, settled either way. */
  private readonly ackFlights = new Set<Promise<void>>();
  /**
   * Entries read but not dispatched, by key, in the order read: an XREADGROUP over several streams
   * applies COUNT to each, so it may return more than the free slots. They are pending under this
   * consumer, kept alive like those in handlers, dispatched before anything new is read, and handed
   * back by close() with the rest.
   */
  private readonly waiting = new Map<string, Waiting>();

  constructor(
    private readonly reader: Redis,
    private readonly commands: () => Redis,
    private readonly options: RedisConsumerOptions,
    private readonly logger: AdapterLogger,
  ) {}

  async start(): Promise<void> {
    this.readerId = Number(await this.reader.call('CLIENT', 'ID'));
    this.reader.on('ready', () => {
      this.readerId = undefined;
      this.recoverOwn = true;
      this.nextClaimAt = 0;
      void this.reader.call('CLIENT', 'ID').then(
        (id) => (this.readerId = Number(id)),
        () => undefined,
      );
    });
    const interval = Math.max(100, Math.floor(this.options.claimIdleMs / 3));
    this.keepAlive = setInterval(() => void this.keepInFlightAlive(), interval);
    this.keepAlive.unref();
    this.loopDone = this.loop();
  }

  async stop(): Promise<void> {
    if (this.stopped) return this.waitForLoop();
    this.stopped = true;
    this.wake();
    // Ends the blocking read now, as if it had timed out: nothing it would have read is lost.
    // A reader without a connection has sent nothing yet (its read waits in the offline queue): cut it off now.
    if (this.reader.status !== 'ready') this.reader.disconnect();
    else if (this.blocked && this.readerId !== undefined) {
      // Bounded: during an outage the command would wait in the offline queue (the reader is cut off below instead).
      await waitAtMost(this.commands().call('CLIENT', 'UNBLOCK', this.readerId).catch(() => undefined), UNBLOCK_WAIT_MS);
    }
    await this.waitForLoop();
  }

  async close(): Promise<void> {
    await this.stop();
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.keepAlive);
    // Acks of this turn go out first, ahead of the hand-back on the same connection.
    this.flushAcks();
    try {
      if (this.commands().status !== 'ready') throw new Error('the connection to Redis is down');
      if (!(await waitAtMost(this.handBackPending(), HAND_BACK_WAIT_MS))) throw new Error(`no answer from Redis within ${HAND_BACK_WAIT_MS} ms`);
    } catch (error) {
      // Still pending under this consumer: another consumer takes them over after claimIdleMs.
      this.logger.warn(`consumer '${this.options.consumer}' of group '${this.options.group}' could not hand back its unacked entries on close (${describeError(error)}); another consumer takes them over after claimIdleMs (${this.options.claimIdleMs} ms)`);
    }
    this.reader.disconnect();
  }

  private async waitForLoop(): Promise<void> {
    const ended = await waitAtMost(this.loopDone, STOP_WAIT_MS);
    if (!ended) {
      // The reader is cut off: its read cannot outlive the consumer (what it read stays pending, handed back on close).
      this.reader.disconnect();
      await this.loopDone;
    }
  }

  private async loop(): Promise<void> {
    const { concurrency } = this.options;
    while (!this.stopped) {
      if (this.inFlight.size >= concurrency) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        // Acks come back together (one pipelined flush): let the others finish too, so the next
        // read fetches many entries rather than one for each ack.
        await new Promise<void>((resolve) => setImmediate(resolve));
        continue;
      }
      try {
        await this.readOnce(concurrency - this.inFlight.size);
        this.failures = 0;
        this.noGroups = 0;
        this.otherFailures = 0;
      } catch (error) {
        if (this.stopped) break;
        // Logged on the first failure and every 30th after (a server away for a while fails each pass).
        this.failures++;
        if (isNoGroup(error)) {
          // The stream or its group is gone (a server restarted without persistence, a deleted
          // key): made again, from the start of what the stream holds now.
          const logged = this.noGroups++ % 30 === 0;
          if (logged) this.logger.warn(`the consumer group '${this.options.group}' is missing on Redis; creating it again`);
          const made = await this.options.ensureGroups(true).then(
            () => true,
            (cause: unknown) => {
              if (logged) this.logger.warn(`creating the consumer group '${this.options.group}' again failed (${describeError(cause)}); trying again`);
              return false;
            },
          );
          if (made) continue;
        } else if (this.otherFailures++ % 30 === 0) {
          this.logger.warn(`reading group '${this.options.group}' from Redis failed (${describeError(error)}); trying again`);
        }
        await sleep(Math.min(MAX_FAILURE_PAUSE_MS, 50 * this.failures));
      }
    }
  }

  private async readOnce(free: number): Promise<void> {
    const { streams, group, consumer } = this.options;
    if (this.recoverOwn) {
      this.recoverOwn = false;
      // Every entry pending here comes back, those waiting included: read again rather than kept twice.
      this.waiting.clear();
      // XACKs on their way go first: answered on the other connection before this read's reply,
      // they would no longer mark their entries as handled when the read returns them.
      await waitAtMost(Promise.all([...this.ackFlights]), STOP_WAIT_MS);
      const own = (await this.reader.callBuffer('XREADGROUP', 'GROUP', group, consumer, 'COUNT', RECOVER_COUNT, 'STREAMS', ...streams, ...streams.map(() => '0'))) as StreamEntries | null;
      this.dispatchAll(own, free);
      return;
    }
    if (this.waiting.size > 0) {
      for (const { stream, id, fields } of [...this.waiting.values()]) {
        if (free <= 0) break;
        if (this.dispatch(stream, id, fields)) free--;
      }
      return;
    }
    if (Date.now() >= this.nextClaimAt) {
      this.nextClaimAt = Date.now() + this.options.claimIntervalMs;
      for (const stream of streams) {
        if (free <= 0 || this.stopped) return;
        free -= await this.claimIdle(stream, free);
      }
      if (free <= 0) return;
    }
    this.blocked = true;
    let reply: StreamEntries | null;
    try {
      if (this.stopped) return;
      reply = (await this.reader.callBuffer(
        'XREADGROUP',
        'GROUP',
        group,
        consumer,
        'COUNT',
        free,
        'BLOCK',
        this.options.blockMs,
        'STREAMS',
        ...streams,
        ...streams.map(() => '>'),
      )) as StreamEntries | null;
    } finally {
      this.blocked = false;
    }
    // Read after stop: left pending under this consumer, and handed back by close().
    if (!this.stopped) this.dispatchAll(reply, free);
  }

  /** Takes over entries idle past claimIdleMs at any consumer of the group (one that crashed, or one handed back). */
  private async claimIdle(stream: string, count: number): Promise<number> {
    const cursor = this.claimCursors.get(stream) ?? '0-0';
    // On the reader (idle between its reads): ioredis's auto-pipelining of the shared connection
    // drops the command name of callBuffer (6.1.0), and the entries must come as bytes.
    const reply = (await this.reader.callBuffer(
      'XAUTOCLAIM',
      stream,
      this.options.group,
      this.options.consumer,
      this.options.claimIdleMs,
      cursor,
      'COUNT',
      count,
    )) as [Buffer, [Buffer, Buffer[] | null][], Buffer[]?];
    this.claimCursors.set(stream, reply[0].toString());
    // Redis 7 names the pending entries the stream no longer holds (trimmed by MAXLEN, or XDEL) apart;
    // 6.2 returns them with no fields.
    const lost = (reply[2] ?? []).map((id) => id.toString());
    let dispatched = 0;
    for (const [id, fields] of reply[1]) {
      if (!fields) lost.push(id.toString());
      else if (!this.stopped && dispatched < count && this.dispatch(stream, id.toString(), fields)) dispatched++;
    }
    this.dropLost(stream, lost);
    return dispatched;
  }

  /** Dispatches at most `free` entries of a read; the rest wait, pending here, for the next free slots. */
  private dispatchAll(reply: StreamEntries | null, free: number): void {
    if (!reply) return;
    for (const [streamName, entries] of reply) {
      const stream = streamName.toString();
      const lost: string[] = [];
      for (const [rawId, fields] of entries) {
        const id = rawId.toString();
        if (!fields) lost.push(id);
        else if (free > 0) {
          if (this.dispatch(stream, id, fields)) free--;
        } else {
          const key = `${stream}\n${id}`;
          if (!this.inFlight.has(key) && !this.acking.has(key)) this.waiting.set(key, { stream, id, fields });
        }
      }
      this.dropLost(stream, lost);
    }
  }

  /**
   * Pending entries whose stream no longer holds them (MAXLEN trimmed them, or an XDEL, after they
   * were read and before they were acked): nothing can deliver them. Logged as lost, without their
   * content (there is none left), and acked so they leave the group's pending list.
   */
  private dropLost(stream: string, ids: readonly string[]): void {
    if (ids.length === 0) return;
    const shown = ids.slice(0, 10).join(', ');
    this.logger.error(
      `${ids.length} entr${ids.length === 1 ? 'y' : 'ies'} pending for group '${this.options.group}' on stream '${stream}' ${ids.length === 1 ? 'was' : 'were'} deleted from the stream before being handled (trimmed by maxLen, or XDEL), and are lost: ${shown}${ids.length > 10 ? ', ...' : ''}`,
    );
    let client: Redis;
    try {
      client = this.commands();
    } catch {
      return;
    }
    client.xack(stream, this.options.group, ...ids).catch(() => undefined);
  }

  private dispatch(stream: string, id: string, fields: Buffer[]): boolean {
    const key = `${stream}\n${id}`;
    this.waiting.delete(key);
    // Already in a handler here, or handled with its XACK on the way (read back after a
    // reconnect): that delivery settles it. An XACK that fails leaves it to XAUTOCLAIM.
    if (this.inFlight.has(key) || this.acking.has(key)) return false;
    const entry: InFlight = { stream, id, key, released: false };
    this.inFlight.set(key, entry);
    const { body, headers, metadata } = fromFields(stream, id, fields);
    const delivery: InboundDelivery = {
      body,
      headers,
      metadata,
      raw: { stream, id, fields },
      ack: () => this.ack(entry),
      release: () => this.release(entry),
    };
    let handled: Promise<void>;
    try {
      handled = this.options.listener(delivery);
    } catch (error) {
      handled = Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    // One reaction for both outcomes (not a catch and a finally: two more promises per message).
    handled.then(
      () => this.finish(key, entry),
      (error: unknown) => {
        // warn, not error: nothing is lost, the entry is delivered again (see docs/logging.md).
        this.logger.warn(`a delivery of group '${this.options.group}' failed unsettled (${describeError(error)}); it stays pending and is delivered again`);
        this.finish(key, entry);
      },
    );
    return true;
  }

  private ack(entry: InFlight): Promise<void> {
    // A late ack (after close, or of an entry handed back) must not settle what another consumer may hold now.
    if (this.closed || entry.released) return Promise.resolve();
    let batch = this.acks.get(entry.stream);
    if (!batch) {
      batch = { ids: [], keys: [], settle: [] };
      this.acks.set(entry.stream, batch);
      if (this.acks.size === 1) setImmediate(() => this.flushAcks());
    }
    batch.ids.push(entry.id);
    batch.keys.push(entry.key);
    this.acking.add(entry.key);
    // The handler is done: its slot is free now, while the XACK is on its way (it goes out before
    // anything close() sends on the same connection, so a close never hands back an acked entry).
    this.finish(entry.key, entry);
    return new Promise<void>((resolve, reject) => batch.settle.push({ resolve, reject }));
  }

  private finish(key: string, entry: InFlight): void {
    if (this.inFlight.get(key) !== entry) return;
    this.inFlight.delete(key);
    this.wake();
  }

  /**
   * Acks of one turn of the event loop go in one XACK per stream (the deliveries of one read
   * mostly finish together); each ack resolves once Redis has answered the XACK that carried it.
   */
  private flushAcks(): void {
    if (this.acks.size === 0) return;
    const batches = [...this.acks];
    this.acks.clear();
    let client: Redis;
    try {
      client = this.commands();
    } catch (error) {
      // The adapter closed: these entries stay pending and go to another consumer (at least once).
      for (const [, { keys, settle }] of batches) {
        keys.forEach((key) => this.acking.delete(key));
        settle.forEach(({ reject }) => reject(error instanceof Error ? error : new Error(String(error))));
      }
      return;
    }
    for (const [stream, { ids, keys, settle }] of batches) {
      const done = this.options.deleteOnAck.has(stream)
        ? client.multi().xack(stream, this.options.group, ...ids).xdel(stream, ...ids).exec()
        : client.xack(stream, this.options.group, ...ids);
      const flight = done.then(RESOLVED, RESOLVED);
      this.ackFlights.add(flight);
      void flight.then(() => this.ackFlights.delete(flight));
      done
        .finally(() => keys.forEach((key) => this.acking.delete(key)))
        .then(
          () => settle.forEach(({ resolve }) => resolve()),
          (error: unknown) => settle.forEach(({ reject }) => reject(error instanceof Error ? error : new Error(String(error)))),
        );
    }
  }

  private async release(entry: InFlight): Promise<void> {
    if (this.closed || entry.released) return;
    entry.released = true;
    await this.handBack(entry.stream, [entry.id]);
    this.nextClaimAt = 0;
  }

  /** Marks entries pending under this consumer as long idle: the next XAUTOCLAIM of any consumer of the group takes them. */
  private async handBack(stream: string, ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.commands().call('XCLAIM', stream, this.options.group, this.options.consumer, 0, ...ids, 'IDLE', RELEASED_IDLE_MS, 'JUSTID');
  }

  /** On close: every entry still pending under this consumer goes back to the group; an empty consumer is removed from it. */
  private async handBackPending(): Promise<void> {
    const client = this.commands();
    let pendingTotal = 0;
    for (const stream of this.options.streams) {
      let start = '-';
      for (;;) {
        const pending = (await client.call('XPENDING', stream, this.options.group, start, '+', 1000, this.options.consumer)) as [string, string, number, number][];
        pendingTotal += pending.length;
        // Those marked idle already (released) need nothing more.
        await this.handBack(stream, pending.filter(([, , idle]) => idle < RELEASED_IDLE_MS / 2).map(([id]) => id));
        if (pending.length < 1000) break;
        start = `(${pending[pending.length - 1][0]}`;
      }
    }
    if (pendingTotal === 0) {
      // Nothing pending: the consumer's name can go (DELCONSUMER would drop pending entries with it).
      for (const stream of this.options.streams) await client.call('XGROUP', 'DELCONSUMER', stream, this.options.group, this.options.consumer).catch(() => undefined);
    }
  }

  /** Resets the idle time of the entries in this consumer's handlers (and those waiting for one), so no other consumer takes them over meanwhile. */
  private async keepInFlightAlive(): Promise<void> {
    if (this.closed || this.inFlight.size + this.waiting.size === 0) return;
    const byStream = new Map<string, string[]>();
    for (const entry of [...this.inFlight.values(), ...this.waiting.values()]) {
      if ('released' in entry && entry.released) continue;
      const ids = byStream.get(entry.stream) ?? [];
      ids.push(entry.id);
      byStream.set(entry.stream, ids);
    }
    for (const [stream, ids] of byStream) {
      await this.commands()
        .call('XCLAIM', stream, this.options.group, this.options.consumer, 0, ...ids, 'JUSTID')
        .catch(() => undefined);
    }
  }
}
