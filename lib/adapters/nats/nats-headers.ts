import { headers as natsHeaders, type MsgHdrs } from 'nats';
import { BrokerError } from '../../errors';
import type { InboundMessage, InboundMetadata, OutboundMessage } from '../broker-adapter';
import { CE_ATTRIBUTES, cloudEventNames, CLOUDEVENTS_SPEC_VERSION, formatRecentTime, setAttribute, type Mutable } from '../cloudevents';

/**
 * The wire format on NATS (CloudEvents NATS protocol binding, binary content mode): the payload is
 * the message's bytes, each context attribute a `ce-<name>` header, `datacontenttype` the
 * `content-type` header. Application headers (the user's, the dead-letter `x-ductape-*` ones) are
 * plain headers beside them.
 */
export const CE_PREFIX = 'ce-';
export const CONTENT_TYPE_HEADER = 'content-type';
/** When a delayed publish is due (epoch ms), on the held stream only: the mover drops it when it moves the message. */
export const DUE_HEADER = 'x-ductape-due';
/** NATS's own headers (`Nats-Msg-Id`, `Nats-Expected-*`): the server acts on them, so they are never copied into a retry or a dead letter. */
const NATS_HEADER_PREFIX = 'nats-';

const MAPPED_HEADERS: ReadonlySet<string> = new Set(Object.values(CE_ATTRIBUTES).map((name) => CE_PREFIX + name));
/** A header name: printable ASCII without ':' (NATS headers follow HTTP/1 field names). */
const HEADER_NAME = /^[!-9;-~]+$/;

/** Refuses, before anything is sent, application headers NATS cannot carry or that collide with the binding's. */
export function checkHeaders(headers: Readonly<Record<string, string>>): void {
  for (const name in headers) {
    const lower = name.toLowerCase();
    if (MAPPED_HEADERS.has(lower) || lower === CONTENT_TYPE_HEADER || lower === DUE_HEADER) {
      throw new BrokerError('INVALID_MESSAGE', `header '${name}' is reserved on NATS, where the message's CloudEvents attributes travel as ce- headers and its content type as content-type: give it another name`);
    }
    if (lower.startsWith(NATS_HEADER_PREFIX)) {
      throw new BrokerError('INVALID_MESSAGE', `header '${name}' is reserved: NATS acts on its own Nats- headers (deduplication, expectations)`);
    }
    if (!HEADER_NAME.test(name)) throw new BrokerError('INVALID_MESSAGE', `header '${name.slice(0, 60)}' is not a valid NATS header name (printable ASCII, no ':' or spaces)`);
    if (/[\r\n]/.test(headers[name])) throw new BrokerError('INVALID_MESSAGE', `header '${name}' has a line break in its value, which NATS headers cannot carry`);
  }
}

/** The NATS headers of a message: its CloudEvents attributes, its content type, its application headers, and `extra`. */
export function toNatsHeaders(message: OutboundMessage, extra?: Readonly<Record<string, string>>): MsgHdrs {
  const result = natsHeaders();
  // Set one by one, as writeCloudEventHeaders would name them: this is on every publish.
  result.set(CE.specversion, CLOUDEVENTS_SPEC_VERSION);
  result.set(CE.id, message.messageId);
  result.set(CE.source, message.source);
  result.set(CE.type, message.type);
  result.set(CE.time, formatRecentTime(message.publishedAt));
  if (message.correlationId !== undefined) result.set(CE.correlationId, message.correlationId);
  if (message.key !== undefined) result.set(CE.key, message.key);
  if (message.attempt > 1) result.set(CE.attempt, String(message.attempt));
  if (message.contentType !== undefined) result.set(CONTENT_TYPE_HEADER, message.contentType);
  const application = message.headers;
  for (const name in application) {
    // A retry's headers come from a delivery, which never holds these; a publish was checked.
    const lower = name.toLowerCase();
    if (MAPPED_HEADERS.has(lower) || lower === CONTENT_TYPE_HEADER || lower === DUE_HEADER || lower.startsWith(NATS_HEADER_PREFIX)) continue;
    result.set(name, application[name]);
  }
  if (extra) for (const name in extra) result.set(name, extra[name]);
  return result;
}

const CE = cloudEventNames(CE_PREFIX);


/** Headers of a delivery as strings (the first value of a repeated one), by their name as sent. */
export function headerTable(hdrs: MsgHdrs | undefined): Record<string, string> {
  const table: Record<string, string> = {};
  if (!hdrs) return table;
  for (const name of hdrs.keys()) {
    const value = hdrs.values(name)[0];
    if (value !== undefined) table[name] = value;
  }
  return table;
}

/** `ce-<attribute>` (lower case) → attribute, for the attributes this module maps. */
const ATTRIBUTE_OF: ReadonlyMap<string, string> = new Map(Object.values(CE_ATTRIBUTES).map((name) => [CE_PREFIX + name, name]));

/**
 * A stored message as the delivery layer reads it: its metadata from the `ce-` headers (any case)
 * and `content-type`; its broker id a plain producer's `Nats-Msg-Id`, else `<stream>/<sequence>`
 * (the same for every group and every redelivery); its time the stream's timestamp. One pass over
 * the headers: this is on every delivery.
 */
export function inboundMessage(data: Uint8Array, hdrs: MsgHdrs | undefined, stream: string, sequence: number, timestampNanos: number, raw: unknown): InboundMessage {
  const metadata: Mutable<InboundMetadata> = {};
  const headers: Record<string, string> = {};
  let msgId: string | undefined;
  if (hdrs) {
    for (const name of hdrs.keys()) {
      const value = hdrs.values(name)[0];
      if (value === undefined) continue;
      const lower = name.toLowerCase();
      const attribute = ATTRIBUTE_OF.get(lower);
      if (attribute !== undefined) setAttribute(metadata, attribute, value);
      else if (lower === CONTENT_TYPE_HEADER) {
        if (value !== '') metadata.contentType = value;
      } else if (lower.startsWith(NATS_HEADER_PREFIX)) {
        if (lower === 'nats-msg-id') msgId = value;
      } else if (lower !== DUE_HEADER) headers[name] = value;
    }
  }
  const copy = `${stream}/${sequence}`;
  metadata.deliveryId = copy;
  metadata.brokerMessageId = msgId !== undefined && msgId !== '' ? msgId : copy;
  if (timestampNanos > 0) metadata.brokerTime = Math.floor(timestampNanos / 1e6);
  const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return { body, headers, metadata, raw };
}
