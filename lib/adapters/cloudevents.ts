import type { InboundMetadata, OutboundMessage } from './broker-adapter';

/**
 * CloudEvents 1.0 binary content mode, the parts every adapter shares. The body is the data; the
 * context attributes travel beside it, each binding naming them its own way: Kafka `ce_<name>`
 * headers, AMQP `cloudEvents:<name>` application properties (RabbitMQ headers), Pub/Sub and NATS
 * `ce-<name>`. `datacontenttype` goes in the broker's content-type field where it has one.
 */
export const CLOUDEVENTS_SPEC_VERSION = '1.0';
export const JSON_CONTENT_TYPE = 'application/json';
/** Media types of the structured content mode start with this (`application/cloudevents+json`, ...). */
export const STRUCTURED_CONTENT_TYPE_PREFIX = 'application/cloudevents';

/**
 * Attribute names (CloudEvents names: lower-case letters and digits). `correlationid` and
 * `ductapeattempt` are extensions of this module; `partitionkey` is the Partitioning extension.
 */
export const CE_ATTRIBUTES = {
  specversion: 'specversion',
  id: 'id',
  source: 'source',
  type: 'type',
  time: 'time',
  correlationId: 'correlationid',
  key: 'partitionkey',
  attempt: 'ductapeattempt',
} as const;

export interface CloudEventHeaderOptions {
  /** Leave `partitionkey` out (a binding that carries the key natively, as Kafka's record key). */
  omitKey?: boolean;
  /** Leave `id` out (a binding that carries it in a native field instead). */
  omitId?: boolean;
}

/**
 * Writes a message's context attributes as prefixed string headers into `into`, and returns it.
 * `ductapeattempt` is written only for a retry (attempt above 1): a first delivery needs none.
 */
export function writeCloudEventHeaders(
  prefix: string,
  message: OutboundMessage,
  into: Record<string, string | Buffer | number>,
  options: CloudEventHeaderOptions = {},
): Record<string, string | Buffer | number> {
  into[prefix + CE_ATTRIBUTES.specversion] = CLOUDEVENTS_SPEC_VERSION;
  if (!options.omitId) into[prefix + CE_ATTRIBUTES.id] = message.messageId;
  into[prefix + CE_ATTRIBUTES.source] = message.source;
  into[prefix + CE_ATTRIBUTES.type] = message.type;
  into[prefix + CE_ATTRIBUTES.time] = formatTime(message.publishedAt);
  if (message.correlationId !== undefined) into[prefix + CE_ATTRIBUTES.correlationId] = message.correlationId;
  if (message.key !== undefined && !options.omitKey) into[prefix + CE_ATTRIBUTES.key] = message.key;
  if (message.attempt > 1) into[prefix + CE_ATTRIBUTES.attempt] = String(message.attempt);
  return into;
}

/** The context attributes of this module's metadata, by their name after `prefix`. */
const KNOWN_ATTRIBUTES: ReadonlySet<string> = new Set(Object.values(CE_ATTRIBUTES));

/**
 * Splits string headers into the context attributes found under any of `prefixes` and the rest.
 * Attributes this module does not map (another producer's extensions, `subject`, `dataschema`)
 * stay among the headers, under their own names, so a retry carries them on unchanged.
 */
export function readCloudEventHeaders(
  prefixes: readonly string[],
  headers: Readonly<Record<string, string>>,
): { metadata: Mutable<InboundMetadata>; headers: Record<string, string> } {
  const metadata: Mutable<InboundMetadata> = {};
  const rest: Record<string, string> = {};
  for (const name in headers) {
    const value = headers[name];
    const attribute = attributeName(prefixes, name);
    if (attribute === undefined || !KNOWN_ATTRIBUTES.has(attribute)) {
      rest[name] = value;
      continue;
    }
    setAttribute(metadata, attribute, value);
  }
  return { metadata, headers: rest };
}

/** Sets one context attribute, given by its CloudEvents name, on `metadata`; unknown names are ignored. */
export function setAttribute(metadata: Mutable<InboundMetadata>, attribute: string, value: unknown): void {
  if (value === undefined || value === null) return;
  const text = attributeText(value);
  switch (attribute) {
    case CE_ATTRIBUTES.specversion:
      metadata.specversion = text;
      break;
    case CE_ATTRIBUTES.id:
      if (text !== '') metadata.id = text;
      break;
    case CE_ATTRIBUTES.source:
      metadata.source = text;
      break;
    case CE_ATTRIBUTES.type:
      metadata.type = text;
      break;
    case CE_ATTRIBUTES.time: {
      const time = value instanceof Date ? value.getTime() : parseTime(text);
      if (time !== undefined) metadata.time = time;
      break;
    }
    case CE_ATTRIBUTES.correlationId:
      metadata.correlationId = text;
      break;
    case CE_ATTRIBUTES.key:
      metadata.key = text;
      break;
    case CE_ATTRIBUTES.attempt: {
      const attempt = Number(text);
      if (Number.isInteger(attempt) && attempt >= 1) metadata.attempt = attempt;
      break;
    }
  }
}

/** A header or attribute value as text: strings, bytes, numbers, booleans, dates; JSON for anything else. */
export function attributeText(value: unknown): string {
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (value instanceof Date) return value.toISOString();
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  return JSON.stringify(value) ?? '';
}

function attributeName(prefixes: readonly string[], name: string): string | undefined {
  for (const prefix of prefixes) if (name.startsWith(prefix)) return name.slice(prefix.length);
  return undefined;
}

/** RFC 3339 in UTC, as CloudEvents `time` wants it. */
export function formatTime(epochMs: number): string {
  return new Date(epochMs).toISOString();
}

/** The last time formatted by formatRecentTime: publishes made at once mostly share their millisecond. */
let recentTime = Number.NaN;
let recentTimeText = '';

/** formatTime, remembering the last millisecond formatted (a publish's hot path). */
export function formatRecentTime(epochMs: number): string {
  if (epochMs !== recentTime) {
    recentTime = epochMs;
    recentTimeText = formatTime(epochMs);
  }
  return recentTimeText;
}

/** The header (or field) names of the CloudEvents attributes this module maps, after `prefix` (`ce-`, `ce_`, ...). */
export function cloudEventNames(prefix: string): { readonly [K in keyof typeof CE_ATTRIBUTES]: string } {
  const names = {} as Record<keyof typeof CE_ATTRIBUTES, string>;
  for (const key of Object.keys(CE_ATTRIBUTES) as (keyof typeof CE_ATTRIBUTES)[]) names[key] = prefix + CE_ATTRIBUTES[key];
  return names;
}

/** Epoch milliseconds of an RFC 3339 timestamp; undefined when it is not one. */
export function parseTime(text: string): number | undefined {
  const time = Date.parse(text);
  return Number.isNaN(time) ? undefined : time;
}

/** True for a structured-mode media type (`application/cloudevents+json; charset=utf-8`, ...). */
export function isStructuredContentType(contentType: string | undefined): boolean {
  return contentType !== undefined && contentType.toLowerCase().startsWith(STRUCTURED_CONTENT_TYPE_PREFIX);
}

export type Mutable<T> = { -readonly [K in keyof T]: T[K] };
