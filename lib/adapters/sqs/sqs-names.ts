import { createHash } from 'node:crypto';

/** SQS queue names: letters, digits, '-' and '_', at most 80 characters with the `.fifo` suffix. */
const MAX_QUEUE_NAME = 80;
/** SNS topic names: the same characters, at most 256. */
const MAX_TOPIC_NAME = 256;
const FIFO_SUFFIX = '.fifo';
export const DEAD_LETTER_SUFFIX = '-dead-letters';
/** Between a topic and a group in a fan-out group queue's name. */
const GROUP_SEPARATOR = '__';

/**
 * A physical topic name (`<product>.<env>.<tag>`, dots and all) as an SQS or SNS name: '.' is not
 * allowed there and becomes '_'. A name too long for its limit keeps its start and gets a hash of
 * the whole, so two long names never meet.
 */
function fitName(base: string, suffix: string, max: number): string {
  const safe = base.replace(/[^A-Za-z0-9_-]/g, '_');
  if (safe.length + suffix.length <= max) return safe + suffix;
  const hash = createHash('sha256').update(base).digest('hex').slice(0, 10);
  return `${safe.slice(0, max - suffix.length - hash.length - 1)}-${hash}${suffix}`;
}

/** Queue mode: the topic's one queue. */
export function topicQueueName(topic: string, fifo: boolean): string {
  return fitName(topic, fifo ? FIFO_SUFFIX : '', MAX_QUEUE_NAME);
}

/** Fan-out mode: the SNS topic. */
export function snsTopicName(topic: string, fifo: boolean): string {
  return fitName(topic, fifo ? FIFO_SUFFIX : '', MAX_TOPIC_NAME);
}

/** Fan-out mode: the queue of one group, subscribed to the SNS topic. */
export function groupQueueName(topic: string, group: string, fifo: boolean): string {
  return fitName(`${topic}${GROUP_SEPARATOR}${group}`, fifo ? FIFO_SUFFIX : '', MAX_QUEUE_NAME);
}

/** The dead-letter queue the adapter manages next to a work queue that has no redrive policy. */
export function deadLetterQueueName(workQueueName: string): string {
  const fifo = workQueueName.endsWith(FIFO_SUFFIX);
  const base = fifo ? workQueueName.slice(0, -FIFO_SUFFIX.length) : workQueueName;
  return fitName(base, `${DEAD_LETTER_SUFFIX}${fifo ? FIFO_SUFFIX : ''}`, MAX_QUEUE_NAME);
}

/** The queue name at the end of a queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`). */
export function queueNameOfUrl(url: string): string {
  const path = url.replace(/[?#].*$/, '').replace(/\/+$/, '');
  return path.slice(path.lastIndexOf('/') + 1);
}

export function isFifoName(name: string): boolean {
  return name.endsWith(FIFO_SUFFIX);
}

/** `arn:aws:sqs:<region>:<account>:<name>` → its account and name. */
export function parseQueueArn(arn: string): { account: string; name: string } | undefined {
  const parts = arn.split(':');
  if (parts.length < 6 || parts[0] !== 'arn' || parts[2] !== 'sqs') return undefined;
  return { account: parts[4], name: parts.slice(5).join(':') };
}
