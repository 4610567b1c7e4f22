import { randomUUID } from 'node:crypto';
import { REDIS_CAPABILITIES } from '../../lib/adapters/redis';
import { deleteRecordedRedisKeysAfterAll, rawRedis, rawXadd, redisEnv, startPrivateRedis } from '../support/redis';
import { runConformanceSuite } from './conformance.suite';
import { FEATURES } from './declarations';

// Every test names its topics with a fresh random tag (conformance.prd.t-3f9c2a1b) under the
// suite's fixed products; the file deletes exactly the keys its own commands named on the shared
// server, never another run's under the same products.
const recorded = deleteRecordedRedisKeysAfterAll();

afterAll(() => {
  // The recording worked: the suite's topics, and nothing but them, are among the keys deleted.
  expect([...recorded].some((key) => key.startsWith('conformance.prd.t-'))).toBe(true);
  expect([...recorded].filter((key) => !/^(conformance|shop|blog)\.(prd|stg)\.t-[0-9a-f]{8}(:|$)/.test(key))).toEqual([]);
});

/** Shorter than the default 30 s, so an entry a lost reply left pending is taken over within the tests' bounds. */
const CLAIM_IDLE_MS = 5000;

runConformanceSuite({
  broker: 'redis',
  capabilities: REDIS_CAPABILITIES,
  features: FEATURES.redis,
  restart: {
    what: "a redis-server of the test's own (AOF, fsync always) killed with SIGKILL, down 1 s, started again on its data directory",
    open: async () => {
      const server = await startPrivateRedis();
      return {
        envConfig: (slug: string) => redisEnv(slug, { url: server.url, claimIdleMs: CLAIM_IDLE_MS, publishTimeoutMs: 30_000 }),
        restart: () => server.restart(1000),
        close: () => server.stop(),
      };
    },
  },
  batchFailure: {
    notApplicable:
      'the Redis adapter does not batch: each publish is an XADD of its own (pipelined by ioredis on one connection), settled by its own reply',
  },
  envConfig: (slug) => redisEnv(slug, { claimIdleMs: CLAIM_IDLE_MS }),
  // A foreign producer: plain ioredis XADD, the body as the `data` field and plain header fields.
  publishRaw: async (topicName, body, headers) => void (await rawXadd(topicName, body, headers)),
  // A foreign consumer: a consumer group of its own on the topic's stream, from now on.
  rawReader: async (topicName) => {
    const client = rawRedis();
    const group = `raw-${randomUUID().slice(0, 8)}`;
    await client.xgroup('CREATE', topicName, group, '$', 'MKSTREAM');
    return {
      next: async (timeoutMs) => {
        const reply = (await client.xreadgroupBuffer('GROUP', group, 'reader', 'COUNT', 1, 'BLOCK', timeoutMs, 'STREAMS', topicName, '>')) as
          | [Buffer, [Buffer, Buffer[]][]][]
          | null;
        const entry = reply?.[0]?.[1]?.[0];
        if (!entry) throw new Error(`no entry on '${topicName}' within ${timeoutMs} ms`);
        const fields = new Map<string, Buffer>();
        for (let i = 0; i + 1 < entry[1].length; i += 2) fields.set(entry[1][i].toString(), entry[1][i + 1]);
        const headers: Record<string, string> = {};
        for (const [name, value] of fields) if (name !== 'data') headers[name] = value.toString();
        return { body: fields.get('data') ?? Buffer.alloc(0), id: headers['ce-id'], headers };
      },
      close: async () => {
        await client.xgroup('DESTROY', topicName, group).catch(() => undefined);
        client.disconnect();
      },
    };
  },
});
