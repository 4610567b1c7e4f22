import { BrokerError } from '../errors';
import type { AdapterLogger } from './broker-adapter';

/** At most one warning per topic in this long. */
const WARNING_INTERVAL_MS = 60_000;
/** Topics remembered; beyond it the memory is cleared (a warning may then come sooner). */
const MAX_REMEMBERED_TOPICS = 10_000;

/**
 * The rule for a publish to a topic that no group has subscribed to yet: it is
 * accepted and no group created later receives it. Where an adapter can tell cheaply that this
 * happened, it says so here: a warning at most once per topic per minute, or, for a topic with
 * `whenNoGroup: 'reject'`, the PUBLISH_FAILED error to fail the publish with.
 */
export class NoGroupWarnings {
  private readonly warnedAt = new Map<string, number>();

  constructor(
    private readonly logger: AdapterLogger,
    private readonly envSlug: string,
  ) {}

  warn(topic: string): void {
    const now = Date.now();
    const last = this.warnedAt.get(topic);
    if (last !== undefined && now - last < WARNING_INTERVAL_MS) return;
    if (this.warnedAt.size >= MAX_REMEMBERED_TOPICS) this.warnedAt.clear();
    this.warnedAt.set(topic, now);
    this.logger.warn(
      `topic '${topic}' [${this.envSlug}] has no subscription group yet: the message was accepted, and no group subscribing later receives it (at most one such warning per topic per minute; whenNoGroup: 'reject' refuses these publishes)`,
    );
  }

  error(topic: string): BrokerError {
    return new BrokerError(
      'PUBLISH_FAILED',
      `topic '${topic}' [${this.envSlug}] has no subscription group yet, and its whenNoGroup is 'reject': nothing was published`,
    );
  }
}
