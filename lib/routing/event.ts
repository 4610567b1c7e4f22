import { NAME_PATTERN } from '../constants';
import { BrokerError } from '../errors';

export interface ParsedEvent {
  brokerTag: string;
  topicTag: string;
}

/** Splits `brokerTag:topicTag`, or throws INVALID_EVENT. */
export function parseEvent(event: unknown): ParsedEvent {
  if (typeof event !== 'string') {
    throw new BrokerError('INVALID_EVENT', `event must be a string of the form 'brokerTag:topicTag' (got ${typeof event})`);
  }
  const colon = event.indexOf(':');
  const brokerTag = colon < 0 ? '' : event.slice(0, colon);
  const topicTag = colon < 0 ? '' : event.slice(colon + 1);
  if (!NAME_PATTERN.test(brokerTag) || !NAME_PATTERN.test(topicTag)) {
    throw new BrokerError(
      'INVALID_EVENT',
      `event '${event.slice(0, 120)}' is not of the form 'brokerTag:topicTag' (each: letters, digits, '.', '_' and '-')`,
    );
  }
  return { brokerTag, topicTag };
}

/** The physical topic name: the configured one, or `<product>.<env>.<topicTag>`. */
export function physicalTopicName(
  product: string,
  env: string,
  topicTag: string,
  configured?: string | Record<string, string>,
): string {
  if (typeof configured === 'string') return configured;
  return configured && Object.hasOwn(configured, env) ? configured[env] : `${product}.${env}.${topicTag}`;
}
