import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { type BrokerError, MemoryBrokerServer, type BrokerModuleOptions, type MemoryEnvConfig } from '../lib';
import type { AdapterConsumer, AdapterLogger, AdapterTopic, InboundDelivery, OutboundMessage } from '../lib/adapters/broker-adapter';
import { MemoryAdapter } from '../lib/adapters/memory';
import { createBrokerApp, startupError } from './support/app';
import { sleep, waitFor } from './support/wait';

/**
 * The embedded broker's own rules: unrouted messages, its bounds (and what it logs when it drops),
 * competing consumers served in turn, and the validation of its configuration. Most tests drive a
 * MemoryAdapter directly (the BrokerAdapter interface, with a logger the test can read).
 */

interface CapturedLogs {
  log: string[];
  warn: string[];
  error: string[];
  debug: string[];
}

function capturingLogger(): { logger: AdapterLogger; logs: CapturedLogs } {
  const logs: CapturedLogs = { log: [], warn: [], error: [], debug: [] };
  const logger: AdapterLogger = {
    log: (message) => void logs.log.push(message),
    warn: (message) => void logs.warn.push(message),
    error: (message) => void logs.error.push(message),
    debug: (message) => void logs.debug.push(message),
  };
  return { logger, logs };
}

const topic: AdapterTopic = { name: 'shop.prd.orders', tag: 'orders' };
const message = (body: string, delayMs?: number): OutboundMessage => ({
  body,
  messageId: body,
  publishedAt: Date.now(),
  type: 'bk:orders',
  source: '/shop/prd/shop',
  contentType: 'application/json',
  attempt: 1,
  headers: {},
  delayMs,
});
const text = (delivery: { body: string | Buffer }): string => (typeof delivery.body === 'string' ? delivery.body : delivery.body.toString('utf8'));

describe('the memory adapter', () => {
  const adapters: MemoryAdapter[] = [];

  function adapterWith(config: MemoryEnvConfig['config']): { adapter: MemoryAdapter; logs: CapturedLogs } {
    const { logger, logs } = capturingLogger();
    const adapter = new MemoryAdapter(config, { brokerTag: 'bk', envSlug: 'prd', logger });
    adapters.push(adapter);
    return { adapter, logs };
  }

  /** Consumes a group's messages, acking each, and collects their bodies in order. */
  async function collect(adapter: MemoryAdapter, group: string): Promise<{ bodies: string[]; consumer: AdapterConsumer }> {
    const bodies: string[] = [];
    const consumer = await adapter.consume(topic, { group, concurrency: 1, source: 'messages' }, async (delivery: InboundDelivery) => {
      bodies.push(text(delivery));
      await delivery.ack();
    });
    return { bodies, consumer };
  }

  afterEach(async () => {
    await Promise.all(adapters.splice(0).map((adapter) => adapter.close()));
  });

  describe('a topic no group has subscribed to', () => {
    it('keeps nothing: the publish resolves, a warning names the topic at most once a minute, and the first group gets only what follows', async () => {
      const { adapter, logs } = adapterWith(undefined);
      for (const body of ['m1', 'm2', 'm3']) await adapter.publish(topic, message(body));
      expect(logs.warn).toHaveLength(1);
      expect(logs.warn[0]).toContain(topic.name);
      expect(logs.warn[0]).toContain('[prd]');
      expect(logs.warn[0]).toMatch(/no subscription group/);

      const first = await collect(adapter, 'first');
      await adapter.publish(topic, message('m4'));
      await waitFor(() => first.bodies.length === 1, 'the message published after the group subscribed');
      await sleep(20);
      expect(first.bodies).toEqual(['m4']);
      expect(logs.warn).toHaveLength(1);
    });

    it("refuses under whenNoGroup: 'reject', naming the topic, and enqueues nothing", async () => {
      const { adapter } = adapterWith(undefined);
      const strict: AdapterTopic = { ...topic, whenNoGroup: 'reject' };
      const refused = await adapter.publish(strict, message('m1')).catch((error: unknown) => error);
      expect(refused).toMatchObject({ code: 'PUBLISH_FAILED' });
      expect((refused as Error).message).toContain(topic.name);
      const first = await collect(adapter, 'first');
      await adapter.publish(strict, message('m2'));
      await waitFor(() => first.bodies.length === 1, 'the message published once a group existed');
      await sleep(20);
      expect(first.bodies).toEqual(['m2']);
    });

    it('is not given a group by dead letters or a message sent to one group', async () => {
      const { adapter } = adapterWith(undefined);
      await adapter.sendToDeadLetters(topic, 'phantom', message('dead'));
      await adapter.sendToGroup(topic, 'phantom', message('own'));
      await adapter.publish(topic, message('m1'));
      const phantom = await collect(adapter, 'phantom');
      await waitFor(() => phantom.bodies.length === 1, "the phantom group's own message");
      await adapter.publish(topic, message('m2'));
      await waitFor(() => phantom.bodies.length === 2, 'the message published after it subscribed');
      await sleep(20);
      expect(phantom.bodies).toEqual(['own', 'm2']);
    });

    it('never delivers a delayed publish made while it had no group, even to a group subscribing before it is due', async () => {
      const { adapter } = adapterWith(undefined);
      await adapter.publish(topic, message('later', 50));
      const first = await collect(adapter, 'first');
      await adapter.publish(topic, message('after', 50));
      await waitFor(() => first.bodies.length === 1, 'the delayed message published after the group subscribed');
      await sleep(100);
      expect(first.bodies).toEqual(['after']);
    });
  });

  describe('dead letters', () => {
    it('beyond maxDeadLettersPerGroup, drop the oldest with a logged error and keep the newest', async () => {
      const { adapter, logs } = adapterWith({ maxDeadLettersPerGroup: 2 });
      await adapter.sendToDeadLetters(topic, 'billing', message('d1'));
      await adapter.sendToDeadLetters(topic, 'billing', message('d2'));
      // Exactly at the bound: nothing dropped, nothing logged.
      expect(adapter.server.stats.dropped).toBe(0);
      expect(logs.error).toEqual([]);

      await adapter.sendToDeadLetters(topic, 'billing', message('d3'));
      expect(adapter.server.stats.dropped).toBe(1);
      expect(logs.error).toHaveLength(1);
      expect(logs.error[0]).toContain(topic.name);
      expect(logs.error[0]).toContain('billing');
      expect(logs.error[0]).toMatch(/oldest/);
      expect(adapter.server.deadLetterCount(topic.name, 'billing')).toBe(2);

      const visited: string[] = [];
      const removed = await adapter.drainDeadLetters(topic, 'billing', 10, async (record) => void visited.push(text(record)));
      expect(removed).toBe(2);
      expect(visited).toEqual(['d2', 'd3']);
    });

    it('are bounded per group: another group of the topic keeps its own', async () => {
      const { adapter, logs } = adapterWith({ maxDeadLettersPerGroup: 2 });
      await adapter.sendToDeadLetters(topic, 'billing', message('b1'));
      await adapter.sendToDeadLetters(topic, 'billing', message('b2'));
      await adapter.sendToDeadLetters(topic, 'shipping', message('s1'));
      await adapter.sendToDeadLetters(topic, 'shipping', message('s2'));
      expect(adapter.server.stats.dropped).toBe(0);
      expect(logs.error).toEqual([]);
      expect(adapter.server.deadLetterCount(topic.name, 'billing')).toBe(2);
      expect(adapter.server.deadLetterCount(topic.name, 'shipping')).toBe(2);
    });
  });

  describe('maxQueueLength', () => {
    it('refuses a message sent to one group (a retry) into a full queue, delayed or not, and enqueues nothing of it', async () => {
      const { adapter } = adapterWith({ maxQueueLength: 2 });
      // The group's queue exists, but its consumer is gone: nothing drains it.
      const stalled = await collect(adapter, 'stalled');
      await stalled.consumer.close();

      await adapter.publish(topic, message('a'));
      await adapter.sendToGroup(topic, 'stalled', message('retry-1'));
      expect(adapter.server.depth(topic.name, 'stalled')).toBe(2);

      // `async` turns a synchronous throw into a rejection, whichever way the adapter reports it.
      await expect((async () => adapter.sendToGroup(topic, 'stalled', message('retry-2')))()).rejects.toThrow(/full/);
      await expect((async () => adapter.sendToGroup(topic, 'stalled', message('retry-3', 20)))()).rejects.toThrow(/full/);
      await sleep(60);
      expect(adapter.server.depth(topic.name, 'stalled')).toBe(2);

      // What was accepted is still there, in order, for the next consumer.
      const next = await collect(adapter, 'stalled');
      await waitFor(() => next.bodies.length === 2, 'the 2 queued messages');
      await sleep(20);
      expect(next.bodies).toEqual(['a', 'retry-1']);
    });

    it.each([
      ['publish', (adapter: MemoryAdapter, n: number) => adapter.publish(topic, message(String(n)))],
      ['sendToGroup (a retry, a reprocessed dead letter)', (adapter: MemoryAdapter, n: number) => adapter.sendToGroup(topic, 'steady', message(String(n)))],
    ])('is not reached by a loop that only awaits %s while a consumer keeps up', async (_, send) => {
      // A loop of awaits never lets a macrotask run. The queue puts its consumers' turn off to the
      // next turn of the event loop now and then (so a busy queue cannot starve I/O); if the sender
      // did not wait for that turn, the consumer would stop and the queue fill until sending failed.
      const { adapter } = adapterWith({ maxQueueLength: 500 });
      const { bodies } = await collect(adapter, 'steady');
      let deepest = 0;
      for (let n = 0; n < 5000; n++) {
        await send(adapter, n);
        deepest = Math.max(deepest, adapter.server.depth(topic.name, 'steady'));
      }
      await waitFor(() => bodies.length === 5000, 'every message handled');
      expect(bodies).toEqual(Array.from({ length: 5000 }, (_, n) => String(n)));
      expect(deepest).toBeLessThan(500);
    });

    it('lets publishes below that backlog resolve under fake timers that fake setImmediate', async () => {
      jest.useFakeTimers({ doNotFake: ['queueMicrotask', 'nextTick'] });
      try {
        const { adapter } = adapterWith({});
        const { bodies } = await collect(adapter, 'faked');
        // About 500 are handled before the consumers' turn is put off to a (faked) setImmediate;
        // the rest wait in the queue, below the backlog at which a publish waits for that turn.
        for (let n = 0; n < 1200; n++) await adapter.publish(topic, message(String(n)));
        expect(bodies.length).toBeLessThan(1200);
        expect(adapter.server.depth(topic.name, 'faked')).toBeLessThan(1000);
        for (let turn = 0; turn < 20 && bodies.length < 1200; turn++) await jest.advanceTimersByTimeAsync(0);
        expect(bodies.length).toBe(1200);
      } finally {
        jest.useRealTimers();
      }
    });

    it('counts retries waiting for their delay against the bound', async () => {
      const { adapter } = adapterWith({ maxQueueLength: 2 });
      const stalled = await collect(adapter, 'stalled');
      await stalled.consumer.close();

      await adapter.sendToGroup(topic, 'stalled', message('retry-later', 150));
      await adapter.sendToGroup(topic, 'stalled', message('retry-later-2', 150));
      expect(adapter.server.depth(topic.name, 'stalled')).toBe(0);
      await expect((async () => adapter.sendToGroup(topic, 'stalled', message('retry-now')))()).rejects.toThrow(/full/);

      await waitFor(() => adapter.server.depth(topic.name, 'stalled') === 2, 'the delayed messages to arrive');
      // Once arrived, they count as queued, not as delayed: when the queue drains there is room again.
      const drained = await collect(adapter, 'stalled');
      await waitFor(() => drained.bodies.length === 2, 'the queue to drain');
      await adapter.sendToGroup(topic, 'stalled', message('fits-again'));
      await waitFor(() => drained.bodies.length === 3, 'the new message');
    });

    it("a full group's queue loses its oldest message, with an error log naming the group, and other groups still get every message", async () => {
      const { adapter, logs } = adapterWith({ maxQueueLength: 2 });
      const stalled = await collect(adapter, 'stalled');
      await stalled.consumer.close();
      const live = await collect(adapter, 'live');
      for (const body of ['a', 'b', 'c', 'd']) await adapter.publish(topic, message(body));
      await waitFor(() => live.bodies.length === 4, 'the live group to get all four');
      expect(adapter.server.depth(topic.name, 'stalled')).toBe(2);
      expect(adapter.server.stats.dropped).toBe(2);
      // Logged once (at most once a minute per group), naming the topic and the group.
      expect(logs.error).toHaveLength(1);
      expect(logs.error[0]).toContain(`${topic.name} / group stalled is full`);
      const next = await collect(adapter, 'stalled');
      await waitFor(() => next.bodies.length === 2, 'the two newest');
      expect(next.bodies).toEqual(['c', 'd']);
    });
  });
});

describe('competing consumers of one group', () => {
  const SERVER = 'memory-broker-spec';
  const apps: INestApplication[] = [];

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
  });

  afterAll(() => MemoryBrokerServer.deleteShared(SERVER));

  it('are served in turn, not always the first one with capacity', async () => {
    const { app, broker } = await createBrokerApp({
      env: 'prd',
      product: 'shop',
      brokers: [{ tag: 'bk', envs: [{ slug: 'prd', type: 'memory', config: { server: SERVER } }] }],
    });
    apps.push(app);
    const server = MemoryBrokerServer.shared(SERVER);
    const received: Record<'a' | 'b', number[]> = { a: [], b: [] };
    for (const name of ['a', 'b'] as const) {
      await broker.subscribe<{ i: number }>({
        env: 'prd',
        event: 'bk:jobs',
        product_tag: 'shop',
        input: { group: 'workers', concurrency: 1, callback: (m) => void received[name].push(m.i) },
      });
    }
    // One message at a time, each acked before the next is published: both consumers are idle at
    // every dispatch, so only a rotation spreads the work.
    for (let i = 0; i < 20; i++) {
      const acked = server.stats.acked;
      await broker.publish({ env: 'prd', event: 'bk:jobs', product_tag: 'shop', input: { message: { i } } });
      await waitFor(() => server.stats.acked > acked, `message ${i} to be acked`);
    }
    expect(received.a.length + received.b.length).toBe(20);
    expect(received.a.length).toBeGreaterThanOrEqual(8);
    expect(received.b.length).toBeGreaterThanOrEqual(8);
    expect([...received.a, ...received.b].sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it('share a burst under slow handlers, each message once', async () => {
    const { app, broker } = await createBrokerApp({
      env: 'prd',
      product: 'shop',
      brokers: [{ tag: 'bk', envs: [{ slug: 'prd', type: 'memory', config: { server: SERVER } }] }],
    });
    apps.push(app);
    const received: Record<'a' | 'b', number[]> = { a: [], b: [] };
    for (const name of ['a', 'b'] as const) {
      await broker.subscribe<{ i: number }>({
        env: 'prd',
        event: 'bk:burst',
        product_tag: 'shop',
        input: {
          group: 'workers',
          concurrency: 1,
          callback: async (m) => {
            received[name].push(m.i);
            await sleep(10);
          },
        },
      });
    }
    for (let i = 0; i < 20; i++) await broker.publish({ env: 'prd', event: 'bk:burst', product_tag: 'shop', input: { message: { i } } });
    await waitFor(() => received.a.length + received.b.length === 20, 'all 20 messages');
    await sleep(30);
    expect(received.a.length).toBeGreaterThanOrEqual(8);
    expect(received.b.length).toBeGreaterThanOrEqual(8);
    expect([...received.a, ...received.b].sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });
});

describe('memory config validation', () => {
  const FIELDS = ['maxQueueLength', 'maxUnroutedPerTopic', 'maxDeadLettersPerGroup'] as const;

  const optionsWith = (config: Record<string, unknown>): BrokerModuleOptions => ({
    env: 'prd',
    product: 'shop',
    brokers: [{ tag: 'bk', envs: [{ slug: 'prd', type: 'memory', config }] }],
  });

  async function configError(options: BrokerModuleOptions): Promise<BrokerError> {
    const error = await startupError(options);
    expect(error.code).toBe('CONFIG_INVALID');
    return error;
  }

  const cases = FIELDS.flatMap((field) => [0, -1, 1.5, '10', Number.NaN, Number.POSITIVE_INFINITY].map((value) => [field, value] as const));

  it.each(cases)('CONFIG_INVALID for %s = %p, naming the field', async (field, value) => {
    const error = await configError(optionsWith({ [field]: value }));
    expect(error.problems).toEqual([expect.stringMatching(new RegExp(`^brokers\\[0\\]\\.envs\\[0\\]\\.config\\.${field}: `))]);
    expect(error.problems[0]).toMatch(/positive integer/);
  });

  it('lists every bad bound at once', async () => {
    const error = await configError(optionsWith({ maxQueueLength: 0, maxUnroutedPerTopic: 2.5, maxDeadLettersPerGroup: -4 }));
    expect(error.problems).toHaveLength(3);
    FIELDS.forEach((field, i) => expect(error.problems[i]).toMatch(new RegExp(`^brokers\\[0\\]\\.envs\\[0\\]\\.config\\.${field}: `)));
  });

  it('accepts positive integers, 1 included', async () => {
    const { app } = await createBrokerApp(optionsWith({ maxQueueLength: 1, maxUnroutedPerTopic: 1, maxDeadLettersPerGroup: 1 }));
    await app.close();
    const { app: other } = await createBrokerApp(optionsWith({ maxQueueLength: 50_000, maxUnroutedPerTopic: 7, maxDeadLettersPerGroup: 3 }));
    await other.close();
  });
});

describe('per-key order in the memory adapter', () => {
  const keyed = (body: string): OutboundMessage => ({ ...message(body), key: 'A' });
  let adapter: MemoryAdapter;

  beforeEach(() => {
    adapter = new MemoryAdapter(undefined, { brokerTag: 'bk', envSlug: 'prd', logger: capturingLogger().logger });
  });

  afterEach(async () => {
    await adapter.close();
  });

  it('survives a consumer that closes holding the first message of a key', async () => {
    const never = new Promise<void>(() => undefined);
    const stuck = await adapter.consume(topic, { group: 'g', concurrency: 10, source: 'messages' }, () => never);
    for (const id of ['A1', 'A2', 'A3', 'A4']) await adapter.publish(topic, keyed(id));
    await sleep(10);
    await stuck.close(); // A1 goes back to the front; A2..A4 must stay behind it
    const seen: string[] = [];
    await adapter.consume(topic, { group: 'g', concurrency: 1, source: 'messages' }, async (delivery) => {
      seen.push(text(delivery));
      await sleep(1);
      await delivery.ack();
    });
    await waitFor(() => seen.length === 4, 'the four messages');
    expect(seen).toEqual(['A1', 'A2', 'A3', 'A4']);
  });

  it('keeps released messages of a key in order behind the ones before them', async () => {
    const seen: string[] = [];
    let released = false;
    await adapter.consume(topic, { group: 'g', concurrency: 3, source: 'messages' }, async (delivery) => {
      seen.push(text(delivery));
      await sleep(1);
      if (text(delivery) === 'A1' && !released) {
        released = true;
        return delivery.release(); // goes to the back; its key is free again
      }
      await delivery.ack();
    });
    for (const id of ['A1', 'A2', 'A3']) await adapter.publish(topic, keyed(id));
    await waitFor(() => seen.length === 4, 'four deliveries');
    expect(seen).toEqual(['A1', 'A2', 'A3', 'A1']);
  });

  it('leaves no keyed dead letter stranded after a dead-letter consumer closed holding one', async () => {
    for (const id of ['A1', 'A2', 'A3']) await adapter.sendToDeadLetters(topic, 'g', keyed(id));
    const never = new Promise<void>(() => undefined);
    const stuck = await adapter.consume(topic, { group: 'g', concurrency: 2, source: 'dead-letters' }, () => never);
    await sleep(10);
    await stuck.close();
    const visited: string[] = [];
    expect(await adapter.drainDeadLetters(topic, 'g', 100, async (record) => void visited.push(text(record)))).toBe(3);
    expect(visited).toEqual(['A1', 'A2', 'A3']);
    expect(adapter.server.deadLetterCount(topic.name, 'g')).toBe(0);
  });

  it('bounds dead letters that wait behind a key in flight too', async () => {
    const { logger, logs } = capturingLogger();
    const bounded = new MemoryAdapter({ maxDeadLettersPerGroup: 2 }, { brokerTag: 'bk', envSlug: 'prd', logger });
    try {
      const never = new Promise<void>(() => undefined);
      await bounded.consume(topic, { group: 'g', concurrency: 5, source: 'dead-letters' }, () => never);
      for (const id of ['A1', 'A2', 'A3', 'A4']) await bounded.sendToDeadLetters(topic, 'g', keyed(id));
      await sleep(10);
      // A1 is in flight and the rest waits behind it, bounded to 2: one was dropped, and said so.
      expect(bounded.server.deadLetterCount(topic.name, 'g')).toBe(2);
      expect(bounded.server.stats.dropped).toBe(1);
      expect(logs.error).toHaveLength(1);
    } finally {
      await bounded.close();
    }
  });
});
