import { describeError } from '../../errors';

/** Where a RabbitMQ URL points, for logs and errors: never a password. */
export interface RabbitMqEndpoint {
  /** `amqp://host:port`, and `/vhost` when the URL names one (no user, no password). */
  readonly address: string;
  /** The vhost amqplib opens: the URL's path, decoded, or '/' when it has none. */
  readonly vhost: string;
  /**
   * The user amqplib logs in as: the URL's, or 'guest' when it names none (amqplib's default).
   * Undefined when the URL has a user but no password: that "user" may be a token.
   */
  readonly user: string | undefined;
}

/** Reads a URL the validator accepted; a URL that does not parse gives placeholders, never its text. */
export function rabbitMqEndpoint(url: string): RabbitMqEndpoint {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return { address: '(an invalid URL)', vhost: '?', user: undefined };
  }
  const port = parsed.port || (parsed.protocol === 'amqps:' ? '5671' : '5672');
  const path = parsed.pathname && parsed.pathname !== '/' ? parsed.pathname : '';
  // As amqplib reads them (lib/connect.js): the path without its '/', unescaped; guest without userinfo.
  const vhost = path === '' ? '/' : safeDecode(path.slice(1));
  const user = parsed.password !== '' ? safeDecode(parsed.username) : parsed.username === '' ? 'guest' : undefined;
  return { address: `${parsed.protocol}//${parsed.hostname}:${port}${path}`, vhost, user };
}

/** "amqp://127.0.0.1:5672 (vhost '/')": where a log line or an error says it tried to connect. */
export function describeRabbitMq(endpoint: RabbitMqEndpoint): string {
  return `RabbitMQ at ${endpoint.address} (vhost '${endpoint.vhost}')`;
}

/** Why a connection attempt failed, in words a person can act on. */
export interface ConnectFailure {
  /** What happened and what to check; names the endpoint's parts, never a password. Repeats of one reason are logged once. */
  readonly reason: string;
  /** The broker answered with a refusal: retrying with the same URL will not help. */
  readonly refused: boolean;
}

/**
 * Explains an error of amqplib's connect. amqplib reports a refused vhost only as "Expected
 * ConnectionOpenOk; got <ConnectionClose channel:0>" (RabbitMQ's reply text is not kept): RabbitMQ
 * closes the connection there when the vhost does not exist or the user has no permission on it.
 */
export function explainConnectFailure(error: unknown, endpoint: RabbitMqEndpoint): ConnectFailure {
  const message = error instanceof Error ? error.message : String(error);
  const code = (error as { code?: unknown } | null | undefined)?.code;
  if (/ACCESS.REFUSED|Handshake terminated by server: 403/.test(message)) {
    return {
      reason: `it refused the login of ${userText(endpoint)} (ACCESS_REFUSED): check the user name and password in the URL`,
      refused: true,
    };
  }
  if (/Expected ConnectionOpenOk; got <ConnectionClose/.test(message)) {
    return {
      reason:
        `it refused vhost '${endpoint.vhost}' (it closed the connection on opening it): the vhost does not exist, ` +
        `or ${userText(endpoint)} has no permission on it, or its connection limit is reached`,
      refused: true,
    };
  }
  const unreachable = typeof code === 'string' ? UNREACHABLE[code] : undefined;
  // The system's own text stays: it names the address tried (localhost may resolve to ::1).
  if (unreachable) return { reason: `${unreachable} (${describeError(error)})`, refused: false };
  if (/Socket closed abruptly during opening handshake/.test(message)) {
    return {
      reason: 'the server closed the connection during the AMQP handshake (is it RabbitMQ, and amqp: or amqps: as its port expects? is it shutting down?)',
      refused: false,
    };
  }
  return { reason: describeError(error), refused: false };
}

const UNREACHABLE: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'nothing accepts connections on that host and port',
  ENOTFOUND: 'the host name does not resolve',
  EAI_AGAIN: 'the host name does not resolve yet',
  ETIMEDOUT: 'the host does not answer',
  EHOSTUNREACH: 'the host is unreachable',
  ENETUNREACH: 'the network is unreachable',
  ECONNRESET: 'the connection was reset during the handshake',
};

function userText(endpoint: RabbitMqEndpoint): string {
  return endpoint.user === undefined ? 'the user in the URL' : `user '${endpoint.user}'`;
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
