import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { Socket } from 'node:net';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import type { Channel, ConfirmChannel, Message, Options, Replies } from 'amqplib';
import {
  BrokerError,
  DEAD_LETTER_HEADERS,
  DuctapeBrokerModule,
  MessageBrokerService,
  type BrokerContext,
  type BrokerModuleOptions,
  type RabbitMqEnvConfig,
} from '../../lib';
import { createRabbitMqAdapter } from '../../lib/adapters/rabbitmq';
import { CapturingLogger, createBrokerApp, startupError } from '../support/app';
import { describeWithBroker } from '../support/broker-availability';
import { holdExclusively } from '../support/exclusive';
import { deleteTopology, listQueues, queueDepth, rabbitEnv, rabbitmqctl, rawPublish, withRawConnection } from '../support/rabbitmq';
import { gate, sleep, waitFor } from '../support/wait';

const PRODUCT = 'rmq-adapter';

// The resilience file restarts the broker: never alongside this one.
holdExclusively('rabbitmq', { cleanup: () => deleteTopology([`${PRODUCT}.`]) });

// Needs RabbitMQ and rabbitmqctl on this machine (the probe runs `rabbitmqctl status`).
describeWithBroker('rabbitmqctl', 'RabbitMQ adapter', () => {
  const apps: INestApplication[] = [];

  function options(envs: RabbitMqEnvConfig[], overrides: Partial<BrokerModuleOptions> = {}): BrokerModuleOptions {
    return {
      env: 'prd',
      product: PRODUCT,
      brokers: [{ tag: 'rmq', envs }],
      retry: { maxAttempts: 3, initialDelayMs: 50 },
      shutdownTimeoutMs: 2000,
      ...overrides,
    };
  }

  async function start(envConfig: Partial<RabbitMqEnvConfig['config']> = {}, overrides: Partial<BrokerModuleOptions> = {}) {
    const started = await createBrokerApp(options([rabbitEnv('prd', envConfig), rabbitEnv('stg', envConfig)], overrides));
    apps.push(started.app);
    return started.broker;
  }

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
  });

  function newTopic() {
    const tag = `t-${randomUUID().slice(0, 8)}`;
    return { event: `rmq:${tag}`, topic: `${PRODUCT}.prd.${tag}`, stgTopic: `${PRODUCT}.stg.${tag}` };
  }

  describe('topology', () => {
    it('declares a durable fanout exchange per topic and a durable queue per group, named after the physical topic', async () => {
      const broker = await start();
      const { event, topic, stgTopic } = newTopic();
      for (const env of ['prd', 'stg']) {
        for (const group of ['billing', 'shipping']) {
          await broker.subscribe({ env, event, product_tag: PRODUCT, input: { group, callback: () => undefined } });
        }
      }
      const exchanges = await rabbitmqctl('list_exchanges', '-q', '--no-table-headers', 'name', 'type', 'durable');
      expect(exchanges).toContain(`${topic}\tfanout\ttrue`);
      expect(exchanges).toContain(`${stgTopic}\tfanout\ttrue`);
      const queues = await rabbitmqctl('list_queues', '-q', '--no-table-headers', 'name', 'durable');
      const ours = queues
        .split('\n')
        .filter((line) => line.includes(topic) || line.includes(stgTopic))
        .sort();
      expect(ours).toEqual(
        [
          `${topic}:billing\ttrue`,
          `${topic}:billing:dead-letters\ttrue`,
          `${topic}:shipping\ttrue`,
          `${topic}:shipping:dead-letters\ttrue`,
          `${stgTopic}:billing\ttrue`,
          `${stgTopic}:billing:dead-letters\ttrue`,
          `${stgTopic}:shipping\ttrue`,
          `${stgTopic}:shipping:dead-letters\ttrue`,
        ].sort(),
      );
      const bindings = await rabbitmqctl('list_bindings', '-q', '--no-table-headers', 'source_name', 'destination_name');
      expect(bindings).toContain(`${topic}\t${topic}:billing`);
      expect(bindings).toContain(`${topic}\t${topic}:shipping`);
      expect(bindings).not.toContain(`${topic}\t${stgTopic}:billing`);
    });

    it('publishes persistent messages with the messageId, correlationId and headers as AMQP properties', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const sub = await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'audit', callback: () => undefined } });
      await sub.unsubscribe();
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n: 1 }, messageId: 'm-1', correlationId: 'c-1' } });
      const got = await withRawConnection(async (connection) => {
        const channel = await connection.createChannel();
        return channel.get(`${topic}:audit`, { noAck: true });
      });
      if (got === false) throw new Error('the message is not in the group queue');
      expect(got.properties.deliveryMode).toBe(2);
      expect(got.properties.messageId).toBe('m-1');
      expect(got.properties.correlationId).toBe('c-1');
      expect(got.properties.contentType).toBe('application/json');
      const envelope = JSON.parse(got.content.toString()) as Record<string, unknown>;
      expect(envelope).toMatchObject({ v: 1, id: 'm-1', correlationId: 'c-1', message: { n: 1 }, attempt: 1, headers: {} });
      // The route is the queue's own: the envelope does not repeat the event, env or product.
      expect(Object.keys(envelope).sort()).toEqual(['attempt', 'correlationId', 'headers', 'id', 'message', 'publishedAt', 'v']);
    });
  });

  describe('publisher confirms', () => {
    /**
     * Spies on the real amqplib ConfirmChannel the adapter uses (not a mock: every call still goes
     * to the server). The prototype is taken from a live channel of the same amqplib module.
     */
    async function spyOnConfirmChannels(hold?: Promise<void>) {
      const proto = await withRawConnection(async (connection) => Object.getPrototypeOf(await connection.createConfirmChannel()) as ConfirmChannel);
      const original = proto.publish;
      const stats = { published: 0, confirmed: 0, maxOutstanding: 0, headerTables: 0, channels: new Set<ConfirmChannel>() };
      proto.publish = function (this: ConfirmChannel, exchange: string, key: string, content: Buffer, opts?: Options.Publish, cb?: (err: unknown, ok: Replies.Empty) => void) {
        stats.published++;
        if (opts?.headers !== undefined) stats.headerTables++;
        stats.channels.add(this);
        stats.maxOutstanding = Math.max(stats.maxOutstanding, stats.published - stats.confirmed);
        return original.call(this, exchange, key, content, opts, (err: unknown, ok: Replies.Empty) => {
          const settle = () => {
            stats.confirmed++;
            cb?.(err, ok);
          };
          if (hold) void hold.then(settle);
          else settle();
        });
      };
      return { stats, restore: () => (proto.publish = original) };
    }

    it('resolves a publish only once the broker confirmed it', async () => {
      const broker = await start();
      const { event } = newTopic();
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { callback: () => undefined } });
      const confirm = gate();
      const spy = await spyOnConfirmChannels(confirm.promise);
      try {
        let resolved = false;
        const publishing = broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'held' } }).then(() => (resolved = true));
        await waitFor(() => spy.stats.published === 1, 'the publish to be written');
        await sleep(200); // the broker's confirm has arrived by now, and is held back
        expect(resolved).toBe(false);
        confirm.open();
        await publishing;
        expect(resolved).toBe(true);
      } finally {
        spy.restore();
      }
    });

    it('pipelines concurrent publishes on one confirm channel', async () => {
      const broker = await start();
      const { event } = newTopic();
      let received = 0;
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { concurrency: 50, callback: () => void received++ } });
      const spy = await spyOnConfirmChannels();
      try {
        await Promise.all(Array.from({ length: 1000 }, (_, i) => broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { i } } })));
      } finally {
        spy.restore();
      }
      expect(spy.stats.published).toBe(1000);
      expect(spy.stats.channels.size).toBe(1);
      // One round trip at a time would never have more than one message awaiting its confirm.
      expect(spy.stats.maxOutstanding).toBeGreaterThan(100);
      await waitFor(() => received === 1000, 'all 1000 messages', 10_000);
    });

    it('rejects with PUBLISH_FAILED a message no queue takes (returned as unroutable)', async () => {
      const broker = await start();
      const { event } = newTopic();
      const error = await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'nobody listens' } }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BrokerError);
      expect((error as BrokerError).code).toBe('PUBLISH_FAILED');
      expect((error as BrokerError).message).toMatch(/could not be routed.*NO_ROUTE/);
    });

    it('matches each returned message to its own publish among many in flight, with no header on the wire', async () => {
      const broker = await start();
      const routed = newTopic();
      const unroutable = newTopic();
      let received = 0;
      await broker.subscribe({ env: 'prd', event: routed.event, product_tag: PRODUCT, input: { concurrency: 50, callback: () => void received++ } });
      // Confirms are held back until every return has arrived, so all 600 are in flight when each
      // return is matched: the oldest in flight is then rarely the returned one.
      const confirms = gate();
      const spy = await spyOnConfirmChannels(confirms.promise);
      let results: PromiseSettledResult<unknown>[];
      try {
        // Interleaved: 300 to a topic with a group, 300 to one without, all at once.
        const publishing = Promise.allSettled(
          Array.from({ length: 600 }, (_, i) =>
            broker.publish({ env: 'prd', event: (i % 2 === 0 ? routed : unroutable).event, product_tag: PRODUCT, input: { message: { i } } }),
          ),
        );
        await waitFor(() => spy.stats.published === 600, 'all 600 written');
        await sleep(500);
        confirms.open();
        results = await publishing;
      } finally {
        spy.restore();
      }
      results.forEach((result, i) => {
        if (i % 2 === 0) expect(result.status).toBe('fulfilled');
        else expect(String((result as PromiseRejectedResult).reason)).toMatch(/NO_ROUTE/);
      });
      expect(spy.stats.maxOutstanding).toBeGreaterThan(10);
      expect(spy.stats.headerTables).toBe(0);
      await waitFor(() => received === 300, 'the 300 routed messages', 10_000);
    });

    it('never takes a returned message for confirmed when another in flight has the same bytes (a retry re-sent twice, say)', async () => {
      const adapter = createRabbitMqAdapter(rabbitEnv('prd').config, { brokerTag: 'b', envSlug: 'prd', logger: { log() {}, warn() {}, error() {} } });
      await adapter.connect();
      const { topic } = newTopic();
      const queue = `${topic}:g`;
      await withRawConnection(async (connection) => void (await (await connection.createChannel()).assertQueue(queue, { durable: true })));
      const same = { body: '{"v":1,"id":"same","publishedAt":1,"attempt":2,"headers":{},"message":"x"}', messageId: 'same', headers: {} };
      // A is written while its queue exists; its confirm is held back. Then the queue goes, and B,
      // byte for byte the same, is returned: B must not resolve as if it had been routed.
      const confirms = gate();
      const spy = await spyOnConfirmChannels(confirms.promise);
      try {
        const first = adapter.sendToGroup({ name: topic, tag: 't' }, 'g', same).then(
          () => 'confirmed',
          (error: unknown) => String(error),
        );
        await waitFor(() => spy.stats.published === 1, 'the first publish to be written');
        await withRawConnection(async (connection) => void (await (await connection.createChannel()).deleteQueue(queue)));
        const second = adapter.sendToGroup({ name: topic, tag: 't' }, 'g', same).then(
          () => 'confirmed',
          (error: unknown) => String(error),
        );
        await waitFor(() => spy.stats.published === 2, 'the second publish to be written');
        await sleep(300);
        confirms.open();
        expect(await second).toMatch(/NO_ROUTE/);
        // The first may be taken for returned too: it is then sent again by its caller (a duplicate, never a loss).
        expect(await first).toMatch(/confirmed|NO_ROUTE/);
      } finally {
        spy.restore();
        await adapter.close();
      }
    });

    it('rejects with PUBLISH_FAILED a message the broker nacks', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      // A queue that refuses every message: RabbitMQ nacks what it cannot enqueue.
      await withRawConnection(async (connection) => {
        const channel = await connection.createChannel();
        await channel.assertExchange(topic, 'fanout', { durable: true });
        await channel.assertQueue(`${topic}:full`, { durable: true, arguments: { 'x-max-length': 0, 'x-overflow': 'reject-publish' } });
        await channel.bindQueue(`${topic}:full`, topic, '');
      });
      const error = await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'refused' } }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BrokerError);
      expect((error as BrokerError).code).toBe('PUBLISH_FAILED');
      expect((error as BrokerError).message).toMatch(/refused the message \(nack\)/);
    });
  });

  describe('retries and dead letters on the broker', () => {
    it('retries through TTL delay queues, then keeps the dead letter in its group queue with headers', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const attempts: number[] = [];
      const sub = await broker.subscribe({
        env: 'prd',
        event,
        product_tag: PRODUCT,
        input: {
          group: 'flaky',
          retry: { maxAttempts: 3, initialDelayMs: 150, multiplier: 2 },
          callback: (_m: unknown, ctx: BrokerContext) => {
            attempts.push(ctx.attempt);
            throw new Error('still down');
          },
        },
      });
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { id: 'x' } } });
      await waitFor(() => attempts.length === 3, 'three attempts', 5000);
      const queues = await rabbitmqctl('list_queues', '-q', '--no-table-headers', 'name', 'arguments');
      // Backoff 150 ms then 300 ms: one delay queue each, dead-lettering back to the group's queue.
      const delay150 = queues.split('\n').find((line) => line.startsWith(`${topic}:flaky:delay-150ms\t`));
      expect(delay150).toBeDefined();
      expect(delay150).toContain('x-message-ttl');
      expect(delay150).toContain(`${topic}:flaky`);
      expect(queues).toContain(`${topic}:flaky:delay-300ms\t`);
      await sub.unsubscribe();
      const dead = await withRawConnection(async (connection) => {
        const channel = await connection.createChannel();
        for (let i = 0; i < 50; i++) {
          const message = await channel.get(`${topic}:flaky:dead-letters`, { noAck: false });
          if (message) return message;
          await sleep(20);
        }
        return false;
      });
      if (dead === false) throw new Error('no dead letter in the dead-letter queue');
      const headers = dead.properties.headers as Record<string, unknown>;
      expect(String(headers[DEAD_LETTER_HEADERS.error])).toContain('still down');
      expect(String(headers[DEAD_LETTER_HEADERS.attempts])).toBe('3');
      expect(Number.isNaN(Date.parse(String(headers[DEAD_LETTER_HEADERS.failedAt])))).toBe(false);
      expect(attempts).toEqual([1, 2, 3]);
    });

    it('works the same on quorum queues', async () => {
      const broker = await start({ queueType: 'quorum' });
      const { event, topic } = newTopic();
      let calls = 0;
      const dead: unknown[] = [];
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: PRODUCT,
        input: {
          group: 'q',
          retry: { maxAttempts: 2, initialDelayMs: 50 },
          callback: () => {
            calls++;
            throw new Error('no');
          },
        },
      });
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'q', deadLetter: true, callback: (m: unknown) => void dead.push(m) } });
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'on quorum' } });
      await waitFor(() => dead.length === 1, 'the dead letter', 5000);
      expect(calls).toBe(2);
      const types = await rabbitmqctl('list_queues', '-q', '--no-table-headers', 'name', 'type');
      expect(types).toContain(`${topic}:q\tquorum`);
      expect(types).toContain(`${topic}:q:dead-letters\tquorum`);
    });

    it('dead-letters a poison message with foreign AMQP headers and keeps consuming', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const handled: unknown[] = [];
      const dead: BrokerContext[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'g', callback: (m: unknown) => void handled.push(m) } });
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'g', deadLetter: true, callback: (_m: unknown, ctx: BrokerContext) => void dead.push(ctx) } });
      await rawPublish(topic, '', Buffer.from([0xff, 0xfe, 0x00, 0x01]), { count: 3, nested: { a: [1, 'two'] }, flag: true });
      await waitFor(() => dead.length === 1, 'the poison message among the dead letters', 5000);
      expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('poison');
      expect(dead[0].headers.count).toBe('3');
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'fine' } });
      await waitFor(() => handled.length === 1, 'the next message', 5000);
      expect(handled).toEqual(['fine']);
    });
  });

  describe('acks', () => {
    /**
     * Spies on amqplib's Channel.prototype.ack, the real method (every ack still goes to the
     * server). The prototype is taken from a live channel of the same amqplib module.
     */
    async function spyOnAcks() {
      const proto = await withRawConnection(async (connection) => Object.getPrototypeOf(Object.getPrototypeOf(await connection.createConfirmChannel())) as Channel);
      const original = proto.ack;
      const calls: { tag: number; allUpTo: boolean }[] = [];
      proto.ack = function (this: Channel, message: Message, allUpTo?: boolean) {
        calls.push({ tag: message.fields.deliveryTag, allUpTo: allUpTo === true });
        return original.call(this, message, allUpTo);
      };
      return { calls, restore: () => (proto.ack = original) };
    }

    async function queueCounts(queue: string) {
      return (await listQueues()).find((entry) => entry.name === queue);
    }

    it('coalesces the acks of a busy consumer into multiple-acks, and every message ends acked', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const spy = await spyOnAcks();
      try {
        let handled = 0;
        await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'busy', concurrency: 50, callback: () => void handled++ } });
        await Promise.all(Array.from({ length: 500 }, (_, i) => broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { i } } })));
        await waitFor(() => handled === 500, 'all 500 messages', 10_000);
        await waitFor(async () => (await queueCounts(`${topic}:busy`))?.unacked === 0, 'no unacked message left on the broker', 10_000);
      } finally {
        spy.restore();
      }
      expect(await queueCounts(`${topic}:busy`)).toMatchObject({ ready: 0, unacked: 0 });
      // One ack frame per message would be 500 calls; a multiple-ack must have covered several at once.
      expect(spy.calls.length).toBeLessThan(400);
      const covering = spy.calls.filter((call, i) => call.allUpTo && i > 0 && call.tag - spy.calls[i - 1].tag > 1);
      expect(covering.length).toBeGreaterThan(0);
    });

    it('never lets a multiple-ack cover a delivery whose handler still runs, and acks those behind it one by one', async () => {
      const broker = await start({}, { shutdownTimeoutMs: 300 });
      const { event, topic } = newTopic();
      const stuck = gate();
      const handled: number[] = [];
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: PRODUCT,
        input: {
          group: 'gap',
          concurrency: 5,
          callback: async (message: { i: number }) => {
            if (message.i === 0) await stuck.promise;
            handled.push(message.i);
          },
        },
      });
      for (let i = 0; i < 20; i++) await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { i } } });
      const redelivered: number[] = [];
      try {
        // With prefetch 5 and message 0 held, the other 19 only arrive if their acks went out.
        await waitFor(() => handled.length === 19, 'the 19 messages behind the held one', 10_000);
        await waitFor(async () => (await queueCounts(`${topic}:gap`))?.unacked === 1, 'only the held message unacked', 10_000);
        expect(await queueCounts(`${topic}:gap`)).toMatchObject({ ready: 0, unacked: 1 });

        // Shutdown gives up on the held handler: its message goes back, and the next instance gets it.
        await Promise.all(apps.splice(0).map((app) => app.close()));
        const next = await start();
        await next.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'gap', callback: (message: { i: number }) => void redelivered.push(message.i) } });
        await waitFor(() => redelivered.length === 1, 'the held message, redelivered', 5000);
      } finally {
        stuck.open();
      }
      await sleep(200);
      expect(redelivered).toEqual([0]);
    });
  });

  describe('bad input and safety', () => {
    it('turns TCP_NODELAY on for its connections, unless socketOptions turn it off', async () => {
      // A spy on the real sockets amqplib opens: each call still reaches the socket.
      const setNoDelay = jest.spyOn(Socket.prototype, 'setNoDelay');
      try {
        // Connections open on first use of the env.
        const broker = await start();
        await broker.subscribe({ env: 'prd', event: newTopic().event, product_tag: PRODUCT, input: { callback: () => undefined } });
        const byDefault = setNoDelay.mock.calls.map(([noDelay]) => noDelay);
        setNoDelay.mockClear();
        const withoutNoDelay = await start({ socketOptions: { noDelay: false } });
        await withoutNoDelay.subscribe({ env: 'prd', event: newTopic().event, product_tag: PRODUCT, input: { callback: () => undefined } });
        const turnedOff = setNoDelay.mock.calls.map(([noDelay]) => noDelay);
        // One publishing and one consuming connection each.
        expect(byDefault.length).toBeGreaterThanOrEqual(2);
        expect(byDefault.every((noDelay) => noDelay === true)).toBe(true);
        expect(turnedOff.length).toBeGreaterThanOrEqual(2);
        expect(turnedOff.every((noDelay) => noDelay === false)).toBe(true);
      } finally {
        setNoDelay.mockRestore();
      }
    });

    it("refuses an application header named CC or BCC with INVALID_MESSAGE, and the publishes around it go through", async () => {
      // RabbitMQ reads CC and BCC as routing keys and closes the channel over a string one, which
      // failed the publishes in flight beside it too.
      const broker = await start();
      const { event } = newTopic();
      const handled: unknown[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { callback: (message) => void handled.push(message) } });
      const publish = (n: number, headers?: Record<string, string>) => broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n }, headers } });
      const results = await Promise.allSettled([
        ...Array.from({ length: 10 }, (_, n) => publish(n)),
        publish(100, { CC: 'finance@example.com' }),
        publish(101, { BCC: 'audit' }),
        ...Array.from({ length: 10 }, (_, n) => publish(10 + n)),
      ]);
      const refused = results.filter((result) => result.status === 'rejected').map((result) => result.reason as BrokerError);
      expect(refused.map((error) => error.code)).toEqual(['INVALID_MESSAGE', 'INVALID_MESSAGE']);
      expect(refused[0].message).toMatch(/header 'CC' is reserved by RabbitMQ/);
      await waitFor(() => handled.length === 20, 'the 20 other messages');
      await sleep(200);
      expect(handled).toHaveLength(20);
    });

    it('does not pass on the CC header of a delivery, so a message routed with CC can be retried', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const seen: { attempt: number }[] = [];
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: PRODUCT,
        input: {
          callback: (_message, ctx) => {
            seen.push({ attempt: ctx.attempt });
            if (ctx.attempt === 1) throw new Error('first attempt fails');
          },
        },
      });
      // From a producer that uses sender-selected distribution (a valid, array CC).
      const envelope = { v: 1, id: randomUUID(), publishedAt: Date.now(), attempt: 1, headers: {}, message: { n: 1 } };
      await rawPublish(topic, '', Buffer.from(JSON.stringify(envelope)), { CC: ['elsewhere'] });
      // The retry is sent with the delivery's headers: a CC among them, as a string, made the
      // broker refuse it, and the message came back at attempt 1 again, and again.
      await waitFor(() => seen.some((entry) => entry.attempt === 2), 'the retry', 8000);
      expect(seen.map((entry) => entry.attempt)).toEqual([1, 2]);
    });

    it('names host and port but never the password when the broker is unreachable at startup', async () => {
      const logger = new CapturingLogger();
      const config = options([{ slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://ductape:s3cr3t-pw@127.0.0.1:1/orders', connectTimeoutMs: 500 } }]);
      const error = await startWithLogger(config, logger, async (broker) => {
        await broker.subscribe({ env: 'prd', event: 'rmq:unreachable', product_tag: PRODUCT, input: { callback: () => undefined } });
      });
      expect(error).toBeInstanceOf(BrokerError);
      expect((error as BrokerError).code).toBe('SUBSCRIBE_FAILED');
      expect((error as BrokerError).message).toContain('amqp://127.0.0.1:1/orders');
      expect((error as BrokerError).message).toMatch(/ECONNREFUSED|timeout/);
      expect(JSON.stringify([(error as Error).message, (error as Error).stack, logger.texts])).not.toContain('s3cr3t-pw');
    });

    it('says the login was refused, without the password, when the credentials are wrong', async () => {
      const logger = new CapturingLogger();
      const config = options([{ slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://guest:wr0ng-pw@127.0.0.1:5672', connectTimeoutMs: 3000 } }]);
      const error = await startWithLogger(config, logger, async (broker) => {
        await broker.publish({ env: 'prd', event: 'rmq:denied', product_tag: PRODUCT, input: { message: 1 } });
      });
      expect((error as BrokerError).code).toBe('PUBLISH_FAILED');
      expect((error as BrokerError).message).toContain('amqp://127.0.0.1:5672');
      expect((error as BrokerError).message).toMatch(/ACCESS.REFUSED/);
      expect(JSON.stringify([(error as Error).message, (error as Error).stack, logger.texts])).not.toContain('wr0ng-pw');
    });

    it('refuses a malformed URL or option with CONFIG_INVALID at startup, without echoing the URL', async () => {
      const error = await startupError(
        options([
          { slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://user:t0p-secret@host:notaport' } },
          { slug: 'stg', type: 'rabbitmq', config: { url: 'http://user:t0p-secret@host:5672', queueType: 'mirrored' as 'classic', publishTimeoutMs: 0 } },
        ]),
      );
      expect(error.code).toBe('CONFIG_INVALID');
      expect(error.problems).toEqual([
        'brokers[0].envs[0].config.url: is not a valid URL',
        "brokers[0].envs[1].config.url: protocol must be 'amqp:' or 'amqps:' (got 'http:')",
        'brokers[0].envs[1].config.publishTimeoutMs: must be a number of at least 1',
        "brokers[0].envs[1].config.queueType: must be 'classic' or 'quorum'",
      ]);
      expect(error.message).not.toContain('t0p-secret');
    });

    it('fails a subscribe whose queue exists with other arguments with SUBSCRIBE_FAILED and the broker\'s reason', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      await withRawConnection(async (connection) => {
        const channel = await connection.createChannel();
        await channel.assertQueue(`${topic}:legacy`, { durable: true, arguments: { 'x-max-length': 10 } });
      });
      const error = await broker
        .subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'legacy', callback: () => undefined } })
        .catch((e: unknown) => e);
      expect((error as BrokerError).code).toBe('SUBSCRIBE_FAILED');
      expect((error as BrokerError).message).toMatch(/PRECONDITION.FAILED.*x-max-length/);
    });

    it('carries a messageId longer than an AMQP short string in the envelope, and publishing goes on', async () => {
      const broker = await start();
      const { event } = newTopic();
      const ids: string[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { callback: (_m: unknown, ctx: BrokerContext) => void ids.push(ctx.messageId) } });
      const long = 'id-'.padEnd(600, 'x');
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 1, messageId: long, correlationId: long } });
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 2, messageId: 'short' } });
      await waitFor(() => ids.length === 2, 'both messages', 5000);
      expect(ids.sort()).toEqual([long, 'short'].sort());
    });

    it('refuses a message over maxMessageBytes with INVALID_MESSAGE before anything is sent', async () => {
      const broker = await start({}, { maxMessageBytes: 1024 });
      const { event, topic } = newTopic();
      const sub = await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'sizes', callback: () => undefined } });
      await sub.unsubscribe();
      const error = await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'x'.repeat(2000) } }).catch((e: unknown) => e);
      expect((error as BrokerError).code).toBe('INVALID_MESSAGE');
      expect(await queueDepth(`${topic}:sizes`)).toBe(0);
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'small' } });
      expect(await eventually(() => queueDepth(`${topic}:sizes`), 1)).toBe(1);
    });
  });

  /** Starts an app with a capturing logger and runs `use`; returns what either threw. */
  async function startWithLogger(config: BrokerModuleOptions, logger: CapturingLogger, use: (broker: MessageBrokerService) => Promise<void>) {
    let app: INestApplication | undefined;
    try {
      const moduleRef = await Test.createTestingModule({ imports: [DuctapeBrokerModule.forRoot(config)] })
        .setLogger(logger)
        .compile();
      app = moduleRef.createNestApplication({ logger });
      await app.init();
      await use(app.get(MessageBrokerService));
      return undefined;
    } catch (error) {
      return error;
    } finally {
      await app?.close();
    }
  }
});

/** Polls an async reading until it equals `expected` (or 2 s pass) and returns the last reading. */
async function eventually<T>(read: () => Promise<T>, expected: T): Promise<T> {
  const deadline = Date.now() + 2000;
  let value = await read();
  while (value !== expected && Date.now() < deadline) {
    await sleep(20);
    value = await read();
  }
  return value;
}
