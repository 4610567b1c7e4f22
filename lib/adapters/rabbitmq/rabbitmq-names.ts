/**
 * Names of everything the adapter declares, derived from the physical topic name
 * (`<product>.<env>.<tag>` by default), so two environments or products never share a queue.
 *
 * Topic and group names only hold letters, digits, '.', '_' and '-', so ':' separates the parts
 * without any ambiguity, and a name with an empty group part (`topic::delay-…`) cannot collide
 * with a group's queue.
 */

/** RabbitMQ refuses longer queue and exchange names. */
const MAX_NAME_BYTES = 255;

/** The fanout exchange of a topic: every group's queue is bound to it. */
export function topicExchange(topic: string): string {
  return checked(topic);
}

/** The work queue of one subscription group: members of the group compete for its messages. */
export function groupQueue(topic: string, group: string): string {
  return checked(`${topic}:${group}`);
}

/** Where the group's dead letters are kept, with their error, attempt count and time in headers. */
export function deadLetterQueue(topic: string, group: string): string {
  return checked(`${topic}:${group}:dead-letters`);
}

/** Holds a group's retries for `delayMs`, then dead-letters them back to the group's queue. */
export function groupDelayQueue(topic: string, group: string, delayMs: number): string {
  return checked(`${topic}:${group}:delay-${delayMs}ms`);
}

/** Holds messages published with `delayMs`, then dead-letters them to the topic's exchange. */
export function topicDelayQueue(topic: string, delayMs: number): string {
  return checked(`${topic}::delay-${delayMs}ms`);
}

function checked(name: string): string {
  if (Buffer.byteLength(name) > MAX_NAME_BYTES) {
    throw new Error(`the RabbitMQ name '${name.slice(0, 60)}…' is longer than ${MAX_NAME_BYTES} bytes; use a shorter topic name or group`);
  }
  return name;
}
