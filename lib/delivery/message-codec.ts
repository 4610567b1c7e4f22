import { createHash } from 'node:crypto';
import type { InboundMessage, OutboundMessage } from '../adapters/broker-adapter';
import { attributeText, CE_ATTRIBUTES, isStructuredContentType, JSON_CONTENT_TYPE, setAttribute, type Mutable } from '../adapters/cloudevents';
import type { InboundMetadata } from '../adapters/broker-adapter';
import { BrokerError } from '../errors';

/**
 * The wire format: the body is `JSON.stringify(message)`, the bytes any client would write, and
 * the metadata travels in the broker's own fields (each adapter maps it, see
 * lib/adapters/cloudevents.ts). On the way in, any producer's JSON is a message: what its
 * metadata lacks comes from the broker's fields, then from the body itself.
 */

/** Encodes a message as UTF-8 JSON. Refuses, with INVALID_MESSAGE, what JSON cannot carry faithfully and bodies over `maxBytes`. */
export function encodeMessage(message: unknown, maxBytes: number): string {
  if (message === undefined || typeof message === 'function' || typeof message === 'symbol') {
    throw new BrokerError('INVALID_MESSAGE', `message must be JSON-serialisable (got ${typeof message})`);
  }
  let body: string;
  try {
    body = JSON.stringify(message);
  } catch (error) {
    const reason = error instanceof Error ? error.message.split('\n')[0] : String(error);
    throw new BrokerError('INVALID_MESSAGE', `message is not JSON-serialisable: ${reason}`, { cause: error });
  }
  // A UTF-16 unit is 1 to 3 UTF-8 bytes: only bodies near the limit need their bytes counted.
  if (body.length * 3 > maxBytes) {
    const bytes = body.length > maxBytes ? body.length : Buffer.byteLength(body, 'utf8');
    if (bytes > maxBytes) {
      throw new BrokerError(
        'INVALID_MESSAGE',
        `message is too large: ${bytes > body.length ? bytes : `at least ${bytes}`} bytes encoded, the limit is ${maxBytes}`,
      );
    }
  }
  return body;
}

/** A delivery read into what a handler's context needs, and what a retry or dead letter carries on. */
export interface DecodedMessage {
  message: unknown;
  id: string;
  /** Epoch milliseconds. */
  publishedAt: number;
  /** The attempt the metadata names (1 when it names none); a broker's own delivery count takes precedence. */
  attempt: number;
  headers: Readonly<Record<string, string>>;
  correlationId?: string;
  key?: string;
  type?: string;
  source?: string;
  /** What a retry or a dead letter sends on: the bytes as they came (a 0.1.0 envelope's message, re-encoded). */
  body: string | Buffer;
  contentType?: string;
}

/**
 * Reads a delivery. Throws a plain Error that says why when its body is not a message (not JSON,
 * a structured CloudEvent without `specversion`): the delivery is then poison.
 */
export function decodeInbound(inbound: InboundMessage): DecodedMessage {
  const metadata = inbound.metadata;
  const value = parseJson(inbound.body);
  if (isStructuredContentType(metadata.contentType)) return fromStructured(inbound, value);
  if (metadata.specversion === undefined && isLegacyEnvelope(value)) return fromLegacyEnvelope(inbound, value);
  return fromMetadata(inbound, value, metadata.contentType ?? JSON_CONTENT_TYPE);
}

/** What can be said of a delivery whose body is not a message (poison): its metadata, and its bytes as they came. */
export function undecoded(inbound: InboundMessage): DecodedMessage {
  const text = typeof inbound.body === 'string' ? inbound.body : inbound.body.toString('utf8');
  return fromMetadata(inbound, text, inbound.metadata.contentType);
}

/** A message whose context is what the broker's fields say, the bytes carried on as they came. */
function fromMetadata(inbound: InboundMessage, message: unknown, contentType: string | undefined): DecodedMessage {
  const metadata = inbound.metadata;
  return {
    message,
    id: messageIdOf(inbound),
    publishedAt: metadata.time ?? metadata.brokerTime ?? Date.now(),
    attempt: metadata.attempt ?? 1,
    headers: inbound.headers,
    correlationId: metadata.correlationId,
    key: metadata.key,
    type: metadata.type,
    source: metadata.source,
    body: inbound.body,
    contentType,
  };
}

/** The message to send for a retry or a dead letter of `decoded`: same bytes, same id, new attempt and headers. */
export function outboundOf(
  decoded: DecodedMessage,
  defaults: { readonly event: string; readonly source: string },
  attempt: number,
  headers: Readonly<Record<string, string>>,
  delayMs?: number,
): OutboundMessage {
  return {
    body: decoded.body,
    messageId: decoded.id,
    publishedAt: decoded.publishedAt,
    type: decoded.type ?? defaults.event,
    source: decoded.source ?? defaults.source,
    contentType: decoded.contentType,
    attempt,
    key: decoded.key,
    correlationId: decoded.correlationId,
    delayMs,
    headers,
  };
}

function parseJson(body: string | Buffer): unknown {
  const text = typeof body === 'string' ? body : body.toString('utf8');
  try {
    return JSON.parse(text);
  } catch {
    throw new Error('body is not JSON');
  }
}

/**
 * The id of a message: its CloudEvents id, else the broker's own id, else a digest of its bytes.
 * Each is the same on every redelivery of one message (a digest also for two equal bodies).
 */
function messageIdOf(inbound: InboundMessage): string {
  const metadata = inbound.metadata;
  if (metadata.id !== undefined) return metadata.id;
  if (metadata.brokerMessageId !== undefined) return metadata.brokerMessageId;
  return `sha256:${createHash('sha256').update(inbound.body).digest('hex').slice(0, 32)}`;
}

/** The structured content mode: the body is a CloudEvent in JSON; its `data` is the message. */
function fromStructured(inbound: InboundMessage, value: unknown): DecodedMessage {
  if (typeof value !== 'object' || value === null || Array.isArray(value) || typeof (value as Record<string, unknown>).specversion !== 'string') {
    throw new Error('body is a structured CloudEvent without specversion');
  }
  const event = value as Record<string, unknown>;
  const attributes: Mutable<InboundMetadata> = {};
  const headers: Record<string, string> = {};
  for (const [name, attribute] of Object.entries(event)) {
    if (name === 'data' || name === 'data_base64' || name === 'datacontenttype') continue;
    if ((Object.values(CE_ATTRIBUTES) as string[]).includes(name)) setAttribute(attributes, name, attribute);
    else if (attribute !== null && typeof attribute !== 'object') headers[name] = attributeText(attribute);
  }
  let message: unknown = 'data' in event ? event.data : null;
  if (typeof event.data_base64 === 'string') {
    const text = Buffer.from(event.data_base64, 'base64').toString('utf8');
    try {
      message = JSON.parse(text);
    } catch {
      message = text;
    }
  }
  const metadata = inbound.metadata;
  // The broker's fields (a retry's attempt, say) are newer than the body's.
  return {
    message,
    id: metadata.id ?? attributes.id ?? messageIdOf(inbound),
    publishedAt: metadata.time ?? attributes.time ?? metadata.brokerTime ?? Date.now(),
    attempt: metadata.attempt ?? attributes.attempt ?? 1,
    headers: { ...headers, ...inbound.headers },
    correlationId: metadata.correlationId ?? attributes.correlationId,
    key: metadata.key ?? attributes.key,
    type: metadata.type ?? attributes.type,
    source: metadata.source ?? attributes.source,
    body: inbound.body,
    contentType: metadata.contentType,
  };
}

/** The envelope of 0.1.0, still read so that messages on a queue during an upgrade are not lost. */
interface LegacyEnvelope {
  v: 1;
  id: string;
  publishedAt: number;
  attempt: number;
  headers: Record<string, string>;
  correlationId?: string;
  key?: string;
  message: unknown;
}

function isLegacyEnvelope(value: unknown): value is LegacyEnvelope {
  if (typeof value !== 'object' || value === null) return false;
  const envelope = value as Partial<LegacyEnvelope>;
  return (
    envelope.v === 1 &&
    typeof envelope.id === 'string' &&
    typeof envelope.publishedAt === 'number' &&
    typeof envelope.attempt === 'number' &&
    typeof envelope.headers === 'object' &&
    envelope.headers !== null &&
    'message' in envelope
  );
}

/** A retry or dead letter of it goes on in today's format: the message's own JSON. */
function fromLegacyEnvelope(inbound: InboundMessage, envelope: LegacyEnvelope): DecodedMessage {
  const headers: Record<string, string> = { ...inbound.headers };
  for (const [name, value] of Object.entries(envelope.headers)) if (typeof value === 'string') headers[name] = value;
  return {
    message: envelope.message,
    id: envelope.id,
    publishedAt: envelope.publishedAt,
    attempt: envelope.attempt,
    headers,
    correlationId: typeof envelope.correlationId === 'string' ? envelope.correlationId : undefined,
    key: typeof envelope.key === 'string' ? envelope.key : undefined,
    body: JSON.stringify(envelope.message) ?? 'null',
    contentType: JSON_CONTENT_TYPE,
  };
}
