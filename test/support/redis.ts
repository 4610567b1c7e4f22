import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as connectTcp, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Redis from 'ioredis';
import type { RedisEnvConfig } from '../../lib';
import { sleep } from './wait';

/** The Redis the integration suites use; REDIS_URL points them elsewhere. */
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** An env config for tests: short timeouts, so a broken test fails in seconds. */
export function redisEnv(slug: string, config: Partial<RedisEnvConfig['config']> = {}): RedisEnvConfig {
  return { slug, type: 'redis', config: { url: REDIS_URL, connectTimeoutMs: 5000, publishTimeoutMs: 10_000, ...config } };
}

/** A plain ioredis client, as a foreign producer or an operator's script would use; its errors are the commands'. */
export function rawRedis(url = REDIS_URL): Redis {
  const client = new Redis(url, { maxRetriesPerRequest: 3 });
  client.on('error', () => undefined);
  return client;
}

/** Runs `work` on a plain client, closed afterwards. */
export async function withRawRedis<T>(work: (client: Redis) => Promise<T>, url = REDIS_URL): Promise<T> {
  const client = rawRedis(url);
  try {
    return await work(client);
  } finally {
    client.disconnect();
  }
}

/** XADD with a plain client: the body as the `data` field, the headers as plain fields, none of this module's metadata. */
export function rawXadd(stream: string, body: Buffer | string, headers: Record<string, string> = {}, url = REDIS_URL): Promise<string> {
  return withRawRedis(async (client) => (await client.xadd(stream, '*', 'data', body, ...Object.entries(headers).flat())) ?? '', url);
}

/**
 * Deletes, when the file ends, the keys matching `patterns` that were not there when it started:
 * the streams, sorted sets and groups this file's tests made under their run-unique or random
 * names. Nothing else on the shared server is touched (never FLUSHDB).
 */
export function deleteCreatedRedisKeysAfterAll(patterns: readonly string[]): void {
  let before = new Set<string>();
  beforeAll(async () => {
    before = new Set(await scanKeys(patterns));
  });
  afterAll(async () => {
    const created = (await scanKeys(patterns)).filter((key) => !before.has(key));
    await withRawRedis(async (client) => {
      for (let i = 0; i < created.length; i += 500) await client.del(...created.slice(i, i + 500));
    });
  });
}

/**
 * Deletes, when the file ends, exactly the keys that this process's ioredis clients named in a
 * command sent to the shared server (REDIS_URL's host, port and database): the streams, sorted
 * sets and groups the adapter and the file's plain clients made, whatever their product. For a
 * suite whose names are not the run's own (the conformance suite's fixed products): a key another
 * run made is never touched, as no command of this process named it. Keys on private servers are
 * not recorded (they go with the server's data directory).
 */
export function deleteRecordedRedisKeysAfterAll(): ReadonlySet<string> {
  const recorded = new Set<string>();
  const shared = new URL(REDIS_URL);
  const host = shared.hostname;
  const port = Number(shared.port || 6379);
  const db = shared.pathname.length > 1 ? Number(shared.pathname.slice(1)) : 0;
  type Send = (this: Redis, command: { getKeys(): (string | Buffer)[] }, ...rest: unknown[]) => unknown;
  const proto = Redis.prototype as unknown as { sendCommand: Send };
  const original = proto.sendCommand;
  proto.sendCommand = function (command, ...rest) {
    const { options } = this;
    if (options.host === host && options.port === port && (options.db ?? 0) === db) {
      try {
        for (const key of command.getKeys()) recorded.add(key.toString());
      } catch {
        // A command whose keys ioredis cannot tell names none this suite makes.
      }
    }
    return original.call(this, command, ...rest);
  };
  afterAll(async () => {
    proto.sendCommand = original;
    const keys = [...recorded];
    if (keys.length === 0) return;
    await withRawRedis(async (client) => {
      for (let i = 0; i < keys.length; i += 500) await client.del(...keys.slice(i, i + 500));
    });
  });
  return recorded;
}

export async function scanKeys(patterns: readonly string[], url = REDIS_URL): Promise<string[]> {
  return withRawRedis(async (client) => {
    const keys: string[] = [];
    for (const pattern of patterns) {
      let cursor = '0';
      do {
        const [next, found] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
        cursor = next;
        keys.push(...found);
      } while (cursor !== '0');
    }
    return keys;
  }, url);
}

/** A free TCP port on the loopback interface. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export interface PrivateRedis {
  url: string;
  port: number;
  /** Kills the server (SIGKILL: no shutdown save), waits `downMs`, and starts it again on the same port and data directory. */
  restart(downMs?: number): Promise<void>;
  /** Kills the server (SIGKILL); `up()` starts it again on the same port and data directory. */
  down(): Promise<void>;
  up(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A redis-server of the test's own, on a free loopback port with its own data directory and AOF
 * fsynced on every write, so a restart keeps every write it acknowledged. `extraArgs` add settings
 * (`--requirepass x`). Never the machine's server.
 */
export async function startPrivateRedis(extraArgs: string[] = []): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'ductape-redis-'));
  const url = `redis://127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  const kill = async () => {
    const running = child;
    child = undefined;
    if (!running || running.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => running.once('exit', () => resolve()));
    running.kill('SIGKILL');
    await exited;
  };
  const start = async () => {
    child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir, '--save', '', ...extraArgs],
      { stdio: 'ignore' },
    );
    const deadline = Date.now() + 10_000;
    for (;;) {
      // A plain PING over TCP: a server started with a password answers NOAUTH, which is up too.
      if (/^(\+PONG|-NOAUTH)/.test(await pingReply(port))) return;
      if (Date.now() > deadline) {
        await kill();
        throw new Error(`redis-server on port ${port} did not start within 10 s`);
      }
      await sleep(50);
    }
  };
  await start();
  return {
    url,
    port,
    restart: async (downMs = 1000) => {
      await kill();
      await sleep(downMs);
      await start();
    },
    down: kill,
    up: start,
    stop: async () => {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The first reply line to a PING on a loopback port, or '' when nothing answers. */
function pingReply(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connectTcp(port, '127.0.0.1');
    let reply = '';
    const done = (text: string) => {
      socket.destroy();
      resolve(text);
    };
    socket.setTimeout(1000, () => done(''));
    socket.on('error', () => done(''));
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString();
      if (reply.includes('\r\n')) done(reply);
    });
  });
}
