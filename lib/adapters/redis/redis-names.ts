/**
 * Redis keys derived from the physical topic name T (`<product>.<env>.<tag>` by default), so two
 * environments or products never share a stream. Topic and group names hold no ':' (see
 * NAME_PATTERN), so the ':'-separated suffixes below never collide with another topic's stream.
 */

/** The topic's stream: every publish is an entry here, and each subscription group is a consumer group on it. A plain client XADDs here. */
export function topicStream(topic: string): string {
  return topic;
}

/** Publishes with `delayMs` to the topic, a sorted set scored by due time; moved to the stream when due. */
export function topicDelayed(topic: string): string {
  return `${topic}:delayed`;
}

/** Copies for one group only (retries, reprocessed dead letters), read beside the topic's stream by the same consumer group. */
export function groupStream(topic: string, group: string): string {
  return `${topic}:group:${group}`;
}

/** The group's copies that are not due yet (retry backoff), scored by due time. */
export function groupDelayed(topic: string, group: string): string {
  return `${topic}:group:${group}:delayed`;
}

/** Dead letters of one group, a stream read (and emptied) by the consumer group of the same name. */
export function deadLetterStream(topic: string, group: string): string {
  return `${topic}:dead-letters:${group}`;
}
