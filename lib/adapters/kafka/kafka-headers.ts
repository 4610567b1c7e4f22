import type { IHeaders, KafkaMessage, Message } from 'kafkajs';
import { BrokerError } from '../../errors';
import type { InboundMetadata, OutboundMessage } from '../broker-adapter';
import { CE_ATTRIBUTES, CLOUDEVENTS_SPEC_VERSION, formatTime, setAttribute, type Mutable } from '../cloudevents';

/**
 * The record a message becomes, after the CloudEvents Kafka protocol binding (binary content
 * mode): the value is the body as it is, each context attribute a `ce_<name>` header,
 * `datacontenttype` the `content-type` header, the key the record key and `time` the record
 * timestamp. Application headers (the user's, the dead-letter `x-ductape-*` ones) are plain
 * headers beside them; the adapter adds only its due time for delayed messages and retries.
 */

/** When a delayed message or a retry is due (epoch ms): its consumer holds it until then. */
export const DUE_HEADER = 'x-ductape-due';
export const CE_PREFIX = 'ce_';
/** The binding's header for `datacontenttype` (and, in structured mode, the event format). */
export const CONTENT_TYPE_HEADER = 'content-type';

/** `ce_<name>` of an attribute: the header names below are literals (a literal object is built fastest), tied to CE_ATTRIBUTES by this type. */
type CeHeader<A extends keyof typeof CE_ATTRIBUTES> = `ce_${(typeof CE_ATTRIBUTES)[A]}`;
type RequiredCeHeaders = { [A in 'specversion' | 'id' | 'source' | 'type' | 'time' as CeHeader<A>]: string };
const CE_CORRELATION_ID: CeHeader<'correlationId'> = 'ce_correlationid';
const CE_ATTEMPT: CeHeader<'attempt'> = 'ce_ductapeattempt';

/** `ce_<attribute>` → attribute, for the attributes this module maps into metadata. */
const MAPPED_ATTRIBUTES: ReadonlyMap<string, string> = new Map(Object.values(CE_ATTRIBUTES).map((attribute) => [CE_PREFIX + attribute, attribute]));

/**
 * Header names a publish may not use: what the adapter writes or reads back as metadata. A user's
 * `ce_partitionkey` would replace the record key as the consumer's key, and `x-ductape-due` would
 * hold the message back. Other `ce_` names (`ce_subject`, ...) are carried as they are.
 */
const RESERVED_HEADERS: ReadonlySet<string> = new Set([...MAPPED_ATTRIBUTES.keys(), CONTENT_TYPE_HEADER, DUE_HEADER]);

/** Refuses, before anything is sent, application headers that would collide with the binding's. */
export function checkHeaders(headers: Readonly<Record<string, string>>): void {
  for (const name in headers) {
    if (RESERVED_HEADERS.has(name)) {
      throw new BrokerError(
        'INVALID_MESSAGE',
        `header '${name}' is reserved on Kafka, where the message's CloudEvents attributes travel as ce_ headers and its content type as content-type: give it another name`,
      );
    }
  }
}

/** The last time formatted: publishes made at once mostly share their millisecond. */
let lastTime = Number.NaN;
let lastTimeText = '';
let lastTimestamp = '';

function formatted(epochMs: number): void {
  if (epochMs === lastTime) return;
  lastTime = epochMs;
  lastTimeText = formatTime(epochMs);
  lastTimestamp = String(epochMs);
}

export interface RecordOptions {
  /** Epoch ms the record is due at (a delayed publish, a retry). */
  dueAt?: number;
  /**
   * Gives the record `publishedAt` as its timestamp (a publish). A retry or a dead letter is a new
   * record on its topic, stamped when written, so retention counts from then; `ce_time` keeps
   * the message's own time.
   */
  stampPublishedAt?: boolean;
}

export function toKafkaMessage(message: OutboundMessage, options: RecordOptions = {}): Message {
  formatted(message.publishedAt);
  const headers: RequiredCeHeaders & IHeaders = {
    ce_specversion: CLOUDEVENTS_SPEC_VERSION,
    ce_id: message.messageId,
    ce_source: message.source,
    ce_type: message.type,
    ce_time: lastTimeText,
  };
  if (message.contentType !== undefined) headers[CONTENT_TYPE_HEADER] = message.contentType;
  if (message.correlationId !== undefined) headers[CE_CORRELATION_ID] = message.correlationId;
  // The key is the record key, the binding's default mapping; no ce_partitionkey besides it.
  if (message.attempt > 1) headers[CE_ATTEMPT] = String(message.attempt);
  const application = message.headers;
  // A publish was checked already; a retry's headers may hold a reserved name from an older
  // format's headers (a 0.1.0 envelope's): the metadata written above wins.
  for (const name in application) if (!RESERVED_HEADERS.has(name)) headers[name] = application[name];
  if (options.dueAt !== undefined) headers[DUE_HEADER] = String(options.dueAt);
  // kafkajs encodes a string value itself: no Buffer copy of the body first.
  const record: Message = { key: message.key ?? null, value: message.body, headers };
  if (options.stampPublishedAt) record.timestamp = lastTimestamp;
  return record;
}

/** A record as the delivery layer reads it: its bytes, its application headers, and its metadata from the binding's headers and the record's own fields. */
export function fromKafkaMessage(topic: string, partition: number, message: KafkaMessage): { body: Buffer; headers: Record<string, string>; metadata: InboundMetadata } {
  const metadata: Mutable<InboundMetadata> = {};
  const headers: Record<string, string> = {};
  const raw = message.headers;
  if (raw !== undefined) {
    for (const name in raw) {
      const text = headerValue(raw[name]);
      if (text === undefined || name === DUE_HEADER) continue;
      const attribute = MAPPED_ATTRIBUTES.get(name);
      if (attribute !== undefined) setAttribute(metadata, attribute, text);
      else if (name === CONTENT_TYPE_HEADER) metadata.contentType = text;
      else headers[name] = text;
    }
  }
  if (metadata.key === undefined && message.key !== null && message.key !== undefined) metadata.key = message.key.toString('utf8');
  // The same on every read of this record, so a record without ce_id keeps one id (a retry carries it as ce_id).
  metadata.brokerMessageId = `${topic}/${partition}/${message.offset}`;
  const timestamp = Number(message.timestamp);
  if (Number.isFinite(timestamp) && timestamp > 0) metadata.brokerTime = timestamp;
  return { body: message.value ?? Buffer.alloc(0), headers, metadata };
}

/** One header as text: kafkajs gives Buffers, or arrays of them when a name repeats (the first is kept). */
function headerValue(value: IHeaders[string]): string | undefined {
  const first = Array.isArray(value) ? value[0] : value;
  if (first === undefined) return undefined;
  return Buffer.isBuffer(first) ? first.toString('utf8') : String(first);
}

export function headerText(headers: IHeaders | undefined, name: string): string | undefined {
  return headers === undefined ? undefined : headerValue(headers[name]);
}
