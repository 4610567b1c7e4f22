import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { Injectable, type INestApplication } from '@nestjs/common';
import { BrokerError, DEAD_LETTER_HEADERS, OnBrokerEvent, type BrokerContext, type BrokerModuleOptions, type RedisEnvConfig } from '../../lib';
import { CapturingLogger, createBrokerApp, startupError } from '../support/app';
import { describeWithBroker } from '../support/broker-availability';
import { runUnique } from '../support/names';
import { deleteCreatedRedisKeysAfterAll, freePort, rawXadd, redisEnv, startPrivateRedis, withRawRedis, type PrivateRedis } from '../support/redis';
import { sleep, waitFor } from '../support/wait';
// Loaded (and transpiled) now, not on first use inside a timed test.
import '../../lib/adapters/redis';

// A product of this run's own: every key the file makes on the machine's Redis starts with it.
const PRODUCT = runUnique('redis-adapter');
deleteCreatedRedisKeysAfterAll([`${PRODUCT}.*`]);

@Injectable()
class OrdersHandler {
  // A handler makes startup connect: its consumer must be running when app.init() resolves.
  @OnBrokerEvent('redis:orders')
  onOrder(): void {}
}

interface Received {
  message: unknown;
  ctx: BrokerContext;
}

describeWithBroker('redis', 'Redis adapter: wire format, bad input, credentials, poison entries, lost groups', () => {
  jest.setTimeout(30_000);
  const apps: INestApplication[] = [];
  const servers: PrivateRedis[] = [];

  async function start(config: Partial<RedisEnvConfig['config']> = {}, logger?: CapturingLogger) {
    const options: BrokerModuleOptions = { env: 'prd', product: PRODUCT, brokers: [{ tag: 'redis', envs: [redisEnv('prd', config)] }] };
    const started = await createBrokerApp(options, {}, logger);
    apps.push(started.app);
    return started;
  }

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
    await Promise.all(servers.splice(0).map((server) => server.stop()));
  });

  function newEvent() {
    const tag = `t-${randomUUID().slice(0, 8)}`;
    return { tag, event: `redis:${tag}`, topic: `${PRODUCT}.prd.${tag}` };
  }

  const collect = (into: Received[]) => (message: unknown, ctx: BrokerContext) => void into.push({ message, ctx });

  /** Starts an app with a handler on `config`, which must fail; returns the error, how long it took and what was logged. */
  async function failedStartup(config: Partial<RedisEnvConfig['config']>) {
    const logger = new CapturingLogger();
    const started = Date.now();
    const error = await createBrokerApp(
      { env: 'prd', product: PRODUCT, brokers: [{ tag: 'redis', envs: [redisEnv('prd', { connectTimeoutMs: 1500, ...config })] }] },
      { providers: [OrdersHandler] },
      logger,
    ).then(
      async ({ app }) => {
        await app.close();
        return undefined;
      },
      (thrown: unknown) => thrown,
    );
    expect(error).toBeInstanceOf(BrokerError);
    return { error: error as BrokerError, failedAfterMs: Date.now() - started, logger };
  }

  function expectNoSecret(error: Error, logger: CapturingLogger, secret: string): void {
    const cause = (error as { cause?: unknown }).cause;
    expect(`${error.message}\n${error.stack ?? ''}\n${cause instanceof Error ? `${cause.message}\n${cause.stack ?? ''}` : ''}`).not.toContain(secret);
    expect(logger.entries.filter((entry) => entry.text.includes(secret))).toEqual([]);
  }

  it('writes the message JSON as the data field and its metadata as ce- fields a plain client reads', async () => {
    const { broker } = await start();
    const { event, topic } = newEvent();
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'g', callback: () => undefined } });
    const { messageId } = await broker.publish({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: { message: { orderId: 'w-1' }, headers: { tenant: 'acme' }, correlationId: 'c-1', key: 'k-1' },
    });
    const entries = await withRawRedis((client) => client.xrange(topic, '-', '+'));
    expect(entries).toHaveLength(1);
    const fields = Object.fromEntries(entries[0][1].reduce<[string, string][]>((pairs, value, i, all) => (i % 2 === 0 ? [...pairs, [value, all[i + 1]]] : pairs), []));
    expect(fields).toEqual({
      data: '{"orderId":"w-1"}',
      'ce-specversion': '1.0',
      'ce-id': messageId,
      'ce-source': expect.stringMatching(new RegExp(`^/${PRODUCT}/prd/`)) as unknown,
      'ce-type': event,
      'ce-time': expect.stringMatching(/^\d{4}-\d\d-\d\dT/) as unknown,
      'content-type': 'application/json',
      'ce-correlationid': 'c-1',
      'ce-partitionkey': 'k-1',
      tenant: 'acme',
    });
  });

  it('refuses a header named like one of the entry\'s own fields with INVALID_MESSAGE, publishing nothing', async () => {
    const { broker } = await start();
    const { event, topic } = newEvent();
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'g', callback: () => undefined } });
    for (const name of ['data', 'ce-id', 'content-type']) {
      const refused = await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 1, headers: { [name]: 'x' } } }).catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: 'INVALID_MESSAGE' });
      expect((refused as Error).message).toContain(`header '${name}' is reserved on Redis`);
    }
    expect(await withRawRedis((client) => client.xlen(topic))).toBe(0);
  });

  it('sends poison entries of a plain ioredis XADD (not JSON; no data field) to the dead letters, and keeps consuming', async () => {
    const { broker } = await start();
    const { event, topic } = newEvent();
    const handled: Received[] = [];
    const dead: Received[] = [];
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'eater', callback: collect(handled) } });
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'eater', deadLetter: true, callback: collect(dead) } });
    await rawXadd(topic, Buffer.from([0x7b, 0xff, 0xfe, 0x00]), { origin: 'binary' });
    await withRawRedis((client) => client.xadd(topic, '*', 'orderId', '7', 'status', 'no data field'));
    await rawXadd(topic, JSON.stringify({ orderId: 'plain-json' }), { origin: 'python' });
    await waitFor(() => dead.length === 2 && handled.length === 1, 'two dead letters and the good message', 10_000);
    expect(handled[0].message).toEqual({ orderId: 'plain-json' });
    expect(handled[0].ctx.headers.origin).toBe('python');
    expect(handled[0].ctx.messageId).toMatch(new RegExp(`^${topic.replace(/\./g, '\\.')}/\\d+-\\d+$`));
    expect(dead.every((d) => d.ctx.headers[DEAD_LETTER_HEADERS.reason] === 'poison')).toBe(true);
    const fieldsOnly = dead.find((d) => d.ctx.headers.status === 'no data field');
    expect(fieldsOnly?.ctx.headers.orderId).toBe('7');
    // Consumed by the dead-letter subscription: removed from the group's dead-letter stream once acked.
    await waitFor(async () => (await withRawRedis((client) => client.xlen(`${topic}:dead-letters:eater`))) === 0, 'the consumed dead letters to be removed', 5000);
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { after: 'poison' } } });
    await waitFor(() => handled.length === 2, 'the next good message', 10_000);
  });

  it('keeps a poison entry\'s bytes exactly in the dead-letter stream', async () => {
    const { broker } = await start();
    const { event, topic } = newEvent();
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'keeper', callback: () => undefined } });
    const bytes = Buffer.from([0x7b, 0xff, 0xfe, 0x00, 0x41]);
    await rawXadd(topic, bytes);
    const stream = `${topic}:dead-letters:keeper`;
    await waitFor(async () => (await withRawRedis((client) => client.xlen(stream))) === 1, 'the dead letter', 10_000);
    const [[, fields]] = await withRawRedis((client) => client.xrangeBuffer(stream, '-', '+'));
    const data = fields[fields.findIndex((field, i) => i % 2 === 0 && field.toString() === 'data') + 1];
    expect(data.equals(bytes)).toBe(true);
  });

  it('an unreachable server: a BrokerError at startup after connectTimeoutMs, naming the endpoint, never the password', async () => {
    const port = await freePort();
    const secret = `pw-${randomUUID()}`;
    const { error, failedAfterMs, logger } = await failedStartup({ url: `redis://someone:${secret}@127.0.0.1:${port}/0` });
    expect(error.message).toContain(`cannot connect to Redis at redis://127.0.0.1:${port}/0 as user 'someone' within 1500 ms (connectTimeoutMs)`);
    expect(error.message).toMatch(/ECONNREFUSED/);
    expect(failedAfterMs).toBeLessThan(5000);
    expectNoSecret(error, logger, secret);
  });

  describe('on a private server with a password', () => {
    const password = `right-${randomUUID()}`;
    let server: PrivateRedis;
    beforeAll(async () => {
      server = await startPrivateRedis(['--requirepass', password]);
    });
    afterAll(() => server?.stop());

    it('a refused login: a BrokerError at once (no wait for connectTimeoutMs), without the password', async () => {
      const secret = `wrong-${randomUUID()}`;
      for (const config of [{ url: `redis://:${secret}@127.0.0.1:${server.port}` }, { url: server.url, password: secret }]) {
        const { error, failedAfterMs, logger } = await failedStartup({ ...config, connectTimeoutMs: 10_000 });
        expect(error.message).toContain(`cannot connect to Redis at redis://127.0.0.1:${server.port}/0: the server refused the login or database`);
        expect(error.message).toMatch(/WRONGPASS/);
        expect(failedAfterMs).toBeLessThan(3000);
        expectNoSecret(error, logger, secret);
      }
      // No password at all: NOAUTH, refused as well.
      const { error } = await failedStartup({ url: server.url, connectTimeoutMs: 10_000 });
      expect(error.message).toMatch(/refused the login or database.*NOAUTH/);
    });

    it('an ACL user (the username and password settings): delivers; a wrong one is refused naming the user, not the password', async () => {
      const userPassword = `acl-${randomUUID()}`;
      await withRawRedis(
        (client) => client.call('ACL', 'SETUSER', 'orders-svc', 'on', `>${userPassword}`, '~*', '&*', '+@all'),
        `redis://:${password}@127.0.0.1:${server.port}`,
      );
      const { broker } = await start({ url: server.url, username: 'orders-svc', password: userPassword });
      const { event } = newEvent();
      const got: Received[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { callback: collect(got) } });
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'as orders-svc' } });
      await waitFor(() => got.length === 1, 'the message', 10_000);
      const secret = `wrong-${randomUUID()}`;
      const { error, logger } = await failedStartup({ url: `redis://orders-svc:${secret}@127.0.0.1:${server.port}`, connectTimeoutMs: 10_000 });
      expect(error.message).toContain(`cannot connect to Redis at redis://127.0.0.1:${server.port}/0 as user 'orders-svc': the server refused the login`);
      expectNoSecret(error, logger, secret);
    });

    it('the right password (the password setting) and a db number: delivers, in that database only', async () => {
      const { broker } = await start({ url: server.url, password, db: 3 });
      const { event, topic } = newEvent();
      const got: Received[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { callback: collect(got) } });
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'secured' } });
      await waitFor(() => got.length === 1, 'the message', 10_000);
      const url = `redis://:${password}@127.0.0.1:${server.port}`;
      expect(await withRawRedis((client) => client.exists(topic), `${url}/3`)).toBe(1);
      expect(await withRawRedis((client) => client.exists(topic), `${url}/0`)).toBe(0);
    });
  });

  it('refuses bad settings at startup with CONFIG_INVALID, each field named, the URL\'s password not shown', async () => {
    const error = await startupError({
      env: 'prd',
      product: PRODUCT,
      brokers: [
        {
          tag: 'redis',
          envs: [{ slug: 'prd', type: 'redis', config: { url: 'http://u:hunter2@127.0.0.1:6379', db: -1, maxLen: 1.5, tls: 'yes', claimIdleMs: 0, password: 7 } }],
        },
      ],
    });
    expect(error.code).toBe('CONFIG_INVALID');
    for (const field of ['url: protocol must be', '.db:', '.maxLen:', '.tls:', '.claimIdleMs:', '.password:']) expect(error.message).toContain(field);
    expect(error.message).not.toContain('hunter2');
  });

  it('trims each topic stream to about maxLen entries', async () => {
    const { broker } = await start({ maxLen: 100 });
    const { event, topic } = newEvent();
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'g', callback: () => undefined } });
    for (let i = 0; i < 1000; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, n) => broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n: i + n } } })));
    }
    const length = await withRawRedis((client) => client.xlen(topic));
    expect(length).toBeGreaterThanOrEqual(100);
    expect(length).toBeLessThan(300);
  });

  it('a server restarted without persistence (groups gone): consumers create their group again and get what is published after', async () => {
    const server = await startPrivateRedis(['--appendonly', 'no']);
    servers.push(server);
    const logger = new CapturingLogger();
    const { broker } = await start({ url: server.url }, logger);
    const { event } = newEvent();
    const got: Received[] = [];
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'amnesia', callback: collect(got) } });
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'before' } });
    await waitFor(() => got.length === 1, 'the first message', 10_000);
    await server.restart(300);
    await sleep(1500);
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'after' } });
    await waitFor(() => got.length === 2, 'the message published after the restart', 15_000);
    expect(got.map((r) => r.message)).toEqual(['before', 'after']);
    expect(logger.first("the consumer group 'amnesia' is missing on Redis; creating it again")).toBeDefined();
  });

  it('keeps delayed messages and retries in sorted sets that survive a server restart (AOF)', async () => {
    const server = await startPrivateRedis();
    servers.push(server);
    const { broker } = await start({ url: server.url, claimIdleMs: 3000 });
    const { event } = newEvent();
    const got: { message: unknown; attempt: number; at: number }[] = [];
    await broker.subscribe({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: {
        group: 'patient',
        retry: { maxAttempts: 3, initialDelayMs: 2000 },
        callback: (message: unknown, ctx: BrokerContext) => {
          got.push({ message, attempt: ctx.attempt, at: Date.now() });
          if (message === 'flaky' && ctx.attempt === 1) throw new Error('once');
        },
      },
    });
    const sent = Date.now();
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'later', delayMs: 2000 } });
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'flaky' } });
    await waitFor(() => got.length === 1, 'the first attempt of the flaky message', 10_000);
    // Both now wait in sorted sets on the server: the delayed publish and the retry.
    await server.restart(500);
    await waitFor(() => got.length === 3, 'the delayed message and the retry', 15_000);
    const later = got.find((r) => r.message === 'later')!;
    expect(later.at - sent).toBeGreaterThanOrEqual(1990);
    expect(got.filter((r) => r.message === 'flaky').map((r) => r.attempt)).toEqual([1, 2]);
  });
});
