import { createHash } from 'node:crypto';

/**
 * Names of what the adapter makes on a NATS server, derived from the physical topic name T
 * (`<product>.<env>.<tag>` by default), so two environments or products never share a stream.
 *
 * - Each topic is the subject T itself: a plain `nats pub <T>` is a publish to the topic.
 * - The stream of a product and environment: `ductape_<product>_<env>`, over the subjects
 *   `<product>.<env>` and `<product>.<env>.>` (its key K is T's first two tokens; a topic name of
 *   one or two tokens is its own key). Limits retention: a message is kept for `retentionMs`;
 *   a group's consumer, made with deliver policy `new`, reads only what came after it.
 * - Beside it, `ductape_<product>_<env>_held` (work-queue retention: kept until acked once) holds
 *   what waits: delayed publishes (`_ductape.delay.<T>`) and dead letters
 *   (`_ductape.dl.<group>.<T>`, the group as one token, its dots as '~').
 * - A group's durable consumer: `g_<topic and group, readable>_<hash>`; a topic's delay mover:
 *   `delay_<topic>_<hash>`; a group's dead letters: `dl_<topic and group>_<hash>`.
 *
 * Topic and group names hold letters, digits, '.', '_' and '-' (the module validates them), so
 * '~' never occurs in a group and the group token is reversible; '.' separates subject tokens.
 */

const STREAM_PREFIX = 'ductape_';
const HELD_SUFFIX = '_held';
const DELAY_PREFIX = '_ductape.delay.';
const DEAD_LETTER_PREFIX = '_ductape.dl.';
/** A consumer name's readable part is cut here; the hash keeps it unique. */
const READABLE_NAME_CHARS = 80;
/** Subject tokens: no empty token, no wildcard, no whitespace. */
const VALID_SUBJECT = /^[^.\s*>]+(\.[^.\s*>]+)*$/;

/** The first two tokens of a topic name (the whole name when it has fewer): one stream per key. */
export function streamKey(topic: string): string {
  const tokens = checkedSubject(topic).split('.');
  return tokens.slice(0, 2).join('.');
}

/** The stream of a topic's messages (its product and environment). */
export function messageStream(topic: string): string {
  return STREAM_PREFIX + streamKey(topic).replace(/\./g, '_');
}

/** The subjects the message stream of `key` covers. */
export function messageSubjects(key: string): string[] {
  return [key, `${key}.>`];
}

/** The stream of a topic's delayed publishes and dead letters. */
export function heldStream(topic: string): string {
  return messageStream(topic) + HELD_SUFFIX;
}

/** The subjects the held stream of `key` covers. */
export function heldSubjects(key: string): string[] {
  return [`${DELAY_PREFIX}${key}`, `${DELAY_PREFIX}${key}.>`, `${DEAD_LETTER_PREFIX}*.${key}`, `${DEAD_LETTER_PREFIX}*.${key}.>`];
}

/** Where a delayed publish waits until it is due. */
export function delaySubject(topic: string): string {
  return DELAY_PREFIX + checkedSubject(topic);
}

/** Where one group's dead letters are kept. */
export function deadLetterSubject(topic: string, group: string): string {
  return `${DEAD_LETTER_PREFIX}${groupToken(group)}.${checkedSubject(topic)}`;
}

/** The durable consumer of one group on a topic. */
export function groupConsumer(topic: string, group: string): string {
  return consumerName('g', `${topic}__${group}`);
}

/** The durable consumer of one group's dead letters (read by a dead-letter subscription and by reprocessing). */
export function deadLetterConsumer(topic: string, group: string): string {
  return consumerName('dl', `${topic}__${group}`);
}

/** The durable consumer that moves a topic's delayed publishes to it when due (shared by every process). */
export function delayConsumer(topic: string): string {
  return consumerName('delay', topic);
}

function groupToken(group: string): string {
  if (group === '' || /[\s*>~]/.test(group)) throw new Error(`the group name '${group.slice(0, 60)}' cannot be a NATS subject token`);
  return group.replace(/\./g, '~');
}

function consumerName(kind: string, what: string): string {
  const hash = createHash('sha256').update(what).digest('hex').slice(0, 12);
  // Consumer names may not hold '.', '*', '>' or whitespace.
  const readable = what.replace(/[.\s*>]/g, '_').slice(0, READABLE_NAME_CHARS);
  return `${kind}_${readable}_${hash}`;
}

function checkedSubject(topic: string): string {
  if (!VALID_SUBJECT.test(topic)) throw new Error(`the topic name '${topic.slice(0, 60)}' is not a valid NATS subject (dot-separated tokens, no wildcards or spaces)`);
  return topic;
}
