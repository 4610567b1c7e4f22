import Redis, { type RedisOptions } from 'ioredis';
import { describeError } from '../../errors';
import { withTimeout } from '../../support/with-timeout';

/** What a connection needs of the env's settings. */
export interface RedisConnectionSettings {
  url: string;
  username?: string;
  password?: string;
  db?: number;
  tls?: boolean | Readonly<Record<string, unknown>>;
  connectTimeoutMs: number;
}

/** Between reconnect attempts: quick at first, then every second at most. */
const MAX_RECONNECT_DELAY_MS = 1000;

/** Errors of a refused login or a refused database: retrying the same settings cannot help. */
const REFUSED = /WRONGPASS|NOAUTH|NOPERM|invalid password|invalid username|ERR AUTH|ERR invalid DB index|ERR DB index is out of range/i;

/** `redis://host:port/db` (or `rediss://`), with the user but never a password: for logs and errors. */
export function describeRedis(settings: Pick<RedisConnectionSettings, 'url' | 'username' | 'db'>): string {
  try {
    const url = new URL(settings.url);
    const user = settings.username ?? (url.username !== '' ? decodeURIComponent(url.username) : undefined);
    const db = settings.db ?? (url.pathname.length > 1 ? url.pathname.slice(1) : '0');
    return `${url.protocol}//${url.host}/${db}${user !== undefined && user !== '' ? ` as user '${user}'` : ''}`;
  } catch {
    return 'an unparsable Redis URL';
  }
}

/**
 * The client options of every connection of an adapter: reconnects for ever (each caller bounds
 * its own wait), commands wait in the offline queue while the connection is down (publish bounds
 * them with its timeout), and commands sent but unanswered when the connection dropped are sent
 * again (at least once).
 */
export function clientOptions(settings: RedisConnectionSettings, extra: RedisOptions = {}): RedisOptions {
  const options: RedisOptions = {
    lazyConnect: true,
    connectTimeout: settings.connectTimeoutMs,
    maxRetriesPerRequest: null,
    enableOfflineQueue: true,
    autoResendUnfulfilledCommands: true,
    retryStrategy: (times) => Math.min(50 * times, MAX_RECONNECT_DELAY_MS),
    // A failover leaves the old primary read-only: reconnect (and send the command again) rather than fail every write.
    reconnectOnError: (error) => (/READONLY/.test(error.message) ? 2 : false),
    connectionName: 'ductape',
    ...extra,
  };
  if (settings.username !== undefined) options.username = settings.username;
  if (settings.password !== undefined) options.password = settings.password;
  if (settings.db !== undefined) options.db = settings.db;
  if (settings.tls === true) options.tls = {};
  else if (typeof settings.tls === 'object') options.tls = { ...settings.tls };
  return options;
}

export function createClient(settings: RedisConnectionSettings, extra: RedisOptions = {}): Redis {
  const client = new Redis(settings.url, clientOptions(settings, extra));
  // Failures reach the commands that they fail, and the caller's own listeners; an unheard
  // 'error' event would otherwise be printed by ioredis.
  client.on('error', () => undefined);
  return client;
}

/**
 * Opens `client` and waits until it is ready. A refused login or database fails at once (the
 * same settings cannot succeed); anything else is retried until connectTimeoutMs. The error names
 * the endpoint and the cause, never the password.
 */
export async function connectClient(client: Redis, settings: RedisConnectionSettings): Promise<void> {
  const where = describeRedis(settings);
  let lastError: Error | undefined;
  let onError: (error: Error) => void = () => undefined;
  const refused = new Promise<never>((_, reject) => {
    onError = (error: Error) => {
      lastError = error;
      if (REFUSED.test(error.message)) reject(new Error(`cannot connect to Redis at ${where}: the server refused the login or database (${describeError(error)})`));
    };
  });
  refused.catch(() => undefined);
  client.on('error', onError);
  const ready = new Promise<void>((resolve) => client.once('ready', () => resolve()));
  client.connect().catch((error: unknown) => {
    if (error instanceof Error) onError(error);
  });
  try {
    await withTimeout(Promise.race([ready, refused]), settings.connectTimeoutMs, () => {
      const why = lastError ? `; last attempt: ${describeError(lastError)}` : ': no attempt was answered';
      return new Error(`cannot connect to Redis at ${where} within ${settings.connectTimeoutMs} ms (connectTimeoutMs)${why}`);
    });
  } finally {
    client.removeListener('error', onError);
  }
}

/** Whether an error is Redis saying the consumer group or its stream is gone (a server restarted without persistence, a deleted key). */
export function isNoGroup(error: unknown): boolean {
  return error instanceof Error && error.message.startsWith('NOGROUP');
}
