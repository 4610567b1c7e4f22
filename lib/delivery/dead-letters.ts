import type { BrokerAdapter, InboundMessage, OutboundMessage } from '../adapters/broker-adapter';
import { DEAD_LETTER_HEADERS } from '../constants';
import { describeError, type NonRetryableReason } from '../errors';
import type { Route } from '../routing/route-resolver';
import { deliveryParts } from './adapter-parts';
import { decodeInbound, outboundOf, undecoded, type DecodedMessage } from './message-codec';

/**
 * Why a message is a dead letter: 'max-attempts' (its handler failed every attempt), 'poison' (it
 * could not be decoded), 'schema' (it fails its topic's schema), or at once, without retries,
 * 'guard' (a guard refused it), 'validation' (a pipe refused it) and 'non-retryable' (its handler
 * threw a NonRetryableError).
 */
export type DeadLetterReason = 'max-attempts' | 'poison' | 'schema' | NonRetryableReason;

/** The headers a dead letter carries: the last error, the attempt count and the time. */
export function deadLetterHeaders(error: unknown, attempts: number, reason: DeadLetterReason): Record<string, string> {
  return {
    [DEAD_LETTER_HEADERS.error]: describeError(error).slice(0, 1000),
    [DEAD_LETTER_HEADERS.attempts]: String(attempts),
    [DEAD_LETTER_HEADERS.failedAt]: new Date().toISOString(),
    [DEAD_LETTER_HEADERS.reason]: reason,
  };
}

/**
 * Moves up to `limit` dead letters of one group back to that group's queue only, as first
 * attempts without their dead-letter headers. Each is removed from the dead letters only after it
 * was accepted by the group's queue, so a failure midway duplicates nothing and loses nothing.
 */
export function reprocessDeadLetters(adapter: BrokerAdapter, route: Route, group: string, limit: number): Promise<number> {
  const parts = deliveryParts(adapter);
  return parts.drainDeadLetters(route.topic, group, limit, (record) => parts.sendToGroup(route.topic, group, revive(record, route)));
}

/** The same bytes and id as a first attempt, without the dead-letter headers. */
function revive(record: InboundMessage, route: Route): OutboundMessage {
  let decoded: DecodedMessage;
  try {
    decoded = decodeInbound(record);
  } catch {
    // Not a message (a poison body): it goes back as it came, and will be dead-lettered again.
    decoded = undecoded(record);
  }
  return outboundOf(decoded, route, 1, withoutDeadLetterHeaders(decoded.headers));
}

function withoutDeadLetterHeaders(headers: Readonly<Record<string, string>>): Record<string, string> {
  const kept: Record<string, string> = {};
  const dropped = new Set<string>(Object.values(DEAD_LETTER_HEADERS));
  for (const [name, value] of Object.entries(headers)) if (!dropped.has(name)) kept[name] = value;
  return kept;
}
