import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import type { INestApplication } from '@nestjs/common';
import { AckPolicy, DeliverPolicy, headers as natsHeaders, RetentionPolicy, StorageType, type JsMsg } from 'nats';
import { BrokerError, type BrokerContext, type BrokerEnvConfig, type BrokerModuleOptions, type MessageBrokerService, type NatsEnvConfig } from '../../lib';
import { CapturingLogger, createBrokerApp, startupError } from '../support/app';
import { describeWithBroker } from '../support/broker-availability';
import { runUnique } from '../support/names';
import { deleteCreatedNatsResourcesAfterAll, itWithNatsServer, natsEnv, rawTopicReader, startPrivateNats, withRawConnection, type PrivateNatsServer } from '../support/nats';
import { sleep, waitFor } from '../support/wait';

// A product of this run's own: every stream and consumer the file makes is named after it.
const PRODUCT = runUnique('nats-adapter');
const SUITE = 'NATS adapter: topology, wire format, retries, dead letters, bad input';
const STREAM = `ductape_${PRODUCT.replace(/\./g, '_')}_prd`;
const HELD = `${STREAM}_held`;

deleteCreatedNatsResourcesAfterAll();
const itWithServer = itWithNatsServer(SUITE);

describeWithBroker('nats', SUITE, () => {
  jest.setTimeout(30_000);
  const apps: INestApplication[] = [];
  const servers: PrivateNatsServer[] = [];

  function options(envs: BrokerEnvConfig[]): BrokerModuleOptions {
    return { env: 'prd', product: PRODUCT, brokers: [{ tag: 'nats', envs }], shutdownTimeoutMs: 2000 };
  }

  async function start(config: Partial<NatsEnvConfig['config']> = {}, logger?: CapturingLogger): Promise<MessageBrokerService> {
    const started = await createBrokerApp(options([natsEnv('prd', config)]), {}, logger);
    apps.push(started.app);
    return started.broker;
  }

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });

  function newEvent() {
    const tag = `t-${randomUUID().slice(0, 8)}`;
    return { event: `nats:${tag}`, topic: `${PRODUCT}.prd.${tag}` };
  }

  async function plainPublish(subject: string, body: string, headers: Record<string, string> = {}): Promise<void> {
    await withRawConnection(async (nc) => {
      const hdrs = natsHeaders();
      for (const [name, value] of Object.entries(headers)) hdrs.set(name, value);
      await nc.jetstream().publish(subject, body, { headers: hdrs });
    });
  }

  describe('topology', () => {
    it('makes a limits-retention file stream per product and environment and a durable consumer per group (filter: the topic, deliver policy new, explicit ack)', async () => {
      const broker = await start();
      const { event, topic } = newEvent();
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'topo', callback: () => undefined } });
      await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        const stream = await jsm.streams.info(STREAM);
        expect(stream.config.subjects).toEqual([`${PRODUCT}.prd`, `${PRODUCT}.prd.>`]);
        expect(stream.config.retention).toBe(RetentionPolicy.Limits);
        expect(stream.config.storage).toBe(StorageType.File);
        expect(stream.config.max_age).toBe(7 * 24 * 3_600_000 * 1_000_000);
        const consumers: { filter?: string; deliver: DeliverPolicy; ack: AckPolicy; durable?: string }[] = [];
        const durableName: unknown = expect.stringMatching(/^g_.*topo_[0-9a-f]{12}$/);
        for await (const consumer of jsm.consumers.list(STREAM)) {
          if (consumer.config.filter_subject === topic) {
            consumers.push({ filter: consumer.config.filter_subject, deliver: consumer.config.deliver_policy, ack: consumer.config.ack_policy, durable: consumer.config.durable_name });
          }
        }
        expect(consumers).toEqual([{ filter: topic, deliver: DeliverPolicy.New, ack: AckPolicy.Explicit, durable: durableName }]);
      });
    });
  });

  describe('wire format (CloudEvents NATS binding)', () => {
    it('publishes the bare JSON with ce- headers, content-type and the user headers, as a plain subscriber reads it', async () => {
      const broker = await start();
      const { event, topic } = newEvent();
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'wire', callback: () => undefined } });
      const reader = await rawTopicReader(topic);
      try {
        const { messageId } = await broker.publish({
          env: 'prd',
          event,
          product_tag: PRODUCT,
          input: { message: { order: 7 }, headers: { tenant: 'acme' }, correlationId: 'corr-1', key: 'k-1' },
        });
        const record = await reader.next(5000);
        expect(record.body.toString()).toBe('{"order":7}');
        expect(record.headers).toMatchObject({
          'ce-specversion': '1.0',
          'ce-id': messageId,
          'ce-type': event,
          'ce-correlationid': 'corr-1',
          'ce-partitionkey': 'k-1',
          'content-type': 'application/json',
          tenant: 'acme',
        });
        expect(record.headers['ce-source']).toMatch(new RegExp(`^/${PRODUCT}/prd/`));
        expect(Date.parse(record.headers['ce-time'])).not.toBeNaN();
      } finally {
        await reader.close();
      }
    });

    it("takes a plain producer's Nats-Msg-Id as ctx.messageId, the same on its retry, and its JSON as the message", async () => {
      const broker = await start();
      const { event, topic } = newEvent();
      const seen: { id: string; attempt: number; message: unknown }[] = [];
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: PRODUCT,
        input: {
          group: 'plain',
          retry: { maxAttempts: 2, initialDelayMs: 50 },
          callback: (message: unknown, ctx: BrokerContext) => {
            seen.push({ id: ctx.messageId, attempt: ctx.attempt, message });
            if (ctx.attempt === 1) throw new Error('once');
          },
        },
      });
      await plainPublish(topic, '{"plain":true}', { 'Nats-Msg-Id': 'plain-42' });
      await waitFor(() => seen.length === 2, 'the delivery and its retry', 5000);
      expect(seen).toEqual([
        { id: 'plain-42', attempt: 1, message: { plain: true } },
        { id: 'plain-42', attempt: 2, message: { plain: true } },
      ]);
    });
  });

  describe('retries and dead letters', () => {
    it('retries the same stored message with nak(delay), JetStream counting the attempts, then keeps the dead letter in the held stream with its bytes and headers', async () => {
      const broker = await start();
      const { event, topic } = newEvent();
      const attempts: { attempt: number; seq: number; at: number }[] = [];
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: PRODUCT,
        input: {
          group: 'fails',
          retry: { maxAttempts: 3, initialDelayMs: 200, multiplier: 2 },
          callback: (_message: unknown, ctx: BrokerContext) => {
            attempts.push({ attempt: ctx.attempt, seq: (ctx.raw as JsMsg).seq, at: Date.now() });
            throw new Error('always fails');
          },
        },
      });
      const { messageId } = await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n: 1 } } });
      await waitFor(() => attempts.length === 3, 'three attempts', 5000);
      expect(attempts.map((a) => a.attempt)).toEqual([1, 2, 3]);
      // One stored message, given back: the same stream sequence each time.
      expect(new Set(attempts.map((a) => a.seq)).size).toBe(1);
      expect(attempts[1].at - attempts[0].at).toBeGreaterThanOrEqual(180);
      expect(attempts[2].at - attempts[1].at).toBeGreaterThanOrEqual(380);
      await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        await waitFor(async () => (await jsm.streams.info(HELD)).state.messages === 1, 'the dead letter in the held stream', 5000);
        const stored = await jsm.streams.getMessage(HELD, { last_by_subj: `_ductape.dl.fails.${topic}` });
        expect(new TextDecoder().decode(stored.data)).toBe('{"n":1}');
        expect(stored.header.get('ce-id')).toBe(messageId);
        expect(stored.header.get('x-ductape-attempts')).toBe('3');
        expect(stored.header.get('x-ductape-error')).toContain('always fails');
      });
      // And back to the group, as a first attempt, by reprocessDeadLetters.
      expect(await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: PRODUCT, group: 'fails' })).toBe(1);
      await waitFor(() => attempts.length === 4, 'the reprocessed dead letter', 5000);
      expect(attempts[3].attempt).toBe(1);
    });

    it('dead-letters a poison message written by a plain nats client and keeps consuming', async () => {
      const broker = await start();
      const { event, topic } = newEvent();
      const handled: unknown[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'poison', callback: (message: unknown) => void handled.push(message) } });
      await plainPublish(topic, 'not json {');
      await plainPublish(topic, '{"ok":1}');
      await waitFor(() => handled.length === 1, 'the good message after the poison one', 5000);
      expect(handled).toEqual([{ ok: 1 }]);
      await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        const subject = `_ductape.dl.poison.${topic}`;
        await waitFor(async () => (await jsm.streams.getMessage(HELD, { last_by_subj: subject }).catch(() => undefined)) !== undefined, 'the dead letter', 5000);
        const stored = await jsm.streams.getMessage(HELD, { last_by_subj: `_ductape.dl.poison.${topic}` });
        expect(new TextDecoder().decode(stored.data)).toBe('not json {');
        expect(stored.header.get('x-ductape-dead-letter-reason')).toBe('poison');
      });
    });

    it('moves a delayed publish to the topic when due, from the held stream', async () => {
      const broker = await start();
      const { event } = newEvent();
      const got: number[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'delay', callback: () => void got.push(Date.now()) } });
      const before = Date.now();
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'later', delayMs: 1000 } });
      await waitFor(() => got.length === 1, 'the delayed message', 5000);
      expect(got[0] - before).toBeGreaterThanOrEqual(990);
      await sleep(300);
      expect(got).toHaveLength(1);
    });
  });

  describe('bad input and safety', () => {
    it('refuses reserved or malformed headers and a message beyond max_payload with INVALID_MESSAGE; the publishes around them go through', async () => {
      const broker = await start();
      const { event } = newEvent();
      const handled: unknown[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'bad', callback: (message: unknown) => void handled.push(message) } });
      const publish = (input: Record<string, unknown>) =>
        broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'x', ...input } }).then(
          () => undefined,
          (error: unknown) => error,
        );
      await publish({ message: 1 });
      for (const headers of [{ 'ce-id': 'x' }, { 'Nats-Msg-Id': 'x' }, { 'content-type': 'text/plain' }, { 'bad name': 'x' }, { fine: 'line\nbreak' }]) {
        const error = await publish({ headers });
        expect(error).toBeInstanceOf(BrokerError);
        expect((error as BrokerError).code).toBe('INVALID_MESSAGE');
      }
      const large = await publish({ message: 'x'.repeat(1024 * 1024 + 10) });
      expect((large as BrokerError).code).toBe('INVALID_MESSAGE');
      expect((large as BrokerError).message).toMatch(/too large/);
      await publish({ message: 2 });
      await waitFor(() => handled.length === 2, 'the two good messages', 5000);
      expect(handled).toEqual([1, 2]);
    });

    it('names the server but never the token when the server is unreachable at startup', async () => {
      const logger = new CapturingLogger();
      const broker = await start({ servers: ['nats://t0ken-s3cret@127.0.0.1:1'], connectTimeoutMs: 1000 }, logger);
      const error = await broker.subscribe({ env: 'prd', event: 'nats:unreachable', product_tag: PRODUCT, input: { callback: () => undefined } }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BrokerError);
      expect((error as BrokerError).code).toBe('SUBSCRIBE_FAILED');
      expect((error as BrokerError).message).toContain('nats://127.0.0.1:1');
      expect((error as BrokerError).message).toMatch(/CONNECTION_REFUSED|ECONNREFUSED/);
      expect(JSON.stringify([(error as Error).message, (error as Error).stack, logger.texts])).not.toContain('t0ken-s3cret');
    });

    itWithServer('says the login was refused, without the password, when user and pass are wrong (a private server with --user/--pass)', async () => {
      const server = await startPrivateNats({ user: 'ductape', pass: 'r1ght-pass' });
      servers.push(server);
      const logger = new CapturingLogger();
      const broker = await start({ servers: [server.url], user: 'ductape', pass: 'wr0ng-pass' }, logger);
      const error = await broker.publish({ env: 'prd', event: 'nats:denied', product_tag: PRODUCT, input: { message: 1 } }).catch((e: unknown) => e);
      expect((error as BrokerError).code).toBe('PUBLISH_FAILED');
      expect((error as BrokerError).message).toContain(server.url);
      expect((error as BrokerError).message).toMatch(/refused the login .*authorization.violation.*check user 'ductape' and its password/i);
      expect(JSON.stringify([(error as Error).message, (error as Error).stack, logger.texts])).not.toContain('wr0ng-pass');
      // The right password works.
      const good = await start({ servers: [server.url], user: 'ductape', pass: 'r1ght-pass' });
      const { event } = newEvent();
      const got: unknown[] = [];
      await good.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'auth', callback: (m: unknown) => void got.push(m) } });
      await good.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'in' } });
      await waitFor(() => got.length === 1, 'the message on the server with a login', 5000);
    });

    itWithServer('says the login was refused, without the token, when the token is wrong (a private server with --auth)', async () => {
      const server = await startPrivateNats({ token: 'r1ght-t0ken' });
      servers.push(server);
      const logger = new CapturingLogger();
      const broker = await start({ servers: [server.url], token: 'wr0ng-t0ken' }, logger);
      const error = await broker.publish({ env: 'prd', event: 'nats:denied', product_tag: PRODUCT, input: { message: 1 } }).catch((e: unknown) => e);
      expect((error as BrokerError).code).toBe('PUBLISH_FAILED');
      expect((error as BrokerError).message).toMatch(/refused the login .*check the token/i);
      expect(JSON.stringify([(error as Error).message, (error as Error).stack, logger.texts])).not.toContain('wr0ng-t0ken');
    });

    it('refuses a bad config with CONFIG_INVALID at startup, listing each problem, without echoing secrets', async () => {
      const error = await startupError(
        options([
          { slug: 'prd', type: 'nats', config: { servers: [], user: 'u', token: 'tok-s3cret', storage: 'disk' as 'file', ackWaitMs: 0 } },
        ]),
      );
      expect(error.code).toBe('CONFIG_INVALID');
      expect(error.problems).toEqual([
        'brokers[0].envs[0].config.servers: must be a non-empty array of server addresses',
        'brokers[0].envs[0].config: user and pass must be given together',
        'brokers[0].envs[0].config: give token or user and pass, not both',
        'brokers[0].envs[0].config.ackWaitMs: must be a number of at least 1',
        "brokers[0].envs[0].config.storage: must be 'file' or 'memory'",
      ]);
      expect(error.message).not.toContain('tok-s3cret');
    });
  });
});
