import { MAX_TIMER_MS } from '../../lib/constants';
import type { ConformanceFeatures } from './features';

/**
 * The Redis target's declared features (README.md's "Guarantees per broker" table, column
 * `redis`). Kept here until the lead adds the column to declarations.ts.
 */
export const REDIS_FEATURES: ConformanceFeatures = {
  fanOut: true,
  // Competing consumers, several entries in handlers at once.
  orderingPerKey: false,
  // A new consumer group starts at the stream's end (`$`).
  noGroupPublish: 'dropped',
  // A script counts the stream's consumer groups before the XADD.
  whenNoGroupReject: 'fails',
  // The attempt is a field of the entry; an entry taken over (XAUTOCLAIM) is delivered as it was.
  attemptsSurviveCrash: false,
  // A sorted-set score holds any delay; publish() refuses more than a Node.js timer's longest.
  maxDelayMs: MAX_TIMER_MS,
  // One sorted set ordered by due time.
  longDelayHoldsBackShorter: false,
  // Commands wait in ioredis's offline queue for the reconnect, bounded by publishTimeoutMs.
  publishDuringOutage: 'waits',
  survivesProcessRestart: true,
};
