import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { Socket } from 'node:net';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import type { Channel, ConfirmChannel, Message, Replies } from 'amqplib';
import {
  BrokerError,
  DEAD_LETTER_HEADERS,
  DuctapeBrokerModule,
  MessageBrokerService,
  type BrokerContext,
  type BrokerModuleOptions,
  type RabbitMqEnvConfig,
} from '../../lib';
import type { OutboundMessage } from '../../lib/adapters/broker-adapter';
import { createRabbitMqAdapter } from '../../lib/adapters/rabbitmq';
import { publishOptions } from '../../lib/adapters/rabbitmq/rabbitmq-headers';
import { publishOn } from '../../lib/adapters/rabbitmq/rabbitmq-publisher';
import { CapturingLogger, createBrokerApp, startupError } from '../support/app';
import { describeWithBroker, itNeeding } from '../support/broker-availability';
import { holdExclusively } from '../support/exclusive';
import {
  deleteNamed,
  exchangeExists,
  listQueues,
  queueDepth,
  queueExists,
  rabbitEnv,
  rawPublish,
  rawTopicReader,
  recordDeclarations,
  runUnique,
  withRawConnection,
} from '../support/rabbitmq';
import { gate, sleep, waitFor } from '../support/wait';

// A product of this run's own: every queue and exchange the file declares is named after it.
const PRODUCT = runUnique('rmq-adapter');
const SUITE = 'RabbitMQ adapter';

// What the file declared is deleted at its end, by name, through AMQP.
const declared = recordDeclarations();

// The resilience file restarts the broker: never alongside this one.
holdExclusively('rabbitmq', { cleanup: () => declared.deleteAll() });

/** Tests that read unacked counts, which only the server's own tool shows (AMQP gives ready counts). */
const itReadingWithRabbitmqctl = itNeeding('rabbitmq', SUITE, { tool: 'rabbitmqctl' });

/**
 * A raw declare that succeeds only if what is there is equivalent (RabbitMQ answers 406
 * PRECONDITION_FAILED, naming the argument, otherwise): how AMQP tells a queue's or exchange's kind.
 */
function declaresAlike(declare: (channel: Channel) => Promise<unknown>): Promise<void> {
  return withRawConnection(async (connection) => {
    const channel = await connection.createChannel();
    channel.on('error', () => undefined);
    await declare(channel);
  });
}

describeWithBroker('rabbitmq', SUITE, () => {
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

  async function start(envConfig: Partial<RabbitMqEnvConfig['config']> = {}, overrides: Partial<BrokerModuleOptions> = {}, logger?: CapturingLogger) {
    const started = await createBrokerApp(options([rabbitEnv('prd', envConfig), rabbitEnv('stg', envConfig)], overrides), {}, logger);
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
      // Read through AMQP: a durable fanout exchange is there when declaring one again succeeds.
      for (const exchange of [topic, stgTopic]) {
        expect(await exchangeExists(exchange)).toBe(true);
        await declaresAlike((channel) => channel.assertExchange(exchange, 'fanout', { durable: true }));
      }
      const queues = [
        `${topic}:billing`,
        `${topic}:billing:dead-letters`,
        `${topic}:shipping`,
        `${topic}:shipping:dead-letters`,
        `${stgTopic}:billing`,
        `${stgTopic}:billing:dead-letters`,
        `${stgTopic}:shipping`,
        `${stgTopic}:shipping:dead-letters`,
      ];
      // Exactly these queues were declared for the two topics, and each is there, durable.
      expect([...declared.queues].filter((name) => name.startsWith(`${topic}:`) || name.startsWith(`${stgTopic}:`)).sort()).toEqual([...queues].sort());
      for (const queue of queues) {
        expect(await queueExists(queue)).toBe(true);
        await declaresAlike((channel) => channel.assertQueue(queue, { durable: true }));
      }
      // The bindings, seen through what they route: with the consumers gone, one message sent to
      // the prd exchange lands in each prd group's queue, and in no stg queue or dead-letter queue.
      await Promise.all(apps.splice(0).map((app) => app.close()));
      await rawPublish(topic, '', Buffer.from('"probe"'));
      const depths = Object.fromEntries(await Promise.all(queues.map(async (queue) => [queue, await queueDepth(queue)] as const)));
      expect(depths).toEqual(Object.fromEntries(queues.map((queue) => [queue, queue === `${topic}:billing` || queue === `${topic}:shipping` ? 1 : 0])));
    });

    it('publishes the bare message JSON, persistent, its metadata in AMQP properties and cloudEvents: headers (CloudEvents binary mode)', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const sub = await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'audit', callback: () => undefined } });
      await sub.unsubscribe();
      const message = { n: 1, unicode: 'é 漢字 🎉' };
      const before = Date.now();
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message, messageId: 'm-1', correlationId: 'c-1', key: 'k-1', headers: { tenant: 'acme' } } });
      const got = await withRawConnection(async (connection) => {
        const channel = await connection.createChannel();
        return channel.get(`${topic}:audit`, { noAck: true });
      });
      if (got === false) throw new Error('the message is not in the group queue');
      // The body is what a plain client would write, byte for byte.
      expect(got.content.equals(Buffer.from(JSON.stringify(message)))).toBe(true);
      expect(got.properties).toMatchObject({ deliveryMode: 2, messageId: 'm-1', correlationId: 'c-1', contentType: 'application/json' });
      const headers = got.properties.headers as Record<string, unknown>;
      const time = Date.parse(String(headers['cloudEvents:time']));
      expect(time).toBeGreaterThanOrEqual(before);
      expect(got.properties.timestamp).toBe(Math.floor(time / 1000));
      expect(headers).toEqual({
        'cloudEvents:specversion': '1.0',
        'cloudEvents:id': 'm-1',
        'cloudEvents:source': `/${PRODUCT}/prd/${PRODUCT}`,
        'cloudEvents:type': event,
        'cloudEvents:time': headers['cloudEvents:time'],
        'cloudEvents:correlationid': 'c-1',
        'cloudEvents:partitionkey': 'k-1',
        // The user's headers are plain headers; a first attempt has no attempt header.
        tenant: 'acme',
      });
    });
  });

  describe('publisher confirms', () => {
    /**
     * Spies on the real amqplib ConfirmChannel the adapter uses (not a mock: every call still goes
     * to the server), at the two steps every confirmed publish takes, whether through publish() or
     * the adapter's publishOn(): sendMessage (the frames) and pushConfirmCallback (its confirm).
     */
    async function spyOnConfirmChannels(hold?: Promise<void>) {
      const channel = await withRawConnection(async (connection) => connection.createConfirmChannel());
      type Steps = {
        sendMessage(this: ConfirmChannel, fields: { mandatory?: boolean }, properties: unknown, content: Buffer): boolean;
        pushConfirmCallback(this: ConfirmChannel, callback: (err: unknown, ok: Replies.Empty) => void): void;
      };
      const owner = (name: keyof Steps) => {
        for (let proto = Object.getPrototypeOf(channel) as object | null; proto; proto = Object.getPrototypeOf(proto) as object | null) {
          if (Object.hasOwn(proto, name)) return proto as Steps;
        }
        throw new Error(`amqplib's channel has no ${name}`);
      };
      const sending = owner('sendMessage');
      const confirming = owner('pushConfirmCallback');
      const sendMessage: Steps['sendMessage'] = sending.sendMessage;
      const pushConfirmCallback: Steps['pushConfirmCallback'] = confirming.pushConfirmCallback;
      const stats = { published: 0, confirmed: 0, maxOutstanding: 0, mandatory: 0, channels: new Set<ConfirmChannel>() };
      confirming.pushConfirmCallback = function (callback) {
        stats.published++;
        stats.channels.add(this);
        stats.maxOutstanding = Math.max(stats.maxOutstanding, stats.published - stats.confirmed);
        return pushConfirmCallback.call(this, (err: unknown, ok: Replies.Empty) => {
          const settle = () => {
            stats.confirmed++;
            callback(err, ok);
          };
          if (hold) void hold.then(settle);
          else settle();
        });
      };
      sending.sendMessage = function (fields, properties, content) {
        // Only confirm channels' publishes: they alone have waitForConfirms.
        if ('waitForConfirms' in this && fields.mandatory === true) stats.mandatory++;
        return sendMessage.call(this, fields, properties, content);
      };
      return {
        stats,
        restore: () => {
          sending.sendMessage = sendMessage;
          confirming.pushConfirmCallback = pushConfirmCallback;
        },
      };
    }

    it("writes through publishOn() the message amqplib's own publish() writes: the same bytes, properties and headers on the broker", async () => {
      const { topic } = newTopic();
      const queue = `${topic}:frames`;
      const message: OutboundMessage = {
        body: '{"n":1}',
        messageId: 'frames-1',
        publishedAt: 1_700_000_000_123,
        type: 'rmq:frames',
        source: '/p/prd/s',
        contentType: 'application/json',
        attempt: 3,
        key: 'k',
        correlationId: 'c',
        headers: { tenant: 'acme', 'x-ductape-error': 'boom' },
      };
      try {
        const [viaPublish, viaSteps] = await withRawConnection(async (connection) => {
          const channel = await connection.createConfirmChannel();
          await channel.assertQueue(queue, { durable: true });
          const content = Buffer.from(message.body);
          channel.publish('', queue, content, publishOptions(message, true));
          await channel.waitForConfirms();
          const pending = { exchange: '', routingKey: queue, content, options: publishOptions(message, true), deadline: 0, resolve() {}, reject() {}, settled: false, written: false };
          await new Promise<void>((resolve, reject) => publishOn(channel, pending, (error) => (error ? reject(new Error("the broker did not confirm it")) : resolve())));
          const read = async () => {
            const got = await channel.get(queue, { noAck: true });
            if (got === false) throw new Error('a message is missing');
            return { content: got.content, properties: got.properties };
          };
          return [await read(), await read()];
        });
        expect(viaSteps).toEqual(viaPublish);
        expect(viaSteps.properties.headers).toMatchObject({ 'cloudEvents:ductapeattempt': '3', tenant: 'acme' });
      } finally {
        await deleteNamed({ queues: [queue] });
      }
    });

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

    it('resolves a publish to a topic with no group, warns once naming the topic and env, and declares its exchange', async () => {
      const logger = new CapturingLogger();
      const broker = await start({}, {}, logger);
      const { event, topic } = newTopic();
      for (let n = 0; n < 3; n++) await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n } } });
      const warnings = logger.entries.filter((entry) => entry.level === 'warn' && entry.message.includes('has no subscription group yet'));
      expect(warnings.map((entry) => entry.message)).toEqual([expect.stringContaining(`topic '${topic}' [prd]`)]);
      expect(await exchangeExists(topic)).toBe(true);
      await declaresAlike((channel) => channel.assertExchange(topic, 'fanout', { durable: true }));
    });

    it("fails every publish to a topic with no group with PUBLISH_FAILED under whenNoGroup: 'reject'", async () => {
      const broker = await start({}, { brokers: [{ tag: 'rmq', envs: [{ ...rabbitEnv('prd'), whenNoGroup: 'reject' }] }] });
      const { event } = newTopic();
      for (let n = 0; n < 3; n++) {
        const error = await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n } } }).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(BrokerError);
        expect((error as BrokerError).code).toBe('PUBLISH_FAILED');
        expect((error as BrokerError).message).toMatch(/has no subscription group yet, and its whenNoGroup is 'reject'/);
      }
    });

    it("sends a topic's publishes mandatory only once a minute under whenNoGroup: 'accept' (the probe that tells of no group), and every one under 'reject'", async () => {
      const tag = `t-${randomUUID().slice(0, 8)}`;
      const broker = await start({}, { brokers: [{ tag: 'rmq', envs: [rabbitEnv('prd')], topics: [{ tag }, { tag: `${tag}-strict`, whenNoGroup: 'reject' }] }] });
      for (const topicTag of [tag, `${tag}-strict`]) {
        await broker.subscribe({ env: 'prd', event: `rmq:${topicTag}`, product_tag: PRODUCT, input: { callback: () => undefined } });
      }
      const spy = await spyOnConfirmChannels();
      try {
        for (let n = 0; n < 20; n++) await broker.publish({ env: 'prd', event: `rmq:${tag}`, product_tag: PRODUCT, input: { message: { n } } });
        const accepting = spy.stats.mandatory;
        for (let n = 0; n < 20; n++) await broker.publish({ env: 'prd', event: `rmq:${tag}-strict`, product_tag: PRODUCT, input: { message: { n } } });
        expect(accepting).toBe(1);
        expect(spy.stats.mandatory - accepting).toBe(20);
      } finally {
        spy.restore();
      }
    });

    it('matches each returned message to its own publish among many in flight, all with the same bytes', async () => {
      const broker = await start({}, { brokers: [{ tag: 'rmq', envs: [{ ...rabbitEnv('prd'), whenNoGroup: 'reject' }] }] });
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
        // Interleaved: 300 to a topic with a group, 300 to one without, all at once, every body the same.
        const publishing = Promise.allSettled(
          Array.from({ length: 600 }, (_, i) =>
            broker.publish({ env: 'prd', event: (i % 2 === 0 ? routed : unroutable).event, product_tag: PRODUCT, input: { message: 'the same bytes' } }),
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
        else expect(String((result as PromiseRejectedResult).reason)).toMatch(/no subscription group/);
      });
      expect(spy.stats.maxOutstanding).toBeGreaterThan(10);
      await waitFor(() => received === 300, 'the 300 routed messages', 10_000);
    });

    /** A retry as the delivery layer sends it: the original bytes, the same id. */
    function retryOf(id: string): OutboundMessage {
      return { body: '{"x":1}', messageId: id, publishedAt: Date.now(), type: 'b:t', source: '/p/prd/s', contentType: 'application/json', attempt: 2, headers: {} };
    }

    /**
     * A is written while its queue exists, its confirm held back; then the queue goes, and B, byte
     * for byte the same, is returned. Returns come before confirms: B's return is matched while A is
     * still in flight.
     */
    async function sendTwiceAcrossADeletedQueue(first: OutboundMessage, second: OutboundMessage): Promise<[string, string]> {
      const adapter = createRabbitMqAdapter(rabbitEnv('prd').config, { brokerTag: 'b', envSlug: 'prd', logger: { log() {}, warn() {}, error() {}, debug() {} } });
      await adapter.connect();
      const { topic } = newTopic();
      const queue = `${topic}:g`;
      await withRawConnection(async (connection) => void (await (await connection.createChannel()).assertQueue(queue, { durable: true })));
      const confirms = gate();
      const spy = await spyOnConfirmChannels(confirms.promise);
      const outcome = (sending: Promise<void>) =>
        sending.then(
          () => 'confirmed',
          (error: unknown) => String(error),
        );
      try {
        const a = outcome(adapter.sendToGroup({ name: topic, tag: 't' }, 'g', first));
        await waitFor(() => spy.stats.published === 1, 'the first publish to be written');
        await withRawConnection(async (connection) => void (await (await connection.createChannel()).deleteQueue(queue)));
        const b = outcome(adapter.sendToGroup({ name: topic, tag: 't' }, 'g', second));
        await waitFor(() => spy.stats.published === 2, 'the second publish to be written');
        await sleep(300);
        confirms.open();
        return [await a, await b];
      } finally {
        spy.restore();
        await adapter.close();
      }
    }

    it('tells two publishes of the same bytes apart by their message id: the returned one fails, the routed one is confirmed', async () => {
      const [first, second] = await sendTwiceAcrossADeletedQueue(retryOf('id-a'), retryOf('id-b'));
      expect(first).toBe('confirmed');
      expect(second).toMatch(/NO_ROUTE/);
    });

    it('never takes a returned message for confirmed when another in flight has the same id and bytes (a retry re-sent twice, say)', async () => {
      const [first, second] = await sendTwiceAcrossADeletedQueue(retryOf('same'), retryOf('same'));
      expect(second).toMatch(/NO_ROUTE/);
      // The first may be taken for returned too: it is then sent again by its caller (a duplicate, never a loss).
      expect(first).toMatch(/confirmed|NO_ROUTE/);
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

  describe('plain amqplib clients on either side (wire format 2)', () => {
    /** What one test declared on the broker, deleted by name at its end. */
    function topologyOf(topic: string, groups: string[], delaysMs: number[] = []) {
      const queues = groups.flatMap((group) => [`${topic}:${group}`, `${topic}:${group}:dead-letters`, ...delaysMs.map((ms) => `${topic}:${group}:delay-${ms}ms`)]);
      return () => deleteNamed({ queues, exchanges: [topic] });
    }

    async function getOne(queue: string): Promise<Message> {
      return withRawConnection(async (connection) => {
        const channel = await connection.createChannel();
        for (let i = 0; i < 100; i++) {
          const message = await channel.get(queue, { noAck: true });
          if (message) return message;
          await sleep(20);
        }
        throw new Error(`nothing in ${queue}`);
      });
    }

    it("hands a plain client's JSON without a message-id to the handler: one id (a digest) on every delivery, publishedAt from the timestamp property, attempt 1 then 2", async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const cleanup = topologyOf(topic, ['plain'], [50]);
      try {
        const seen: { message: unknown; ctx: BrokerContext }[] = [];
        await broker.subscribe({
          env: 'prd',
          event,
          product_tag: PRODUCT,
          input: {
            group: 'plain',
            callback: (message: unknown, ctx: BrokerContext) => {
              seen.push({ message, ctx });
              if (ctx.attempt === 1) throw new Error('first attempt fails');
            },
          },
        });
        const body = Buffer.from(JSON.stringify({ orderId: 'j-1', from: 'java' }));
        await rawPublish(topic, '', body, { 'x-origin': 'billing-java', retries: 0 }, { timestamp: 1_700_000_000, contentType: 'application/json' });
        await waitFor(() => seen.length === 2, 'the delivery and its retry', 5000);
        expect(seen.map((entry) => entry.message)).toEqual([
          { orderId: 'j-1', from: 'java' },
          { orderId: 'j-1', from: 'java' },
        ]);
        expect(seen.map((entry) => entry.ctx.attempt)).toEqual([1, 2]);
        expect(seen[0].ctx.messageId).toMatch(/^sha256:[0-9a-f]{32}$/);
        expect(seen[1].ctx.messageId).toBe(seen[0].ctx.messageId);
        expect(seen.map((entry) => entry.ctx.publishedAt.getTime())).toEqual([1_700_000_000_000, 1_700_000_000_000]);
        for (const { ctx } of seen) {
          expect(ctx.headers['x-origin']).toBe('billing-java');
          expect(ctx.headers.retries).toBe('0');
          // The retry's own metadata and RabbitMQ's dead-lettering marks stay off the application headers.
          expect(Object.keys(ctx.headers).filter((name) => name.startsWith('cloudEvents') || name.startsWith('x-death'))).toEqual([]);
        }
      } finally {
        await cleanup();
      }
    });

    it("takes a plain client's message-id property as ctx.messageId, the same on its retry and on a broker redelivery, with its correlation-id", async () => {
      const broker = await start({}, { shutdownTimeoutMs: 300 });
      const { event, topic } = newTopic();
      const cleanup = topologyOf(topic, ['ids'], [50]);
      const held = gate();
      try {
        const seen: BrokerContext[] = [];
        await broker.subscribe({
          env: 'prd',
          event,
          product_tag: PRODUCT,
          input: {
            group: 'ids',
            callback: async (_message: unknown, ctx: BrokerContext) => {
              seen.push(ctx);
              if (ctx.attempt === 1) throw new Error('first attempt fails');
              await held.promise; // the retry is still in its handler when this instance stops
            },
          },
        });
        await rawPublish(topic, '', Buffer.from('{"n":1}'), undefined, { messageId: 'java-42', correlationId: 'corr-j' });
        await waitFor(() => seen.length === 2, 'the delivery and its retry', 5000);
        await Promise.all(apps.splice(0).map((app) => app.close()));
        const next = await start();
        const again: BrokerContext[] = [];
        await next.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'ids', callback: (_m: unknown, ctx: BrokerContext) => void again.push(ctx) } });
        await waitFor(() => again.length === 1, 'the unfinished retry, redelivered by the broker', 5000);
        expect([...seen, ...again].map((ctx) => [ctx.messageId, ctx.attempt, ctx.correlationId])).toEqual([
          ['java-42', 1, 'corr-j'],
          ['java-42', 2, 'corr-j'],
          ['java-42', 2, 'corr-j'],
        ]);
      } finally {
        held.open();
        await cleanup();
      }
    });

    it("reads another SDK's binary-mode CloudEvent: cloudEvents_ attributes, a time as an AMQP timestamp, its other attributes kept as headers", async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const cleanup = topologyOf(topic, ['ce']);
      try {
        const seen: { message: unknown; ctx: BrokerContext }[] = [];
        await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'ce', callback: (message: unknown, ctx: BrokerContext) => void seen.push({ message, ctx }) } });
        await rawPublish(
          topic,
          '',
          Buffer.from('{"orderId":"o-7"}'),
          {
            cloudEvents_specversion: '1.0',
            cloudEvents_id: 'ce-7',
            cloudEvents_type: 'com.example.order.created',
            cloudEvents_source: '/java/billing',
            // The ':' form wins over the '_' one when a bridge sent both.
            'cloudEvents:id': 'ce-7-binding',
            'cloudEvents:time': { '!': 'timestamp', value: 1_700_000_123 },
            'cloudEvents:subject': 'order-7',
          },
          { messageId: 'amqp-7', contentType: 'application/json' },
        );
        await waitFor(() => seen.length === 1, 'the CloudEvent', 5000);
        expect(seen[0].message).toEqual({ orderId: 'o-7' });
        expect(seen[0].ctx.messageId).toBe('ce-7-binding');
        expect(seen[0].ctx.publishedAt.getTime()).toBe(1_700_000_123_000);
        expect(seen[0].ctx.headers).toEqual({ 'cloudEvents:subject': 'order-7' });
      } finally {
        await cleanup();
      }
    });

    it('lets a plain amqplib consumer read our message as the bare JSON, its message-id the id we gave, the cloudEvents: headers beside the user\'s', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const cleanup = topologyOf(topic, ['ours']);
      const reader = await rawTopicReader(topic);
      try {
        const handled: BrokerContext[] = [];
        await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'ours', callback: (_m: unknown, ctx: BrokerContext) => void handled.push(ctx) } });
        const message = { orderId: '12345', status: 'pending', unicode: 'é 漢字 🎉' };
        const { messageId } = await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message, headers: { tenant: 'acme' } } });
        const record = await reader.next(5000);
        await waitFor(() => handled.length === 1, 'our own handler too', 5000);
        expect(record.body.toString('utf8')).toBe(JSON.stringify(message));
        expect(record.id).toBe(messageId);
        expect(handled[0].messageId).toBe(messageId);
        expect(record.message.properties.contentType).toBe('application/json');
        expect(record.message.properties.deliveryMode).toBe(2);
        expect(record.headers).toMatchObject({
          'cloudEvents:specversion': '1.0',
          'cloudEvents:id': messageId,
          'cloudEvents:type': event,
          'cloudEvents:source': `/${PRODUCT}/prd/${PRODUCT}`,
          tenant: 'acme',
        });
        expect(Date.parse(record.headers['cloudEvents:time'])).toBe(handled[0].publishedAt.getTime());
        expect(record.message.properties.timestamp).toBe(Math.floor(handled[0].publishedAt.getTime() / 1000));
      } finally {
        await reader.close();
        await cleanup();
      }
    });

    it('keeps the original bytes through retries and into the dead-letter queue (read with plain amqplib), and back to the group on reprocessing', async () => {
      const broker = await start();
      const { event, topic } = newTopic();
      const cleanup = topologyOf(topic, ['keep'], [50, 100]);
      try {
        const attempts: number[] = [];
        const sub = await broker.subscribe({
          env: 'prd',
          event,
          product_tag: PRODUCT,
          input: {
            group: 'keep',
            callback: (_m: unknown, ctx: BrokerContext) => {
              attempts.push(ctx.attempt);
              throw new Error('still down');
            },
          },
        });
        // Spacing, key order and number forms a re-encoding would change.
        const original = Buffer.from('{ "b" : 1,\n  "a": [1, 2.50, "\\u00e9"] }');
        await rawPublish(topic, '', original, { tenant: 'acme' }, { messageId: 'odd-1', timestamp: 1_700_000_000 });
        await waitFor(() => attempts.length === 3, 'three attempts', 5000);
        await sub.unsubscribe();
        const dead = await getOne(`${topic}:keep:dead-letters`);
        expect(dead.content.equals(original)).toBe(true);
        expect(dead.properties.messageId).toBe('odd-1');
        expect(dead.properties.timestamp).toBe(1_700_000_000);
        const headers = dead.properties.headers as Record<string, unknown>;
        expect(headers).toMatchObject({
          'cloudEvents:id': 'odd-1',
          'cloudEvents:ductapeattempt': '3',
          'cloudEvents:time': new Date(1_700_000_000_000).toISOString(),
          [DEAD_LETTER_HEADERS.attempts]: '3',
          [DEAD_LETTER_HEADERS.reason]: 'max-attempts',
          tenant: 'acme',
        });
        expect(String(headers[DEAD_LETTER_HEADERS.error])).toContain('still down');
        expect(Object.keys(headers).filter((name) => name.startsWith('x-death') || name.startsWith('x-first-death'))).toEqual([]);
        expect(attempts).toEqual([1, 2, 3]);

        // Put back, then reprocessed: the group's queue gets the same bytes again, as a first attempt.
        await withRawConnection(async (connection) => {
          const channel = await connection.createConfirmChannel();
          channel.sendToQueue(`${topic}:keep:dead-letters`, dead.content, dead.properties);
          await channel.waitForConfirms();
        });
        expect(await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: PRODUCT, group: 'keep', limit: 10 })).toBe(1);
        const revived = await getOne(`${topic}:keep`);
        expect(revived.content.equals(original)).toBe(true);
        expect(revived.properties.messageId).toBe('odd-1');
        const revivedHeaders = revived.properties.headers as Record<string, unknown>;
        expect(revivedHeaders.tenant).toBe('acme');
        expect(Object.keys(revivedHeaders).filter((name) => name.startsWith('x-ductape-') || name === 'cloudEvents:ductapeattempt')).toEqual([]);
      } finally {
        await cleanup();
      }
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
      // Backoff 150 ms then 300 ms: one delay queue each, dead-lettering back to the group's queue.
      expect(await queueExists(`${topic}:flaky:delay-150ms`)).toBe(true);
      expect(await queueExists(`${topic}:flaky:delay-300ms`)).toBe(true);
      await sub.unsubscribe();
      // Its TTL and dead-letter target, seen through AMQP: a message put in the 150 ms delay queue
      // leaves it by itself for the group's queue.
      await rawPublish('', `${topic}:flaky:delay-150ms`, Buffer.from('"probe"'));
      await waitFor(async () => (await queueDepth(`${topic}:flaky`)) === 1, "the probe, moved by the delay queue's TTL to the group's queue", 5000);
      expect(await queueDepth(`${topic}:flaky:delay-150ms`)).toBe(0);
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
      // Through AMQP: declaring a queue again as quorum succeeds only on a quorum queue, as classic only on a classic one.
      for (const queue of [`${topic}:q`, `${topic}:q:dead-letters`]) {
        await declaresAlike((channel) => channel.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } }));
        await expect(declaresAlike((channel) => channel.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'classic' } }))).rejects.toThrow(/PRECONDITION_FAILED/);
      }
    });

    it("keeps a quorum queue's x-delivery-count off the application headers of a redelivery", async () => {
      const { event, topic } = newTopic();
      const held = gate();
      try {
        const holding = await start({ queueType: 'quorum' }, { shutdownTimeoutMs: 200 });
        let taken = 0;
        await holding.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'qr', callback: () => (taken++, held.promise) } });
        await holding.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'held', headers: { tenant: 'acme' } } });
        await waitFor(() => taken === 1, 'the first delivery', 5000);
        // Shutdown gives the unfinished message back: the quorum queue counts that return.
        await Promise.all(apps.splice(0).map((app) => app.close()));
        const next = await start({ queueType: 'quorum' });
        const again: BrokerContext[] = [];
        await next.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'qr', callback: (_m: unknown, ctx: BrokerContext) => void again.push(ctx) } });
        await waitFor(() => again.length === 1, 'the redelivery', 5000);
        expect(again[0].headers).toEqual({ tenant: 'acme' });
      } finally {
        held.open();
        await deleteNamed({ queues: [`${topic}:qr`, `${topic}:qr:dead-letters`], exchanges: [topic] });
      }
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

    itReadingWithRabbitmqctl('coalesces the acks of a busy consumer into multiple-acks, and every message ends acked', async () => {
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

    itReadingWithRabbitmqctl('never lets a multiple-ack cover a delivery whose handler still runs, and acks those behind it one by one', async () => {
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

    it('refuses an application header named CC or BCC, or as a cloudEvents: attribute this module writes, with INVALID_MESSAGE, and the publishes around it go through', async () => {
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
        publish(102, { 'cloudEvents:id': 'forged' }),
        publish(103, { 'cloudEvents:ductapeattempt': '5' }),
        // Read as the same attribute on the way in (the binding's earlier form).
        publish(104, { cloudEvents_type: 'forged' }),
        ...Array.from({ length: 10 }, (_, n) => publish(10 + n)),
        // Another producer's extension attribute is not one this module writes: it goes through.
        publish(20, { 'cloudEvents:subject': 'order-1' }),
      ]);
      const refused = results.filter((result) => result.status === 'rejected').map((result) => result.reason as BrokerError);
      expect(refused.map((error) => error.code)).toEqual(['INVALID_MESSAGE', 'INVALID_MESSAGE', 'INVALID_MESSAGE', 'INVALID_MESSAGE', 'INVALID_MESSAGE']);
      expect(refused[0].message).toMatch(/header 'CC' is reserved by RabbitMQ/);
      expect(refused[2].message).toMatch(/header 'cloudEvents:id' is the CloudEvents attribute this module writes/);
      await waitFor(() => handled.length === 21, 'the 21 other messages');
      await sleep(200);
      expect(handled).toHaveLength(21);
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
      await rawPublish(topic, '', Buffer.from(JSON.stringify({ n: 1 })), { CC: ['elsewhere'] });
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

    it('carries a messageId longer than an AMQP short string in its cloudEvents:id header, and publishing goes on', async () => {
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
