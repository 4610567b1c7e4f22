/**
 * Kafka names derived from the physical topic name T (`<product>.<env>.<tag>` by default), so two
 * environments or products never share a topic or a consumer group. Topic names only hold
 * letters, digits, '.', '_' and '-'; consumer-group ids may hold anything, and use ':'.
 */

/** Kafka refuses longer topic names. */
const MAX_TOPIC_NAME = 249;

/** Messages published with `delayMs`: every group's consumer reads them and holds each until due. */
export function delayTopic(topic: string): string {
  return checked(`${topic}.delay`);
}

/** Retries of one group, each held until its due time: the group's main partitions never wait for them. */
export function retryTopic(topic: string, group: string): string {
  return checked(`${topic}.${group}.retry`);
}

/** Dead letters of one group, with their error, attempt count and time in headers. */
export function deadLetterTopic(topic: string, group: string): string {
  return checked(`${topic}.${group}.dead-letters`);
}

/** The consumer group of one subscription group on one topic. */
export function consumerGroupId(topic: string, group: string): string {
  return `${topic}:${group}`;
}

/** The consumer group that reads (and so removes) one group's dead letters. */
export function deadLetterGroupId(topic: string, group: string): string {
  return `${topic}:${group}:dead-letters`;
}

function checked(name: string): string {
  if (name.length > MAX_TOPIC_NAME) {
    throw new Error(`the Kafka topic name '${name.slice(0, 60)}…' is longer than ${MAX_TOPIC_NAME} characters; use a shorter topic name or group`);
  }
  return name;
}
