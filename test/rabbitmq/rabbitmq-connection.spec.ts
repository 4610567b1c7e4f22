import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { Injectable } from '@nestjs/common';
import { BrokerError, OnBrokerEvent, type BrokerModuleOptions } from '../../lib';
import type { INestApplication } from '@nestjs/common';
import { CapturingLogger, createBrokerApp } from '../support/app';
import { describeWithBroker } from '../support/broker-availability';
import { holdExclusively } from '../support/exclusive';
import { RABBITMQ_URL, recordDeclarations } from '../support/rabbitmq';
import { runUnique } from '../support/names';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy';
import { waitFor } from '../support/wait';
// Loaded (and transpiled) now, not on first use inside a timed test.
import '../../lib/adapters/rabbitmq';

/**
 * What a person sees when RabbitMQ cannot be used at startup: a log line at
 * once that names the endpoint (host, port, vhost) and what is being done about it, and an error
 * that says what was refused. Neither ever shows a password.
 */

const PRODUCT = runUnique('rmq-connection');
const declared = recordDeclarations();

// The resilience file restarts the broker: a restart in the middle would change what these tests see.
holdExclusively('rabbitmq', { cleanup: () => declared.deleteAll() });

@Injectable()
class OrdersHandler {
  // A handler makes startup connect: its consumer must be running when app.init() resolves.
  @OnBrokerEvent('rmq:orders')
  onOrder(): void {}
}

/** A loopback port nobody listens on: one the system just handed out and took back. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The test broker's URL with some parts replaced. */
function urlWith(parts: { username?: string; password?: string; port?: number; vhost?: string }): string {
  const url = new URL(RABBITMQ_URL);
  if (parts.username !== undefined) url.username = parts.username;
  if (parts.password !== undefined) url.password = parts.password;
  if (parts.port !== undefined) url.port = String(parts.port);
  if (parts.vhost !== undefined) url.pathname = `/${encodeURIComponent(parts.vhost)}`;
  return url.toString();
}

/** `amqp://host:port` of the test broker, as errors name it. */
function brokerAddress(): string {
  const url = new URL(RABBITMQ_URL);
  return `${url.protocol}//${url.hostname}:${url.port || '5672'}`;
}

function optionsFor(url: string, config: { connectTimeoutMs?: number; reconnectDelayMs?: number }): BrokerModuleOptions {
  return {
    env: 'prd',
    product: PRODUCT,
    brokers: [{ tag: 'rmq', envs: [{ slug: 'prd', type: 'rabbitmq', config: { url, ...config } }] }],
  };
}

/** Starts an app whose own env uses `url`; it must fail. Returns the error, when it came, and every log line. */
async function failedStartup(url: string, config: { connectTimeoutMs?: number; reconnectDelayMs?: number } = {}) {
  const logger = new CapturingLogger();
  const thrown = await createBrokerApp(optionsFor(url, config), { providers: [OrdersHandler] }, logger).then(
    async ({ app }) => {
      await app.close();
      return undefined;
    },
    (error: unknown) => error,
  );
  const failedAfterMs = Date.now() - logger.startedAt;
  expect(thrown).toBeInstanceOf(BrokerError);
  return { error: thrown as BrokerError, failedAfterMs, logger };
}

/** Neither the error (message, stack, cause) nor any log line holds the secret, or the user and secret together. */
function expectNoCredentials(error: BrokerError, logger: CapturingLogger, user: string, secret: string): void {
  const causes: string[] = [];
  for (let cause: unknown = error; cause instanceof Error; cause = cause.cause) causes.push(cause.message, cause.stack ?? '');
  const everything = [...causes, ...logger.entries.map((line) => line.text)].join('\n');
  expect(everything).not.toContain(secret);
  expect(everything).not.toContain(`${user}:`);
}

describeWithBroker('rabbitmq', 'RabbitMQ connection failures', () => {
  it('a refused port: logs at once that it waits and retries (host, port and vhost), then fails after connectTimeoutMs', async () => {
    const port = await freePort();
    const secret = `pw-${randomUUID()}`;
    const { error, failedAfterMs, logger } = await failedStartup(urlWith({ username: 'orders-svc', password: secret, port }), {
      connectTimeoutMs: 3000,
      reconnectDelayMs: 250,
    });

    const endpoint = `RabbitMQ at ${new URL(brokerAddress()).protocol}//${new URL(RABBITMQ_URL).hostname}:${port} (vhost '/')`;
    const waiting = logger.first(`cannot connect to ${endpoint}`);
    expect(waiting).toBeDefined();
    expect(waiting!.level).toBe('warn');
    expect(waiting!.text).toContain('nothing accepts connections on that host and port');
    expect(waiting!.text).toContain(`ECONNREFUSED`);
    expect(waiting!.text).toContain('retrying every 250 ms (startup gives up after connectTimeoutMs, 3000 ms)');
    // At once: before, nothing was logged until the connect timeout had passed.
    expect(waiting!.afterMs).toBeLessThan(1000);
    // Retried every 250 ms, and logged once: the same cause is not repeated every attempt.
    expect(logger.entries.filter((line) => line.text.includes('cannot connect to')).length).toBe(1);

    expect(error.code).toBe('SUBSCRIBE_FAILED');
    expect(error.message).toContain(`cannot connect to ${endpoint} within 3000 ms (connectTimeoutMs), retrying every 250 ms`);
    expect(error.message).toContain(`last attempt: nothing accepts connections on that host and port`);
    expect(failedAfterMs).toBeGreaterThanOrEqual(2900);
    expect(failedAfterMs).toBeLessThan(6000);
    expectNoCredentials(error, logger, 'orders-svc', secret);
    // eslint-disable-next-line no-console
    console.info(`refused port: first log line after ${waiting!.afterMs} ms, startup failed after ${failedAfterMs} ms`);
  });

  it('a vhost that does not exist: says the vhost was refused, naming it, at once (no wait for connectTimeoutMs)', async () => {
    const vhost = `missing-${randomUUID().slice(0, 8)}`;
    const { error, failedAfterMs, logger } = await failedStartup(urlWith({ vhost }));

    const refusal = `cannot connect to RabbitMQ at ${brokerAddress()}/${vhost} (vhost '${vhost}'): it refused vhost '${vhost}'`;
    const line = logger.first(refusal);
    expect(line).toBeDefined();
    expect(line!.level).toBe('error');
    expect(line!.text).toContain('the vhost does not exist, or user');
    expect(line!.afterMs).toBeLessThan(1000);

    expect(error.code).toBe('SUBSCRIBE_FAILED');
    expect(error.message).toContain(refusal);
    expect(error.message).not.toContain('Expected ConnectionOpenOk');
    // connectTimeoutMs is at its default, 10 s: a refusal does not wait for it.
    expect(failedAfterMs).toBeLessThan(3000);
    // eslint-disable-next-line no-console
    console.info(`missing vhost: first log line after ${line!.afterMs} ms, startup failed after ${failedAfterMs} ms`);
  });

  it('a wrong password: says the login was refused (ACCESS_REFUSED), naming the user but never the password', async () => {
    const secret = `wrong-${randomUUID()}`;
    const user = new URL(RABBITMQ_URL).username || 'guest';
    const { error, failedAfterMs, logger } = await failedStartup(urlWith({ username: user, password: secret }));

    const refusal = `cannot connect to RabbitMQ at ${brokerAddress()} (vhost '/'): it refused the login of user '${user}' (ACCESS_REFUSED): check the user name and password in the URL`;
    const line = logger.first(refusal);
    expect(line).toBeDefined();
    expect(line!.level).toBe('error');
    expect(line!.afterMs).toBeLessThan(1000);

    expect(error.code).toBe('SUBSCRIBE_FAILED');
    expect(error.message).toContain(refusal);
    expect(failedAfterMs).toBeLessThan(3000);
    expectNoCredentials(error, logger, user, secret);
    // eslint-disable-next-line no-console
    console.info(`wrong password: first log line after ${line!.afterMs} ms, startup failed after ${failedAfterMs} ms`);
  });

  describe('through a proxy that can cut the link', () => {
    let proxy: TcpProxy | undefined;
    let app: INestApplication | undefined;
    afterEach(async () => {
      await app?.close();
      proxy?.close();
      app = proxy = undefined;
    });

    it('a broker that accepts the connection but never answers: says so after 2 s, then fails after connectTimeoutMs', async () => {
      proxy = await startTcpProxy(Number(new URL(RABBITMQ_URL).port || 5672), new URL(RABBITMQ_URL).hostname);
      proxy.blackhole(true);
      const { error, failedAfterMs, logger } = await failedStartup(urlWith({ port: proxy.port }), { connectTimeoutMs: 4000 });

      const endpoint = `RabbitMQ at amqp://127.0.0.1:${proxy.port} (vhost '/')`;
      const line = logger.first(`no answer yet from ${endpoint}`);
      expect(line).toBeDefined();
      expect(line!.text).toContain('still trying (startup gives up after connectTimeoutMs, 4000 ms)');
      expect(line!.afterMs).toBeGreaterThanOrEqual(1900);
      expect(line!.afterMs).toBeLessThan(3500);
      expect(error.code).toBe('SUBSCRIBE_FAILED');
      expect(error.message).toContain(`cannot connect to ${endpoint} within 4000 ms (connectTimeoutMs), retrying every 1000 ms: no attempt was answered`);
      expect(failedAfterMs).toBeGreaterThanOrEqual(3900);
    });

    it('a connection lost later: each cause of its failed reconnects is logged once for both connections, and the return too', async () => {
      proxy = await startTcpProxy(Number(new URL(RABBITMQ_URL).port || 5672), new URL(RABBITMQ_URL).hostname);
      const logger = new CapturingLogger();
      ({ app } = await createBrokerApp(optionsFor(urlWith({ port: proxy.port }), { reconnectDelayMs: 100 }), { providers: [OrdersHandler] }, logger));
      const endpoint = `RabbitMQ at amqp://127.0.0.1:${proxy.port} (vhost '/')`;

      proxy.refuse(true);
      proxy.cutAll();
      await waitFor(() => logger.first(`cannot connect to ${endpoint}`) !== undefined, 'the failed reconnect in the log', 3000);
      // Reconnects every 100 ms, on two connections: each cause is logged once (again after 30 s).
      // The proxy's cut is seen as a close during the handshake, or as a reset, by turns.
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const failures = logger.entries.filter((line) => line.text.includes(`cannot connect to ${endpoint}`));
      expect(failures.length).toBeGreaterThanOrEqual(1);
      expect(failures.length).toBeLessThanOrEqual(2);
      expect(new Set(failures.map((line) => line.text)).size).toBe(failures.length);
      for (const line of failures) {
        expect(line.level).toBe('warn');
        expect(line.text).toMatch(/the server closed the connection during the AMQP handshake|the connection was reset during the handshake \(Error: read ECONNRESET\)/);
        expect(line.text).toMatch(/; retrying every 100 ms /);
      }

      proxy.refuse(false);
      await waitFor(() => logger.entries.filter((line) => line.text.includes('is back after')).length === 2, 'both connections back', 5000);
    });
  });
});
