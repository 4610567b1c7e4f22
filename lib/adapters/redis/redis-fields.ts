import { BrokerError } from '../../errors';
import type { InboundMetadata, OutboundMessage } from '../broker-adapter';
import { CE_ATTRIBUTES, cloudEventNames, CLOUDEVENTS_SPEC_VERSION, formatRecentTime, setAttribute, type Mutable } from '../cloudevents';

/**
 * The fields of a stream entry, after the CloudEvents binary content mode (Redis has no binding of
 * its own; the `ce-<name>` spelling is the one of the NATS, Pub/Sub and HTTP bindings): `data` is
 * the body as it is (the message's JSON), each context attribute a `ce-<name>` field,
 * `datacontenttype` the `content-type` field, and application headers plain fields beside them.
 * A plain client's `XADD <topic> * data '{"orderId":1}'` is a message.
 */
export const DATA_FIELD = 'data';
export const CE_PREFIX = 'ce-';
export const CONTENT_TYPE_FIELD = 'content-type';

const CE = cloudEventNames(CE_PREFIX);

/** `ce-<attribute>` → attribute, for the attributes this module maps into metadata. */
const MAPPED_ATTRIBUTES: ReadonlyMap<string, string> = new Map(Object.values(CE_ATTRIBUTES).map((attribute) => [CE_PREFIX + attribute, attribute]));

/** Field names a header may not take: what the adapter writes or reads back as the body or metadata. */
const RESERVED_FIELDS: ReadonlySet<string> = new Set([...MAPPED_ATTRIBUTES.keys(), CONTENT_TYPE_FIELD, DATA_FIELD]);

/** Refuses, before anything is sent, application headers that would collide with the entry's own fields. */
export function checkHeaders(headers: Readonly<Record<string, string>>): void {
  for (const name in headers) {
    if (RESERVED_FIELDS.has(name)) {
      throw new BrokerError(
        'INVALID_MESSAGE',
        `header '${name}' is reserved on Redis, where the message is the '${DATA_FIELD}' field of the stream entry and its CloudEvents attributes are ce- fields: give it another name`,
      );
    }
  }
}

/** The entry's fields as XADD takes them: name, value, name, value, ... */
export function toFields(message: OutboundMessage): (string | Buffer)[] {
  const fields: (string | Buffer)[] = [
    DATA_FIELD,
    message.body,
    CE.specversion,
    CLOUDEVENTS_SPEC_VERSION,
    CE.id,
    message.messageId,
    CE.source,
    message.source,
    CE.type,
    message.type,
    CE.time,
    formatRecentTime(message.publishedAt),
  ];
  if (message.contentType !== undefined) fields.push(CONTENT_TYPE_FIELD, message.contentType);
  if (message.correlationId !== undefined) fields.push(CE.correlationId, message.correlationId);
  if (message.key !== undefined) fields.push(CE.key, message.key);
  if (message.attempt > 1) fields.push(CE.attempt, String(message.attempt));
  const application = message.headers;
  // A publish was checked already; a retry's headers may hold a reserved name from an older
  // format (a 0.1.0 envelope's headers): the fields written above win.
  for (const name in application) if (!RESERVED_FIELDS.has(name)) fields.push(name, application[name]);
  return fields;
}

export interface DecodedEntry {
  body: Buffer;
  headers: Record<string, string>;
  metadata: InboundMetadata;
}

/**
 * An entry as the delivery layer reads it: `data` as the body (an entry without one, from another
 * producer, has an empty body and so goes to the dead letters as poison, its fields kept as
 * headers), its `ce-` fields as metadata, the rest as headers. The stream and entry id give the
 * broker's own id, the same on every delivery of the entry, and the id's milliseconds its time.
 */
export function fromFields(stream: string, id: string, fields: readonly Buffer[]): DecodedEntry {
  const metadata: Mutable<InboundMetadata> = {};
  const headers: Record<string, string> = {};
  let body: Buffer | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i].toString('utf8');
    const value = fields[i + 1];
    if (name === DATA_FIELD && body === undefined) {
      body = value;
      continue;
    }
    const attribute = MAPPED_ATTRIBUTES.get(name);
    if (attribute !== undefined) setAttribute(metadata, attribute, value.toString('utf8'));
    else if (name === CONTENT_TYPE_FIELD) metadata.contentType = value.toString('utf8');
    else headers[name] = value.toString('utf8');
  }
  metadata.brokerMessageId = `${stream}/${id}`;
  const millis = Number(id.slice(0, id.indexOf('-')));
  if (Number.isFinite(millis) && millis > 0) metadata.brokerTime = millis;
  return { body: body ?? Buffer.alloc(0), headers, metadata };
}
