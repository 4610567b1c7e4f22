import type { Message } from '@aws-sdk/client-sqs';
import { DEAD_LETTER_HEADERS } from '../../constants';
import type { InboundMetadata, OutboundMessage } from '../broker-adapter';
import { CE_ATTRIBUTES, JSON_CONTENT_TYPE, readCloudEventHeaders, writeCloudEventHeaders } from '../cloudevents';

/** SQS's limit of message attributes per message (SNS raw delivery to SQS has the same). */
export const MAX_ATTRIBUTES = 10;
/** SQS's and SNS's limit of one message, body and attributes together. */
export const MAX_MESSAGE_BYTES = 256 * 1024;
/**
 * Kept free on publish for what a dead letter adds: its x-ductape-* attributes, about 1.2 KB with
 * the longest ASCII error text and 3.2 KB when its 1000 characters take 3 bytes each. A message
 * published up to the very limit could not be dead-lettered (SQS refuses it), and its handler
 * would run on, once a second. An error text that still does not fit (control characters take 6
 * bytes each in the overflow's JSON) is cut.
 */
export const DEAD_LETTER_HEADROOM_BYTES = 4 * 1024;
/**
 * SQS has no CloudEvents binding. Its attributes are named as in the Pub/Sub binding (the other
 * attribute-map broker): `ce-<attribute>`, and `content-type` for `datacontenttype`. The draft
 * SNS binding's `ce_<attribute>` (Kafka's spelling) and `ce-datacontenttype` are read too.
 */
export const CE_PREFIX = 'ce-';
const CE_PREFIXES = [CE_PREFIX, 'ce_'];
export const CONTENT_TYPE_ATTRIBUTE = 'content-type';
const CONTENT_TYPE_ALIASES = [CONTENT_TYPE_ATTRIBUTE, 'ce-datacontenttype', 'ce_datacontenttype'];
/** Holds, as JSON, the attributes that did not fit in attributes of their own. */
export const OVERFLOW_ATTRIBUTE = 'x-ductape-headers';
/** The FIFO message group of messages published without a key: one group, so one order. */
export const DEFAULT_MESSAGE_GROUP = 'default';

/** The shape SQS and SNS share for a string attribute. */
export interface StringAttribute {
  DataType: 'String';
  StringValue: string;
}

export interface AttributeOptions {
  /**
   * The key travels as the FIFO message group id (which it equals): no `ce-partitionkey`. Only
   * for a key that is its own group id (printable ASCII, at most 128) and not the default group.
   */
  keyAsGroupId?: boolean;
  /** A dead letter: its attempt travels once, as x-ductape-attempts, not also as `ce-ductapeattempt`. */
  deadLetter?: boolean;
  /**
   * A first publish: its time is SQS's own SentTimestamp (the consumer reads it as the broker's
   * time), so no `ce-time`. A retry or a dead letter carries the original time as `ce-time`.
   */
  timeFromBroker?: boolean;
}

/** The CloudEvents attributes any reader needs (the required ones): their own attributes first. */
const REQUIRED = new Set([CE_ATTRIBUTES.specversion, CE_ATTRIBUTES.id, CE_ATTRIBUTES.source, CE_ATTRIBUTES.type].map((name) => CE_PREFIX + name));
const OPTIONAL = new Set(
  [CE_ATTRIBUTES.time, CE_ATTRIBUTES.correlationId, CE_ATTRIBUTES.key, CE_ATTRIBUTES.attempt].map((name) => CE_PREFIX + name).concat(CONTENT_TYPE_ATTRIBUTE),
);
/** Names this module writes itself: an application header of one of these names is not carried over it. */
const RESERVED = new Set([...REQUIRED, ...OPTIONAL, OVERFLOW_ATTRIBUTE]);

/**
 * A message's metadata and headers as message attributes. SQS takes at most 10, with restricted
 * names and no empty values: while they fit, each is its own attribute; beyond, 9 stay and the rest
 * travel as JSON in one more (x-ductape-headers). Kept first: the required CloudEvents attributes,
 * then a dead letter's x-ductape-* ones, then the optional CloudEvents attributes, then the
 * application headers in their order.
 *
 * Each attribute costs (measured on the bench: 6 attributes sent 0.85 of a bare SendMessage's
 * rate, 4 of them 0.94), and the 10 are soon used up: what SQS says natively is left out. On a
 * first publish `time` is SQS's SentTimestamp; `application/json`, the content type a body without
 * one is read as, is not written (any other is).
 */
export function toAttributes(message: OutboundMessage, options: AttributeOptions = {}): Record<string, StringAttribute> {
  const metadata: Record<string, string> = {};
  writeCloudEventHeaders(CE_PREFIX, options.deadLetter ? { ...message, attempt: 1 } : message, metadata, {
    omitKey: options.keyAsGroupId,
  });
  if (options.timeFromBroker) delete metadata[CE_PREFIX + CE_ATTRIBUTES.time];
  if (message.contentType !== undefined && message.contentType !== JSON_CONTENT_TYPE) metadata[CONTENT_TYPE_ATTRIBUTE] = message.contentType;
  const all: [string, string][] = [];
  for (const name in metadata) if (REQUIRED.has(name)) all.push([name, metadata[name]]);
  const headers = message.headers;
  for (const name in headers) if (name.startsWith('x-ductape-') && !RESERVED.has(name)) all.push([name, headers[name]]);
  for (const name in metadata) if (!REQUIRED.has(name)) all.push([name, metadata[name]]);
  for (const name in headers) if (!name.startsWith('x-ductape-') && !RESERVED.has(name)) all.push([name, headers[name]]);
  return pack(all);
}

function pack(all: [string, string][]): Record<string, StringAttribute> {
  const attributes: Record<string, StringAttribute> = {};
  let fits = all.length <= MAX_ATTRIBUTES;
  for (let i = 0; fits && i < all.length; i++) fits = isAttribute(all[i][0], all[i][1]);
  if (fits) {
    for (const [name, value] of all) attributes[name] = { DataType: 'String', StringValue: value };
    return attributes;
  }
  // A value SQS (or an emulator) could refuse, or a name it does not take, goes in the overflow, JSON-escaped.
  const rest: Record<string, string> = {};
  let own = 0;
  for (const [name, value] of all) {
    if (own < MAX_ATTRIBUTES - 1 && isAttribute(name, value)) {
      attributes[name] = { DataType: 'String', StringValue: value };
      own++;
    } else rest[name] = value;
  }
  attributes[OVERFLOW_ATTRIBUTE] = { DataType: 'String', StringValue: escapeForSqs(JSON.stringify(rest), true) };
  return attributes;
}

/** What a received message's attributes say: its metadata, and the rest as application headers (strings). */
export interface ReadAttributes {
  metadata: InboundMetadata;
  headers: Record<string, string>;
}

/**
 * Reads a received message: the CloudEvents attributes into metadata, SQS's MessageId and
 * SentTimestamp as the broker's id and time, and on a FIFO queue a foreign message's group id as
 * its key. Every other string (or number) attribute is an application header.
 */
export function readMessage(message: Message): ReadAttributes {
  const attributes = stringAttributes(message.MessageAttributes);
  let contentType: string | undefined;
  for (const name of CONTENT_TYPE_ALIASES) {
    if (attributes[name] === undefined) continue;
    contentType ??= attributes[name];
    delete attributes[name];
  }
  const { metadata, headers } = readCloudEventHeaders(CE_PREFIXES, attributes);
  if (contentType !== undefined) metadata.contentType = contentType;
  if (message.MessageId !== undefined) metadata.brokerMessageId = message.MessageId;
  const sent = Number(message.Attributes?.SentTimestamp);
  if (Number.isFinite(sent) && sent > 0) metadata.brokerTime = sent;
  const group = message.Attributes?.MessageGroupId;
  // Ours carry the key in the group id when it is one (see keyAsGroupId); a key-less one of ours is in the default group.
  if (metadata.key === undefined && group !== undefined && !(metadata.specversion !== undefined && group === DEFAULT_MESSAGE_GROUP)) metadata.key = group;
  if (metadata.specversion === undefined && isLegacyEnvelope(message.Body)) {
    // 0.1.0 copied the envelope's id and correlation id into attributes of these names: not application headers.
    delete headers[LEGACY_MESSAGE_ID];
    delete headers[LEGACY_CORRELATION_ID];
  }
  return { metadata, headers };
}

const LEGACY_MESSAGE_ID = 'message-id';
const LEGACY_CORRELATION_ID = 'correlation-id';

/** 0.1.0's envelope, as it wrote it: JSON.stringify of an object whose first members are v: 1 and id. */
function isLegacyEnvelope(body: string | undefined): boolean {
  return body !== undefined && body.startsWith('{"v":1,"id":');
}

/** String and number attributes by name, with the overflow's unpacked (an attribute of its own wins). */
function stringAttributes(attributes: Message['MessageAttributes']): Record<string, string> {
  const strings: Record<string, string> = {};
  if (!attributes) return strings;
  let overflow: string | undefined;
  for (const name in attributes) {
    const value = attributes[name].StringValue;
    if (value === undefined) continue;
    if (name === OVERFLOW_ATTRIBUTE) overflow = value;
    else strings[name] = value;
  }
  if (overflow !== undefined) {
    try {
      const parsed = JSON.parse(overflow) as unknown;
      if (typeof parsed === 'object' && parsed !== null) {
        for (const [name, value] of Object.entries(parsed)) if (typeof value === 'string') strings[name] ??= value;
      }
    } catch {
      strings[OVERFLOW_ATTRIBUTE] = overflow;
    }
  }
  return strings;
}

/** Bytes SQS counts for a message: its body and every attribute's name, type and value. */
export function messageBytes(body: string, attributes: Record<string, StringAttribute>): number {
  let bytes = Buffer.byteLength(body, 'utf8');
  for (const name in attributes) {
    const attribute = attributes[name];
    bytes += Buffer.byteLength(name, 'utf8') + attribute.DataType.length + Buffer.byteLength(attribute.StringValue, 'utf8');
  }
  return bytes;
}

/**
 * A dead letter's attributes within SQS's size, its body being the original bytes. A message near
 * the limit, from a producer that left no room, may not fit with the error text (a control
 * character takes 6 bytes in the overflow's JSON): the text is cut. Without it, SQS refused the
 * dead letter and the handler ran again, once a second.
 */
export function deadLetterAttributes(message: OutboundMessage, body: string, options: AttributeOptions): Record<string, StringAttribute> {
  const attributes = toAttributes(message, { ...options, deadLetter: true });
  const error = message.headers[DEAD_LETTER_HEADERS.error];
  const over = messageBytes(body, attributes) - MAX_MESSAGE_BYTES;
  if (over <= 0 || error === undefined) return attributes;
  // Each character takes at least one byte: cutting `over` of them (and 3 for the ellipsis) is enough.
  const cut = `${error.slice(0, Math.max(0, error.length - over - 3)).replace(/[\uD800-\uDBFF]$/, '')}…`;
  return toAttributes({ ...message, headers: { ...message.headers, [DEAD_LETTER_HEADERS.error]: cut } }, { ...options, deadLetter: true });
}

/** Characters outside what every SQS takes in a string: controls, surrogates, U+FFFE/U+FFFF, and astral ones (emulators refuse those). */
// eslint-disable-next-line no-control-regex -- the control characters SQS takes are the point
const UNSAFE_TEXT = /[^\x09\x0A\x0D\x20-\uD7FF\uE000-\uFFFD]/;
/** Characters outside the Basic Multilingual Plane. */
export const ASTRAL = /[\u{10000}-\u{10FFFF}]/u;

/** SQS attribute names: up to 256 of [A-Za-z0-9_.-], no leading, trailing or double '.', no AWS./Amazon. prefix; values not empty. */
function isAttribute(name: string, value: string): boolean {
  return (
    value !== '' &&
    !UNSAFE_TEXT.test(value) &&
    /^[A-Za-z0-9_.-]{1,256}$/.test(name) &&
    !name.startsWith('.') &&
    !name.endsWith('.') &&
    !name.includes('..') &&
    !/^(aws|amazon)\./i.test(name)
  );
}

/**
 * A JSON text with U+FFFE and U+FFFF (which SQS refuses, and JSON.stringify leaves as they are)
 * written as \\u escapes, and with `astral`, every character outside the Basic Multilingual Plane
 * too (emulators such as fauxqs refuse those; real SQS takes them): the same JSON value, in
 * characters the endpoint accepts. They only appear inside strings.
 */
export function escapeForSqs(json: string, astral: boolean): string {
  const unsafe = astral ? /[\u{10000}-\u{10FFFF}\uFFFE\uFFFF]/gu : /[\uFFFE\uFFFF]/g;
  return json.replace(unsafe, (char) => {
    let escaped = '';
    for (let i = 0; i < char.length; i++) escaped += `\\u${char.charCodeAt(i).toString(16).padStart(4, '0')}`;
    return escaped;
  });
}
