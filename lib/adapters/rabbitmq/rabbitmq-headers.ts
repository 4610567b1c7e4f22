import type { Message, Options } from 'amqplib';
import type { InboundMessage, InboundMetadata, OutboundMessage } from '../broker-adapter';
import { CE_ATTRIBUTES, setAttribute, writeCloudEventHeaders, type Mutable } from '../cloudevents';

/**
 * The wire format on RabbitMQ (CloudEvents binary content mode, after the AMQP binding): the body
 * is the message's bytes; every context attribute is a `cloudEvents:<name>` header (RabbitMQ maps
 * AMQP 1.0 application-properties to AMQP 0-9-1 headers under the same names), `datacontenttype`
 * is the `content-type` property. The AMQP properties a plain client reads carry the same values:
 * `message-id` (the id), `correlation-id`, `timestamp` (the time, in seconds), persistent.
 */
export const CE_HEADER_PREFIX = 'cloudEvents:';
/** Read too, below the ':' form: the AMQP binding's earlier drafts, and SDKs that follow them (JMS property names cannot hold ':'). */
const CE_HEADER_ALTERNATE_PREFIX = 'cloudEvents_';

/** The header earlier versions marked each publish with; still hidden on their messages. */
const LEGACY_PUBLISH_ID_HEADER = 'x-ductape-publish-id';

/**
 * Headers RabbitMQ adds when it dead-letters (our delay queues do), and a quorum queue's count of
 * returns: the broker's, not the application's; they must not be sent again.
 */
const BROKER_HEADERS = /^x-(death$|first-death-|last-death-|delivery-count$)/;

/**
 * RabbitMQ reads these as extra routing keys ("sender-selected distribution") and closes the
 * channel (406) when one is not an array. An application header of that name is refused on
 * publish; on a delivery it is routing, not application data, and is not passed on: carried as a
 * string into a retry it would make the broker refuse the retry, and every one after it.
 */
export const ROUTING_HEADERS: ReadonlySet<string> = new Set(['CC', 'BCC']);

/**
 * The `cloudEvents:` headers this adapter writes, and their `cloudEvents_` forms, which it reads as
 * the same attributes: an application header of one of these names is refused on publish.
 */
export const CLOUDEVENT_HEADERS: ReadonlySet<string> = new Set(
  Object.values(CE_ATTRIBUTES).flatMap((name) => [CE_HEADER_PREFIX + name, CE_HEADER_ALTERNATE_PREFIX + name]),
);

/** Context attributes this module maps, by their CloudEvents name. */
const KNOWN_ATTRIBUTES: ReadonlySet<string> = new Set(Object.values(CE_ATTRIBUTES));

/** The reason an application header cannot be sent, or undefined when every one can. */
export function refusedHeader(headers: Readonly<Record<string, string>>): string | undefined {
  for (const name in headers) {
    if (ROUTING_HEADERS.has(name)) return `header '${name}' is reserved by RabbitMQ, which reads CC and BCC as extra routing keys: give it another name`;
    if (CLOUDEVENT_HEADERS.has(name)) return `header '${name}' is the CloudEvents attribute this module writes from the message's own fields: give it another name`;
  }
  return undefined;
}

/**
 * The AMQP properties and headers of a message, after the binding. Every attribute goes in the
 * header table, the id and time also in their properties (what a plain AMQP client reads). The
 * table is what costs most: a raw amqplib publish with the properties ran at 0.84 of a bare one,
 * with the table too at 0.59-0.68 (broker CPU 43 → 51-55 → 56-60 µs per message), and three
 * entries cost the same as five within the noise (2026-12-04, two runs of 5 rounds of 20,000):
 * leaving `id` or `time` out of the table would buy nothing measurable, and a CloudEvents SDK
 * reading the message needs them there.
 */
export function publishOptions(message: OutboundMessage, mandatory: boolean): Options.Publish {
  const headers: Record<string, string | Buffer | number> = {};
  for (const name in message.headers) headers[name] = message.headers[name];
  writeCloudEventHeaders(CE_HEADER_PREFIX, message, headers);
  return {
    // Both: `persistent` for amqplib's publish(), deliveryMode for its encoder (see publishOn).
    persistent: true,
    deliveryMode: 2,
    mandatory,
    // A poison body kept among the dead letters is as it came: no content type is claimed for it.
    contentType: message.contentType,
    // AMQP short strings hold 255 bytes; the cloudEvents: headers carry the ids in full either way.
    messageId: shortString(message.messageId),
    correlationId: shortString(message.correlationId),
    timestamp: Math.floor(message.publishedAt / 1000),
    headers,
  };
}

/**
 * A delivery as the delivery layer reads it: its metadata from the `cloudEvents:` (or
 * `cloudEvents_`) headers, else from the AMQP properties (a plain client's message-id is the
 * broker's id of it, the same on every redelivery); its application headers without them, without
 * what RabbitMQ adds when it dead-letters, and without CC and BCC.
 */
export function inboundMessage(message: Message): InboundMessage {
  const metadata: Mutable<InboundMetadata> = {};
  const headers: Record<string, string> = {};
  const table = message.properties.headers;
  if (table) {
    for (const name in table) {
      const value: unknown = table[name];
      if (value === undefined || value === null) continue;
      const attribute = attributeOf(name);
      if (attribute !== undefined) {
        // Both forms present (a bridge that adds one): the binding's own wins.
        if (name[CE_HEADER_PREFIX.length - 1] !== ':' && table[CE_HEADER_PREFIX + attribute] !== undefined) continue;
        if (attribute === CE_ATTRIBUTES.time) setTime(metadata, value);
        else setAttribute(metadata, attribute, value);
        continue;
      }
      if (BROKER_HEADERS.test(name) || ROUTING_HEADERS.has(name) || name === LEGACY_PUBLISH_ID_HEADER) continue;
      headers[name] = headerText(value);
    }
  }
  const { messageId, correlationId, timestamp, contentType } = message.properties as {
    messageId?: unknown;
    correlationId?: unknown;
    timestamp?: unknown;
    contentType?: unknown;
  };
  if (typeof messageId === 'string' && messageId !== '') metadata.brokerMessageId = messageId;
  if (typeof timestamp === 'number' && Number.isFinite(timestamp)) metadata.brokerTime = timestamp * 1000;
  if (typeof contentType === 'string' && contentType !== '') metadata.contentType = contentType;
  if (metadata.correlationId === undefined && typeof correlationId === 'string' && correlationId !== '') metadata.correlationId = correlationId;
  return { body: message.content, headers, metadata, raw: message };
}

/** The attribute a `cloudEvents:` (or `cloudEvents_`) header carries, when it is one this module maps. */
function attributeOf(name: string): string | undefined {
  // 'c' first: most headers are not attributes, and this is on every delivery.
  if (name.charCodeAt(0) !== 99 || !(name.startsWith(CE_HEADER_PREFIX) || name.startsWith(CE_HEADER_ALTERNATE_PREFIX))) return undefined;
  const attribute = name.slice(CE_HEADER_PREFIX.length);
  return KNOWN_ATTRIBUTES.has(attribute) ? attribute : undefined;
}

/** `time` as RFC 3339 text, or in the native form the binding allows: an AMQP timestamp (seconds in 0-9-1). */
function setTime(metadata: Mutable<InboundMetadata>, value: unknown): void {
  const typed = value as { '!'?: unknown; value?: unknown };
  if (typeof value === 'object' && typed['!'] === 'timestamp' && typeof typed.value === 'number') {
    metadata.time = typed.value * 1000;
    return;
  }
  // A bare number: milliseconds (AMQP 1.0's unit) when it is that large, seconds otherwise.
  if (typeof value === 'number' && Number.isFinite(value)) {
    metadata.time = value > 1e11 ? value : value * 1000;
    return;
  }
  setAttribute(metadata, CE_ATTRIBUTES.time, value);
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

function shortString(value: string | undefined): string | undefined {
  return value && Buffer.byteLength(value) <= 255 ? value : undefined;
}
