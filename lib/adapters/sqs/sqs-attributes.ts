/** SQS's limit of message attributes per message (SNS raw delivery to SQS has the same). */
export const MAX_ATTRIBUTES = 10;
/** SQS's and SNS's limit of one message, body and attributes together. */
export const MAX_MESSAGE_BYTES = 256 * 1024;
/**
 * Kept free on publish: a dead letter carries its x-ductape-* headers twice (inside the envelope
 * and as attributes), about 2.3 KB with the longest ASCII error text. A message published up to
 * the very limit could not be dead-lettered (SQS refuses it), and its handler would run on, once a
 * second. With a longer (non-ASCII) error text, the attribute's copy is cut to fit.
 */
export const DEAD_LETTER_HEADROOM_BYTES = 4 * 1024;
export const MESSAGE_ID_ATTRIBUTE = 'message-id';
export const CORRELATION_ID_ATTRIBUTE = 'correlation-id';
/** Holds, as JSON, the headers that did not fit in attributes of their own. */
export const OVERFLOW_ATTRIBUTE = 'x-ductape-headers';

/** The shape SQS and SNS share for a string attribute. */
export interface StringAttribute {
  DataType: 'String';
  StringValue: string;
}

/**
 * Transport headers as message attributes. SQS takes at most 10, with restricted names and no
 * empty values: while they fit, each header is its own attribute; beyond, 9 stay (ours first) and
 * the rest travel as JSON in one more. Our envelope also carries the message's headers inside it.
 */
export function toAttributes(headers: Readonly<Record<string, string>>, messageId: string, correlationId?: string): Record<string, StringAttribute> {
  const all: [string, string][] = [];
  if (messageId) all.push([MESSAGE_ID_ATTRIBUTE, messageId]);
  if (correlationId) all.push([CORRELATION_ID_ATTRIBUTE, correlationId]);
  for (const [name, value] of Object.entries(headers)) {
    if (name === MESSAGE_ID_ATTRIBUTE || name === CORRELATION_ID_ATTRIBUTE || name === OVERFLOW_ATTRIBUTE) continue;
    all.push([name, value]);
  }
  // Ours first, so the ones the delivery layer reads keep their own attribute.
  all.sort(([a], [b]) => rank(a) - rank(b));
  // A value SQS (or an emulator) could refuse goes in the overflow, JSON-escaped.
  const fitting = all.filter(([name, value]) => isAttributeName(name) && value !== '' && !UNSAFE_TEXT.test(value));
  const attributes: Record<string, StringAttribute> = {};
  if (fitting.length === all.length && all.length <= MAX_ATTRIBUTES) {
    for (const [name, value] of all) attributes[name] = { DataType: 'String', StringValue: value };
    return attributes;
  }
  const own = fitting.slice(0, MAX_ATTRIBUTES - 1);
  const ownNames = new Set(own.map(([name]) => name));
  for (const [name, value] of own) attributes[name] = { DataType: 'String', StringValue: value };
  const rest = Object.fromEntries(all.filter(([name]) => !ownNames.has(name)));
  attributes[OVERFLOW_ATTRIBUTE] = { DataType: 'String', StringValue: escapeForSqs(JSON.stringify(rest)) };
  return attributes;
}

/** Message attributes as received (SQS's shape) back to transport headers. */
export function fromAttributes(attributes: Record<string, { StringValue?: string; DataType?: string }> | undefined): Record<string, string> {
  const headers: Record<string, string> = {};
  if (!attributes) return headers;
  let overflow: string | undefined;
  for (const [name, attribute] of Object.entries(attributes)) {
    if (attribute.StringValue === undefined) continue;
    if (name === OVERFLOW_ATTRIBUTE) overflow = attribute.StringValue;
    else headers[name] = attribute.StringValue;
  }
  if (overflow !== undefined) {
    try {
      const parsed = JSON.parse(overflow) as unknown;
      if (typeof parsed === 'object' && parsed !== null) {
        for (const [name, value] of Object.entries(parsed)) if (typeof value === 'string') headers[name] ??= value;
      }
    } catch {
      headers[OVERFLOW_ATTRIBUTE] = overflow;
    }
  }
  return headers;
}

/** Bytes SQS counts for a message: its body and every attribute's name, type and value. */
export function messageBytes(body: string, attributes: Record<string, StringAttribute>): number {
  let bytes = Buffer.byteLength(body, 'utf8');
  for (const [name, attribute] of Object.entries(attributes)) {
    bytes += Buffer.byteLength(name, 'utf8') + attribute.DataType.length + Buffer.byteLength(attribute.StringValue, 'utf8');
  }
  return bytes;
}

/** Characters outside what every SQS takes in a string: controls, surrogates, U+FFFE/U+FFFF, and astral ones (emulators refuse those). */
// eslint-disable-next-line no-control-regex -- the control characters SQS takes are the point
const UNSAFE_TEXT = /[^\x09\x0A\x0D\x20-\uD7FF\uE000-\uFFFD]/;

function rank(name: string): number {
  if (name === MESSAGE_ID_ATTRIBUTE || name === CORRELATION_ID_ATTRIBUTE) return 0;
  return name.startsWith('x-ductape-') ? 1 : 2;
}

/** SQS attribute names: up to 256 of [A-Za-z0-9_.-], no leading, trailing or double '.', no AWS./Amazon. prefix. */
function isAttributeName(name: string): boolean {
  return (
    /^[A-Za-z0-9_.-]{1,256}$/.test(name) &&
    !name.startsWith('.') &&
    !name.endsWith('.') &&
    !name.includes('..') &&
    !/^(aws|amazon)\./i.test(name)
  );
}

/**
 * A JSON text with every character outside the Basic Multilingual Plane, and U+FFFE/U+FFFF, written
 * as \\u escapes: the same JSON value, in characters every SQS accepts. SQS refuses U+FFFE and
 * U+FFFF, and emulators (fauxqs) refuse astral characters too, which only appear inside strings.
 */
export function escapeForSqs(json: string): string {
  return json.replace(/[\u{10000}-\u{10FFFF}\uFFFE\uFFFF]/gu, (char) => {
    let escaped = '';
    for (let i = 0; i < char.length; i++) escaped += `\\u${char.charCodeAt(i).toString(16).padStart(4, '0')}`;
    return escaped;
  });
}
