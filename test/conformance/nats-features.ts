import { MAX_TIMER_MS } from '../../lib/constants';
import type { ConformanceFeatures } from './features';

/** What the NATS JetStream target declares (its column of README.md's guarantees table, for the lead to add). */
export const NATS_FEATURES: ConformanceFeatures = {
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
};
