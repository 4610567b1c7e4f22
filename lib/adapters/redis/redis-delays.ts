import type Redis from 'ioredis';
import { describeError } from '../../errors';
import type { AdapterLogger } from '../broker-adapter';
import { SCRIPTS } from './redis-scripts';

/** Most members one run of the move script moves; a full run is followed by another at once. */
const MOVE_BATCH = 100;

interface Watched {
  zset: string;
  stream: string;
  maxLen: number;
  users: number;
  timer?: NodeJS.Timeout;
  /** When the next run is scheduled (epoch ms, this process's clock). */
  nextRunAt: number;
  running: boolean;
  failures: number;
}

/**
 * Moves due members of the sorted sets that hold delayed messages and retries to their streams.
 * Each set is watched while a consumer of this process reads its stream; any number of processes
 * may watch one set (the script moves a member once). A set is checked when its first member is
 * due, and at least every `pollMs`, for members other processes add; this process's own additions
 * wake it at once (`nudge`).
 */
export class DelayMover {
  private readonly watched = new Map<string, Watched>();
  private closed = false;

  constructor(
    private readonly client: () => Redis,
    private readonly pollMs: number,
    private readonly logger: AdapterLogger,
  ) {}

  /** Watches `zset` (moving due members to `stream`) until the returned function is called. */
  watch(zset: string, stream: string, maxLen: number): () => void {
    let entry = this.watched.get(zset);
    if (!entry) {
      entry = { zset, stream, maxLen, users: 0, nextRunAt: 0, running: false, failures: 0 };
      this.watched.set(zset, entry);
      this.schedule(entry, 0);
    }
    entry.users++;
    const watched = entry;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--watched.users > 0) return;
      clearTimeout(watched.timer);
      this.watched.delete(zset);
    };
  }

  /** A member was added to `zset`, due in `delayMs`: run then if that is sooner than planned. */
  nudge(zset: string, delayMs: number): void {
    const entry = this.watched.get(zset);
    if (entry && !entry.running && Date.now() + delayMs < entry.nextRunAt) this.schedule(entry, delayMs);
  }

  close(): void {
    this.closed = true;
    for (const entry of this.watched.values()) clearTimeout(entry.timer);
    this.watched.clear();
  }

  private schedule(entry: Watched, delayMs: number): void {
    clearTimeout(entry.timer);
    const wait = Math.max(0, Math.min(delayMs, this.pollMs));
    entry.nextRunAt = Date.now() + wait;
    entry.timer = setTimeout(() => void this.run(entry), wait);
  }

  private async run(entry: Watched): Promise<void> {
    if (this.closed || this.watched.get(entry.zset) !== entry) return;
    entry.running = true;
    let next = this.pollMs;
    try {
      const [moved, nextDue, now] = (await SCRIPTS.moveDue.run(this.client(), [entry.zset, entry.stream], [MOVE_BATCH, entry.maxLen])) as [number, string | null, number];
      entry.failures = 0;
      if (moved >= MOVE_BATCH) next = 0;
      else if (nextDue !== null) next = Math.max(0, Number(nextDue) - now);
    } catch (error) {
      // Logged on the first failure and every 30th after (a server away for a while fails each poll).
      if (entry.failures++ % 30 === 0 && !this.closed) {
        this.logger.warn(`moving due delayed messages from '${entry.zset}' failed (${describeError(error)}); trying again every ${this.pollMs} ms`);
      }
    } finally {
      entry.running = false;
    }
    if (!this.closed && this.watched.get(entry.zset) === entry) this.schedule(entry, next);
  }
}
