import { BrokerError } from '../errors';

/**
 * What travels on the wire: the message and what a handler's BrokerContext needs besides its route.
 * The event, env and product are not carried: the consumer's context takes them from its own route,
 * as it always did (they cost every message about 50 bytes of JSON for nothing).
 * Envelopes that still carry them, from earlier versions, decode the same.
 */
export interface Envelope<T = unknown> {
  /** Format version. */
  v: 1;
  id: string;
  /** Epoch milliseconds (a number: no date formatting or parsing on the hot path). */
  publishedAt: number;
  /** 1-based delivery attempt this body is for. */
  attempt: number;
  headers: Record<string, string>;
  correlationId?: string;
  key?: string;
  message: T;
}

/**
 * Encodes an envelope as UTF-8 JSON, once per message. Refuses, with INVALID_MESSAGE, what JSON
 * cannot carry faithfully (undefined, functions, circular structures, BigInt) and bodies over
 * `maxBytes`.
 */
export function encodeEnvelope(envelope: Envelope, maxBytes: number): string {
  const message = envelope.message;
  if (message === undefined || typeof message === 'function' || typeof message === 'symbol') {
    throw new BrokerError('INVALID_MESSAGE', `message must be JSON-serialisable (got ${typeof message})`);
  }
  let body: string;
  try {
    body = JSON.stringify(envelope);
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

/** Decodes a body into an envelope, or throws a plain Error that says why (the message is then poison). */
export function decodeEnvelope(body: string | Buffer): Envelope {
  const text = typeof body === 'string' ? body : body.toString('utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error('body is not JSON');
  }
  if (!isEnvelope(value)) throw new Error('body is not a Ductape envelope');
  return value;
}

function isEnvelope(value: unknown): value is Envelope {
  if (typeof value !== 'object' || value === null) return false;
  const envelope = value as Partial<Envelope>;
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
