import { MAX_TIMER_MS } from '../../lib/constants';
import { MAX_DELAY_SECONDS } from '../../lib/adapters/sqs';
import type { ConformanceFeatures } from './features';
import type { TABLE_COLUMNS } from './features';

/**
 * Every conformance target's declared features, by its column in README.md's guarantees table.
 * The targets (*.conformance.spec.ts) take theirs from here, so the table check reads the very
 * values the suite tests.
 */
export const FEATURES: Record<(typeof TABLE_COLUMNS)[number], ConformanceFeatures> = {
  memory: {
    fanOut: true,
    orderingPerKey: true,
    noGroupPublish: 'dropped',
    whenNoGroupReject: 'fails',
    // The attempt travels with the message; a delivery given back unfinished keeps it.
    attemptsSurviveCrash: false,
    // publish() refuses more: the longest a Node.js timer waits.
    maxDelayMs: MAX_TIMER_MS,
    longDelayHoldsBackShorter: false,
    publishDuringOutage: 'not-applicable',
    survivesProcessRestart: false,
  },
  rabbitmq: {
    fanOut: true,
    orderingPerKey: false,
    noGroupPublish: 'dropped',
    whenNoGroupReject: 'fails',
    // The attempt is a header of the message; RabbitMQ requeues an unacked delivery as it was.
    attemptsSurviveCrash: false,
    maxDelayMs: MAX_TIMER_MS,
    // One TTL queue per distinct delay.
    longDelayHoldsBackShorter: false,
    publishDuringOutage: 'waits',
    survivesProcessRestart: true,
  },
  kafka: {
    fanOut: true,
    orderingPerKey: true,
    noGroupPublish: 'dropped',
    whenNoGroupReject: 'accepted',
    // The attempt is a header of the record; an uncommitted offset is read again as it was.
    attemptsSurviveCrash: false,
    maxDelayMs: MAX_TIMER_MS,
    // Records of the delay and retry topics are read ahead and held until due, each on its own timer.
    longDelayHoldsBackShorter: false,
    publishDuringOutage: 'waits',
    survivesProcessRestart: true,
  },
  'sqs (queue mode)': {
    fanOut: false,
    orderingPerKey: false,
    noGroupPublish: 'kept',
    whenNoGroupReject: 'never-no-group',
    // The attempt is SQS's ApproximateReceiveCount, which counts every receive.
    attemptsSurviveCrash: true,
    maxDelayMs: MAX_DELAY_SECONDS * 1000,
    longDelayHoldsBackShorter: false,
    publishDuringOutage: 'rejects',
    survivesProcessRestart: true,
  },
  'sqs (fan-out)': {
    fanOut: true,
    orderingPerKey: false,
    noGroupPublish: 'dropped',
    whenNoGroupReject: 'fails',
    attemptsSurviveCrash: true,
    maxDelayMs: MAX_DELAY_SECONDS * 1000,
    longDelayHoldsBackShorter: false,
    publishDuringOutage: 'rejects',
    survivesProcessRestart: true,
  },
  redis: {
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
  },
  nats: {
    fanOut: true,
    // One durable consumer per group, pulled by every member with several messages in hand.
    orderingPerKey: false,
    // A group's consumer starts at deliver policy `new`: what came before it is not its to read.
    noGroupPublish: 'dropped',
    // A JetStream acknowledgement does not say whether a consumer's filter matched.
    whenNoGroupReject: 'accepted',
    // JetStream counts every delivery of a stored message to a consumer, an unfinished one included.
    attemptsSurviveCrash: true,
    // A delayed message is given back with nak(delay) until due; publish() refuses more than a Node.js timer's longest wait.
    maxDelayMs: MAX_TIMER_MS,
    // Each delayed message is given back for its own time left: none waits behind another.
    longDelayHoldsBackShorter: false,
    publishDuringOutage: 'waits',
    survivesProcessRestart: true,
  },
};
