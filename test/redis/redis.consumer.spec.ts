import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import type { INestApplication } from '@nestjs/common';
import type { BrokerContext, BrokerModuleOptions, RedisEnvConfig } from '../../lib';
import { CapturingLogger, createBrokerApp } from '../support/app';
import { describeWithBroker } from '../support/broker-availability';
import { runUnique } from '../support/names';
import { deleteCreatedRedisKeysAfterAll, REDIS_URL, redisEnv, startPrivateRedis, withRawRedis, type PrivateRedis } from '../support/redis';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy';
import { gate, sleep, waitFor } from '../support/wait';
// Loaded (and transpiled) now, not on first use inside a timed test.
import '../../lib/adapters/redis';

// A product of this run's own: every key the file makes on the machine's Redis starts with it.
const PRODUCT = runUnique('redis-consumer');
deleteCreatedRedisKeysAfterAll([`${PRODUCT}.*`]);

describeWithBroker('redis', 'Redis consumer: concurrency over two streams, entries trimmed while pending, lost groups, dead sockets, ACL', () => {
  jest.setTimeout(40_000);
  const apps: INestApplication[] = [];
  const servers: PrivateRedis[] = [];
  const proxies: TcpProxy[] = [];

  async function start(config: Partial<RedisEnvConfig['config']> = {}, logger?: CapturingLogger) {
    const options: BrokerModuleOptions = { env: 'prd', product: PRODUCT, brokers: [{ tag: 'redis', envs: [redisEnv('prd', config)] }] };
    const started = await createBrokerApp(options, {}, logger);
    apps.push(started.app);
    return started;
  }

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
    for (const proxy of proxies.splice(0)) proxy.close();
    await Promise.all(servers.splice(0).map((server) => server.stop()));
  });

  function newEvent() {
    const tag = `t-${randomUUID().slice(0, 8)}`;
    return { tag, event: `redis:${tag}`, topic: `${PRODUCT}.prd.${tag}` };
  }

  /** A handler that counts how many run at once and waits for `held` before finishing. */
  function tracked(held: (message: unknown) => Promise<void>) {
    const state = { running: 0, peak: 0, handled: [] as unknown[] };
    const handler = async (message: unknown) => {
      state.peak = Math.max(state.peak, ++state.running);
      try {
        await held(message);
        state.handled.push(message);
      } finally {
        state.running--;
      }
    };
    return { state, handler };
  }

  /** One entry on the topic's stream and one (or more) on the group's own stream, where retries land when due. */
  async function addToBothStreams(topic: string, group: string, url = REDIS_URL, extraOnGroup = 0): Promise<void> {
    await withRawRedis(async (client) => {
      const multi = client.multi().xadd(topic, '*', 'data', '"on-topic"').xadd(`${topic}:group:${group}`, '*', 'data', '"retry-due"');
      for (let i = 0; i < extraOnGroup; i++) multi.xadd(`${topic}:group:${group}`, '*', 'data', `"retry-${i}"`);
      await multi.exec();
    }, url);
  }

  it('concurrency 1 with a busy handler: an entry of the topic and a due retry waiting together are handled one after the other, never together', async () => {
    const { broker } = await start();
    const { event, topic } = newEvent();
    const { state, handler } = tracked(() => sleep(1000));
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'busy', concurrency: 1, callback: handler } });
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'first' } });
    await waitFor(() => state.running === 1, 'the first message in its handler', 5000);
    // While the only slot is busy, one more entry on the topic and a retry due on the group's
    // stream: the next read, over both streams, finds both (COUNT applies to each stream).
    await addToBothStreams(topic, 'busy');
    // Each waits for the one before (1 s), not for claimIdleMs.
    await waitFor(() => state.handled.length === 3, 'the three entries handled', 6000);
    await sleep(500);
    expect(state.peak).toBe(1);
    expect([...state.handled].sort()).toEqual(['first', 'on-topic', 'retry-due']);
  });

  it('entries read beyond the free slots and waiting in this consumer are read back once after a reconnect: each handled once, one at a time', async () => {
    const server = await startPrivateRedis(['--appendonly', 'no']);
    servers.push(server);
    const { broker } = await start({ url: server.url });
    const { event, topic } = newEvent();
    const held = gate();
    // The first takes 500 ms; every other waits for the gate.
    const { state, handler } = tracked((message) => (message === 'first' ? sleep(500) : held.promise));
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'back', concurrency: 1, callback: handler } });
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'first' } });
    await waitFor(() => state.running === 1, 'the first entry in its handler', 5000);
    // Read together once the slot is free: one of the topic's and one of the group's (COUNT 1 each),
    // one in the handler and one waiting in this consumer; a third stays on the group's stream.
    await addToBothStreams(topic, 'back', server.url, 1);
    await waitFor(() => state.handled.length === 1 && state.running === 1, 'the second entry in its handler', 5000);
    await sleep(200);
    // Every connection of the adapter dropped: after the reconnect, the consumer reads its own pending entries back.
    await withRawRedis((client) => client.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes'), server.url);
    await sleep(500);
    held.open();
    await waitFor(() => state.handled.length === 4, 'the four entries handled', 10_000);
    await sleep(1000);
    expect(state.peak).toBe(1);
    expect([...state.handled].sort()).toEqual(['first', 'on-topic', 'retry-0', 'retry-due']);
  });

  it('pending entries that MAXLEN trimming removed before they were handled: logged as lost at error level (count and ids), out of the pending list; the rest delivered', async () => {
    const { event, topic } = newEvent();
    const group = 'trimmed';
    // A consumer of the group that read three entries and crashed before acking them; then the
    // stream is trimmed to its newest entry (what MAXLEN ~ does to a group that falls behind).
    await withRawRedis(async (client) => {
      await client.xgroup('CREATE', topic, group, '$', 'MKSTREAM');
      for (const n of [1, 2, 3]) await client.xadd(topic, '*', 'data', JSON.stringify({ n }));
      await client.xreadgroup('GROUP', group, 'crashed', 'COUNT', 10, 'STREAMS', topic, '>');
      await client.xtrim(topic, 'MAXLEN', 1);
    });
    const logger = new CapturingLogger();
    const { broker } = await start({ claimIdleMs: 1000, claimIntervalMs: 200 }, logger);
    const got: unknown[] = [];
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group, callback: (message: unknown) => void got.push(message) } });
    await waitFor(() => got.length === 1, 'the entry the stream still holds, taken over from the crashed consumer', 10_000);
    expect(got).toEqual([{ n: 3 }]);
    // XAUTOCLAIM's COUNT (the free slots) bounds the entries one call looks at: the two may come in one line or two.
    const line = new RegExp(`(\\d+) entr(?:y|ies) pending for group '${group}' on stream '${topic.replace(/\./g, '\\.')}' (?:was|were) deleted from the stream before being handled .* and are lost: ([\\d, -]+)$`);
    await waitFor(() => logger.entries.filter((entry) => line.test(entry.message)).reduce((sum, entry) => sum + Number(line.exec(entry.message)![1]), 0) === 2, 'the two lost entries logged', 5000);
    const lost = logger.entries.filter((entry) => line.test(entry.message));
    expect(lost.every((entry) => entry.level === 'error')).toBe(true);
    expect(lost.flatMap((entry) => line.exec(entry.message)![2].split(', '))).toHaveLength(2);
    await waitFor(async () => ((await withRawRedis((client) => client.xpending(topic, group))) as [number])[0] === 0, 'an empty pending list', 5000);
  });

  describe('on a private server with an ACL user', () => {
    let server: PrivateRedis;
    beforeAll(async () => {
      server = await startPrivateRedis(['--appendonly', 'no']);
    });
    afterAll(() => server?.stop());

    async function aclUser(name: string, rules: string[]): Promise<{ username: string; password: string }> {
      const password = `pw-${randomUUID()}`;
      await withRawRedis((client) => client.call('ACL', 'SETUSER', name, 'reset', 'on', `>${password}`, ...rules), server.url);
      return { username: name, password };
    }

    async function connectionsOf(user: string): Promise<number> {
      const list = (await withRawRedis((client) => client.call('CLIENT', 'LIST'), server.url)) as string;
      return list.split('\n').filter((line) => line.includes(` user=${user} `)).length;
    }

    it('a group lost while its user may not create it again: backs off, warns a few times (not once per pass), and recovers when allowed', async () => {
      const user = await aclUser('nogroup-svc', ['~*', '&*', '+@all']);
      const logger = new CapturingLogger();
      const { broker } = await start({ url: server.url, ...user }, logger);
      const { event, topic } = newEvent();
      const got: unknown[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'lost', callback: (message: unknown) => void got.push(message) } });
      await withRawRedis(async (client) => {
        await client.call('ACL', 'SETUSER', user.username, '-xgroup');
        await client.del(topic);
      }, server.url);
      await sleep(2000);
      const missing = logger.entries.filter((entry) => entry.text.includes("the consumer group 'lost' is missing on Redis"));
      expect(missing.length).toBeGreaterThanOrEqual(1);
      // A pause of up to 1 s between attempts: about 15 in 2 s, a warning on the 1st and every 30th.
      expect(missing.length).toBeLessThanOrEqual(2);
      expect(logger.first("creating the consumer group 'lost' again failed")?.text).toMatch(/NOPERM/);
      await withRawRedis((client) => client.call('ACL', 'SETUSER', user.username, '+xgroup'), server.url);
      await sleep(1500);
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'after' } });
      await waitFor(() => got.length === 1, 'a message once the group is made again', 10_000);
    });

    it('a consumer that cannot start (CLIENT ID refused by the ACL): the subscribe fails and its reader connection is closed, not left reconnecting', async () => {
      const user = await aclUser('no-client-id', ['~*', '&*', '+@all', '-client|id']);
      const { broker } = await start({ url: server.url, ...user });
      const { event } = newEvent();
      const refused = await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'g', callback: () => undefined } }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(Error);
      expect((refused as Error).message).toMatch(/NOPERM.*'client\|id'/);
      await sleep(500);
      // The adapter's shared connection only (pre-fix, the reader stayed as a second one).
      expect(await connectionsOf(user.username)).toBe(1);
    });

    it('the ACL rules docs/redis.md gives are enough to publish, consume, retry, dead-letter and close; without CLIENT UNBLOCK, close still ends within blockMs', async () => {
      for (const rules of [DOCUMENTED_ACL, DOCUMENTED_ACL.filter((rule) => rule !== '+client|unblock')]) {
        const user = await aclUser(`svc-${randomUUID().slice(0, 6)}`, [`~${PRODUCT}.*`, ...rules]);
        const logger = new CapturingLogger();
        const { app, broker } = await start({ url: server.url, ...user, blockMs: 1000 }, logger);
        const { event } = newEvent();
        const got: { message: unknown; attempt: number }[] = [];
        const dead: unknown[] = [];
        await broker.subscribe({
          env: 'prd',
          event,
          product_tag: PRODUCT,
          input: {
            group: 'acl',
            retry: { maxAttempts: 2, initialDelayMs: 50 },
            callback: (message: unknown, ctx: BrokerContext) => {
              got.push({ message, attempt: ctx.attempt });
              if (message === 'fails') throw new Error('always');
            },
          },
        });
        await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'acl', deadLetter: true, callback: (message: unknown) => void dead.push(message) } });
        await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'ok' } });
        await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'later', delayMs: 200 } });
        await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'fails' } });
        await waitFor(() => got.length === 4 && dead.length === 1, 'ok, later, two attempts of fails and its dead letter', 10_000);
        const closing = Date.now();
        await app.close();
        apps.splice(apps.indexOf(app), 1);
        expect(Date.now() - closing).toBeLessThan(2500);
        expect(logger.entries.filter((entry) => /NOPERM/.test(entry.text))).toEqual([]);
      }
    });
  });

  it('a reader whose socket went silent (packets dropped, no reset) is dropped after blockMs + 5 s and reconnected: it delivers again', async () => {
    const proxy = await startTcpProxy(Number(new URL(REDIS_URL).port || 6379), new URL(REDIS_URL).hostname);
    proxies.push(proxy);
    // The consumer's connections go through the proxy; nothing but its reads uses them meanwhile
    // (no delayed set to poll, no claims); the publisher connects directly.
    const { broker: consumer } = await start({ url: `redis://127.0.0.1:${proxy.port}`, blockMs: 500, delayPollMs: 600_000, claimIntervalMs: 600_000 });
    const { broker: publisher } = await start();
    const { event } = newEvent();
    const got: unknown[] = [];
    await consumer.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'silent', callback: (message: unknown) => void got.push(message) } });
    await publisher.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'before' } });
    await waitFor(() => got.length === 1, 'the first message', 5000);
    // A read (or its answer) is lost, and its link stays open and silent.
    proxy.blackhole(true);
    await sleep(1200);
    proxy.blackhole(false);
    const sentAt = Date.now();
    await publisher.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'after' } });
    await waitFor(() => got.length === 2, 'the message published after the silence', 15_000);
    expect(got).toEqual(['before', 'after']);
    expect(Date.now() - sentAt).toBeLessThan(500 + 5000 + 3000);
  });

  it('the shared connection whose socket went silent is dropped after publishTimeoutMs and reconnected: later publishes are answered, not each given the reply of the lost one', async () => {
    const proxy = await startTcpProxy(Number(new URL(REDIS_URL).port || 6379), new URL(REDIS_URL).hostname);
    proxies.push(proxy);
    // The publisher goes through the proxy (its consumer-less topic needs no reader); the consumer connects directly.
    const { broker: publisher } = await start({ url: `redis://127.0.0.1:${proxy.port}`, publishTimeoutMs: 1000, delayPollMs: 600_000 });
    const { broker: consumer } = await start();
    const { event } = newEvent();
    const got: unknown[] = [];
    await consumer.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'silent-publisher', callback: (message: unknown) => void got.push(message) } });
    await publisher.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'before' } });
    // A command (or its reply) is lost, and the link stays open and silent.
    proxy.blackhole(true);
    await expect(publisher.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'lost' } })).rejects.toMatchObject({ code: 'PUBLISH_FAILED' });
    proxy.blackhole(false);
    // Retried as a caller would after a failure: every publish after the silence must be answered.
    let settled = false;
    for (const deadline = Date.now() + 8000; !settled && Date.now() < deadline; ) {
      settled = await publisher.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'after' } }).then(
        () => true,
        () => false,
      );
    }
    expect(settled).toBe(true);
    await publisher.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'next' } });
    await waitFor(() => got.includes('next'), 'the publishes after the silence', 10_000);
    expect(got[0]).toBe('before');
  });
});

/** The ACL rules docs/redis.md lists (besides the key pattern), kept in step with it by the test above. */
const DOCUMENTED_ACL = ['-@all', '+@stream', '+zadd', '+zrange', '+zrangebyscore', '+zrem', '+evalsha', '+eval', '+multi', '+exec', '+exists', '+time', '+info', '+ping', '+select', '+client|id', '+client|setname', '+client|unblock', '+quit'];
