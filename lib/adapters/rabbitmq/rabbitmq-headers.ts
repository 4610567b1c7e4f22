import type { Message } from 'amqplib';
import { PUBLISH_ID_HEADER } from './rabbitmq-publisher';

/** Headers RabbitMQ adds when it dead-letters (our delay queues do); they must not be sent again. */
const BROKER_HEADERS = /^x-(death|first-death-|last-death-)/;

/**
 * RabbitMQ reads these as extra routing keys ("sender-selected distribution") and closes the
 * channel (406) when one is not an array. An application header of that name is refused on
 * publish; on a delivery it is routing, not application data, and is not passed on: carried as a
 * string into a retry it would make the broker refuse the retry, and every one after it.
 */
export const ROUTING_HEADERS: ReadonlySet<string> = new Set(['CC', 'BCC']);

/**
 * A message's AMQP headers as the strings the delivery layer carries. The message id, when set,
 * is given as `message-id`, which names a poison message among the dead letters.
 */
export function inboundHeaders(message: Message): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(message.properties.headers ?? {})) {
    if (name === PUBLISH_ID_HEADER || BROKER_HEADERS.test(name) || ROUTING_HEADERS.has(name) || value === undefined || value === null) continue;
    headers[name] = headerText(value);
  }
  const messageId: unknown = message.properties.messageId;
  if (typeof messageId === 'string' && messageId !== '' && headers['message-id'] === undefined) headers['message-id'] = messageId;
  return headers;
}

function headerText(value: unknown): string {
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}
