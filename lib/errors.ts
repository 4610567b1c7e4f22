/**
 * Stable codes of every error the module throws; they are part of the public API. `INVALID_*` (and
 * the `*_NOT_FOUND` codes) are mistakes in what the caller asked, found before anything reached a
 * broker; `PUBLISH_FAILED` and `SUBSCRIBE_FAILED` are what the broker (or the module's state) did.
 */
export type BrokerErrorCode =
  | 'CONFIG_INVALID'
  | 'INVALID_EVENT'
  | 'PRODUCT_NOT_FOUND'
  | 'BROKER_NOT_FOUND'
  | 'BROKER_ENV_NOT_FOUND'
  | 'TOPIC_NOT_FOUND'
  | 'INVALID_MESSAGE'
  | 'INVALID_SUBSCRIPTION'
  | 'INVALID_REQUEST'
  | 'PUBLISH_FAILED'
  | 'SUBSCRIBE_FAILED'
  | 'REPROCESS_INCOMPLETE';

export interface BrokerErrorOptions {
  cause?: unknown;
  /** For CONFIG_INVALID: every problem found, each naming its field. */
  problems?: string[];
}

/**
 * The one error type of the module. `code` is stable; `message` is for people and never contains
 * credentials (callers pass connection strings through `redactSecrets` before they reach it).
 */
export class BrokerError extends Error {
  readonly code: BrokerErrorCode;
  /** Every problem found (CONFIG_INVALID and a few input errors); empty otherwise. */
  declare readonly problems: readonly string[];

  constructor(code: BrokerErrorCode, message: string, options: BrokerErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BrokerError';
    this.code = code;
    const problems = options.problems ?? [];
    // Not enumerable when empty: a log or an inspection of the error then shows no `problems: []`.
    Object.defineProperty(this, 'problems', { value: problems, enumerable: problems.length > 0, writable: false, configurable: true });
  }
}

/**
 * Thrown by an adapter's drainDeadLetters that stopped before it was done (a time limit, say)
 * with `moved` dead letters moved: the rest are still there. reprocessDeadLetters turns it into
 * REPROCESS_INCOMPLETE, so a partial count is never taken for the whole.
 */
export class IncompleteDrainError extends Error {
  constructor(
    readonly moved: number,
    reason: string,
  ) {
    super(reason);
    this.name = 'IncompleteDrainError';
  }
}

/** Why a NonRetryableError skipped the retries; it becomes the dead letter's reason header. */
export type NonRetryableReason = 'non-retryable' | 'guard' | 'validation';

/**
 * Thrown by a handler (or anything around it) for a message that will never succeed: it goes to the
 * dead letters at once, without the retries, with reason 'non-retryable' and this error's text.
 * The module throws it itself, with reason 'guard' or 'validation', for a message a guard or a
 * pipe refused.
 */
export class NonRetryableError extends Error {
  readonly reason: NonRetryableReason;

  constructor(message: string, options: { cause?: unknown; reason?: NonRetryableReason } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'NonRetryableError';
    this.reason = options.reason ?? 'non-retryable';
  }
}

export function isBrokerError(value: unknown, code?: BrokerErrorCode): value is BrokerError {
  return value instanceof BrokerError && (code === undefined || value.code === code);
}

/**
 * Removes credentials from text that may contain connection strings: `scheme://user:pass@host`
 * keeps its user and loses its password, and `password=...`-style pairs lose their value.
 */
export function redactSecrets(text: string): string {
  return redactUrlCredentials(text)
    .replace(
      /((?:pass(?:word|phrase)?|secret(?:AccessKey)?|(?:api|access)[-_]?key|token|sessionToken|credentials?)["']?\s*[:=]\s*["']?)[^"'\s,&}]+/gi,
      '$1***',
    )
    .replace(/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/g, '$1 ***');
}

/**
 * `scheme://userinfo@host`: userinfo runs to the last '@' before the host (a password may hold
 * '@', '/', '?' or '#'), and never across another `://` (a list of URLs keeps each host).
 * `user:password` keeps the user; a bare userinfo may itself be a token (nats://token@host), so it
 * goes whole. Bounded repeats and a start only where a scheme can begin keep this linear.
 */
const URL_USERINFO = /(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,63}:\/\/)((?:(?!:\/\/)\S){0,2048})@(?=[^@\s/?#]{0,2048}(?:[\s/?#]|$))/gi;

/** The credentials of every URL in `text` replaced; nothing else changed (adapters' log lines use this alone). */
export function redactUrlCredentials(text: string): string {
  if (!text.includes('://')) return text;
  return text.replace(URL_USERINFO, (_match: string, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    return colon > 0 && !userinfo.slice(0, colon).includes('/') ? `${scheme}${userinfo.slice(0, colon)}:***@` : `${scheme}***@`;
  });
}

/** A short, safe description of any thrown value, for logs and error messages. */
export function describeError(error: unknown): string {
  let text: string;
  try {
    text = error instanceof Error ? `${error.name}: ${error.message}` : isPlainObject(error) ? plainObjectText(error) : String(error);
  } catch {
    // Not every thrown value becomes a string (a null-prototype object, a throwing toString):
    // this must not throw, or the retry and dead-letter paths that call it fail with it.
    text = `an unprintable thrown value (${Object.prototype.toString.call(error)})`;
  }
  // Cut before redacting: an error may carry a whole payload, and logs need only its start.
  return redactSecrets(text.length > 4096 ? `${text.slice(0, 4096)}…` : text);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  // Not a null-prototype object: it has no string form, and says so (describeError's catch).
  return Object.getPrototypeOf(value) === Object.prototype;
}

/**
 * A thrown plain object (Nest's RPC exception filters answer `{ status: 'error', message }`): its
 * JSON, not '[object Object]'.
 */
function plainObjectText(value: Record<string, unknown>): string {
  const json = JSON.stringify(value);
  return json === undefined ? Object.prototype.toString.call(value) : json;
}
