import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect as tcpConnect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, headers as natsHeaders, type NatsConnection } from 'nats';
import type { NatsEnvConfig } from '../../lib';
import { printSkip, REQUIRE_BROKERS } from './broker-availability';

/** The NATS server (with JetStream) the integration suites use; NATS_URL points them elsewhere. */
export const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';

/** An env config for tests: short timeouts and a short ack wait, so a broken test fails in seconds. */
export function natsEnv(slug: string, config: Partial<NatsEnvConfig['config']> = {}): NatsEnvConfig {
  return { slug, type: 'nats', config: { servers: [NATS_URL], connectTimeoutMs: 5000, reconnectDelayMs: 200, ackWaitMs: 5000, ...config } };
}

/** A plain nats connection, as a foreign client or an operator's script would use. */
export async function withRawConnection<T>(work: (nc: NatsConnection) => Promise<T>, servers: string = NATS_URL): Promise<T> {
  const nc = await connect({ servers });
  try {
    return await work(nc);
  } finally {
    await nc.close().catch(() => undefined);
  }
}

/**
 * Publishes bytes to a subject as a plain JetStream producer: the headers given, none of this
 * module's metadata. With no stream on the subject (no group yet) it is a plain core publish.
 */
export function rawPublish(subject: string, body: Buffer, headers?: Record<string, string>): Promise<void> {
  return withRawConnection(async (nc) => {
    const hdrs = headers && Object.keys(headers).length > 0 ? natsHeaders() : undefined;
    if (hdrs && headers) for (const [name, value] of Object.entries(headers)) hdrs.set(name, value);
    try {
      await nc.jetstream().publish(subject, body, { headers: hdrs });
    } catch (error) {
      if (!/no responders|503/i.test(String(error))) throw error;
      nc.publish(subject, body, { headers: hdrs });
      await nc.flush();
    }
  });
}

/** A message as a plain nats subscriber reads it. */
export interface RawNatsRecord {
  body: Buffer;
  /** The `ce-id` header. */
  id: string | undefined;
  headers: Record<string, string>;
}

/** Reads a subject as a consumer outside the module would: a plain core subscription of its own. */
export async function rawTopicReader(subject: string): Promise<{ next(timeoutMs: number): Promise<RawNatsRecord>; close(): Promise<void> }> {
  const nc = await connect({ servers: NATS_URL });
  const records: RawNatsRecord[] = [];
  let wake: (() => void) | undefined;
  nc.subscribe(subject, {
    callback: (_error, msg) => {
      const headers: Record<string, string> = {};
      if (msg.headers) for (const name of msg.headers.keys()) headers[name] = msg.headers.get(name);
      records.push({ body: Buffer.from(msg.data), id: headers['ce-id'], headers });
      wake?.();
    },
  });
  await nc.flush();
  return {
    next: async (timeoutMs) => {
      const deadline = Date.now() + timeoutMs;
      while (records.length === 0) {
        if (Date.now() >= deadline) throw new Error(`no message on ${subject} within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, Math.min(100, Math.max(0, deadline - Date.now())));
        });
      }
      return records.shift() as RawNatsRecord;
    },
    close: () => nc.close(),
  };
}

/** The streams and consumers the adapter made in this test process, and their deletion. */
export interface CreatedNatsResources {
  streams: ReadonlySet<string>;
  consumers: ReadonlySet<string>;
  deleteAll(): Promise<void>;
}

/**
 * Records every stream and consumer created through the nats client in this process (by
 * wrapping its JetStream manager's add), and deletes exactly those: the consumers, then each
 * stream that has no consumer left (another run may still use a product's stream). Call once at a
 * file's top; deleteAll() runs after all tests.
 */
export function deleteCreatedNatsResourcesAfterAll(servers: () => string = () => NATS_URL): CreatedNatsResources {
  const streams = new Set<string>();
  const consumers = new Set<string>();
  // The client exports its manager classes only from these internal modules.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { ConsumerAPIImpl } = require('nats/lib/jetstream/jsmconsumer_api') as { ConsumerAPIImpl: { prototype: Record<string, unknown> } };
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { StreamAPIImpl } = require('nats/lib/jetstream/jsmstream_api') as { StreamAPIImpl: { prototype: Record<string, unknown> } };
  type Method = (...args: unknown[]) => unknown;
  const consumerAdd = ConsumerAPIImpl.prototype.add as Method;
  const streamAdd = StreamAPIImpl.prototype.add as Method;
  ConsumerAPIImpl.prototype.add = function (this: unknown, ...args: unknown[]) {
    const [stream, config] = args as [string, { durable_name?: string; name?: string }];
    const name = config?.durable_name ?? config?.name;
    if (typeof stream === 'string' && name) consumers.add(`${stream}/${name}`);
    return consumerAdd.apply(this, args);
  };
  StreamAPIImpl.prototype.add = function (this: unknown, ...args: unknown[]) {
    const [config] = args as [{ name?: string }];
    if (config?.name) streams.add(config.name);
    return streamAdd.apply(this, args);
  };
  const deleteAll = async (): Promise<void> => {
    if (streams.size === 0 && consumers.size === 0) return;
    await withRawConnection(async (nc) => {
      const jsm = await nc.jetstreamManager();
      for (const id of consumers) {
        const [stream, name] = id.split('/');
        await jsm.consumers.delete(stream, name).catch(() => undefined);
      }
      for (const stream of streams) {
        const info = await jsm.streams.info(stream).catch(() => undefined);
        if (info && info.state.consumer_count === 0) await jsm.streams.delete(stream).catch(() => undefined);
      }
    }, servers()).catch(() => undefined);
    consumers.clear();
    streams.clear();
  };
  afterAll(deleteAll, 30_000);
  return { streams, consumers, deleteAll };
}

/**
 * Why the tests that start a nats-server of their own cannot run here (no `nats-server` on the
 * PATH), or undefined when they can.
 */
export const NATS_SERVER_MISSING: string | undefined = (() => {
  const probe = spawnSync('nats-server', ['--version'], { timeout: 5000 });
  return probe.status === 0 ? undefined : 'nats-server is not on the PATH (the test starts a server of its own: install nats-server 2.9 or later)';
})();

/**
 * `it` for a test that starts a nats-server of its own: skipped with the reason printed where
 * nats-server is missing, and failing instead under REQUIRE_BROKERS=1.
 */
export function itWithNatsServer(suite: string): (title: string, fn: jest.ProvidesCallback, timeout?: number) => void {
  if (!NATS_SERVER_MISSING || REQUIRE_BROKERS) return it;
  return (title, fn, timeout) => {
    printSkip(`Skipping "${suite} > ${title}": ${NATS_SERVER_MISSING}`);
    const skipped: jest.It = it.skip;
    skipped(title, fn, timeout);
  };
}

/** A nats-server of a test's own: its port, its store directory, and its restart. */
export interface PrivateNatsServer {
  url: string;
  port: number;
  storeDir: string;
  /** Stops it (SIGTERM, waits for the exit) and starts it again on the same port and store directory. */
  restart(downMs?: number): Promise<void>;
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Freezes the server (SIGSTOP): its connections stay open and silent until resume() (SIGCONT). */
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

/** Starts `nats-server -js` on a free loopback port with a store directory of its own (and auth, when given). */
export async function startPrivateNats(auth: { user?: string; pass?: string; token?: string } = {}): Promise<PrivateNatsServer> {
  const port = await freePort();
  const storeDir = mkdtempSync(join(tmpdir(), 'ductape-nats-'));
  const args = ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir];
  if (auth.user !== undefined) args.push('--user', auth.user, '--pass', auth.pass ?? '');
  if (auth.token !== undefined) args.push('--auth', auth.token);
  let child: ChildProcess | undefined;
  const start = async (): Promise<void> => {
    child = spawn('nats-server', args, { stdio: 'ignore' });
    await waitForPort(port, 10_000);
  };
  const signal = (name: NodeJS.Signals): void => {
    if (child && child.exitCode === null) child.kill(name);
  };
  const stop = async (): Promise<void> => {
    const running = child;
    // A paused server would not handle SIGTERM.
    if (running && running.exitCode === null) running.kill('SIGCONT');
    child = undefined;
    if (!running || running.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => running.once('exit', () => resolve()));
    running.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise((resolve) => (timer = setTimeout(resolve, 5000)))]);
    clearTimeout(timer);
    if (running.exitCode === null) running.kill('SIGKILL');
  };
  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    start,
    stop,
    pause: () => signal('SIGSTOP'),
    resume: () => signal('SIGCONT'),
    restart: async (downMs = 1000) => {
      await stop();
      await new Promise((resolve) => setTimeout(resolve, downMs));
      await start();
    },
    close: async () => {
      await stop();
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = tcpConnect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() >= deadline) throw new Error(`nats-server did not listen on port ${port} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
