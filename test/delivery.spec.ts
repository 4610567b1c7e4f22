import 'reflect-metadata';
import { Injectable, Module, type BeforeApplicationShutdown } from '@nestjs/common';
import {
  DEAD_LETTER_HEADERS,
  MemoryBrokerServer,
  OnBrokerEvent,
  type BrokerContext,
  type BrokerModuleOptions,
  type MessageBrokerService,
} from '../lib';
import { decodeEnvelope, encodeEnvelope, type Envelope } from '../lib/delivery/envelope';
import { backoffDelayMs, resolveRetryPolicy } from '../lib/delivery/retry';
import { describeError, redactSecrets } from '../lib/errors';
import type { StandardSchemaV1 } from '../lib/interfaces/standard-schema.interface';
import { createBrokerApp } from './support/app';
import { gate, sleep, waitFor } from './support/wait';

describe('envelope codec', () => {
  it('decodes an envelope of an earlier version, which also carried event, env and product', () => {
    const earlier = { v: 1, id: 'old-1', event: 'b:t', env: 'prd', product: 'p', publishedAt: 5, attempt: 2, headers: {}, message: { n: 1 } };
    expect(decodeEnvelope(JSON.stringify(earlier))).toMatchObject({ id: 'old-1', attempt: 2, message: { n: 1 } });
  });

  it('round-trips every envelope field, with and without the optional ones, through its JSON', () => {
    const base: Envelope = { v: 1, id: 'id "quoted" \\ é 漢', publishedAt: 1764400000123, attempt: 2, headers: { a: '1', 'x-"odd"': 'line\nbreak' }, message: null };
    const cases: Envelope[] = [
      base,
      { ...base, correlationId: 'c-1', key: 'k\u2028' },
      { ...base, message: { nested: [1, 'two', { three: true }], date: new Date(0) } },
      { ...base, message: 'just a string' },
      { ...base, message: 0 },
    ];
    for (const envelope of cases) {
      const body = encodeEnvelope(envelope, 1024 * 1024);
      expect(JSON.parse(body)).toEqual(JSON.parse(JSON.stringify(envelope)));
      expect(decodeEnvelope(body)).toEqual(JSON.parse(JSON.stringify(envelope)));
    }
  });


  const envelope = (message: unknown): Envelope => ({
    v: 1,
    id: 'id-1',
    publishedAt: 0,
    attempt: 1,
    headers: { h: 'v' },
    message,
  });

  it('round-trips through JSON', () => {
    const body = encodeEnvelope(envelope({ a: [1, 'two', null], d: new Date(0) }), 1024);
    expect(decodeEnvelope(Buffer.from(body))).toEqual(envelope({ a: [1, 'two', null], d: '1970-01-01T00:00:00.000Z' }));
  });

  it('refuses bodies that are not an envelope', () => {
    expect(() => decodeEnvelope('not json')).toThrow('body is not JSON');
    expect(() => decodeEnvelope('{"v":2}')).toThrow('not a Ductape envelope');
    expect(() => decodeEnvelope('null')).toThrow('not a Ductape envelope');
    const { message: _dropped, ...withoutMessage } = envelope(1);
    expect(() => decodeEnvelope(JSON.stringify(withoutMessage))).toThrow('not a Ductape envelope');
  });

  it('counts the limit in UTF-8 bytes, exactly at the boundary', () => {
    const overhead = encodeEnvelope(envelope(''), 1 << 20).length;
    expect(() => encodeEnvelope(envelope('é'.repeat(100)), overhead + 200)).not.toThrow();
    // 'é' is one UTF-16 unit but two UTF-8 bytes.
    expect(() => encodeEnvelope(envelope('é'.repeat(100)), overhead + 199)).toThrow(
      `message is too large: ${overhead + 200} bytes encoded, the limit is ${overhead + 199}`,
    );
  });
});

describe('retry policy', () => {
  it('defaults to 3 attempts, 1 s, x2, at most 30 s, and takes the first policy given', () => {
    expect(resolveRetryPolicy(undefined, undefined)).toEqual({ maxAttempts: 3, initialDelayMs: 1000, multiplier: 2, maxDelayMs: 30000 });
    expect(resolveRetryPolicy(undefined, { maxAttempts: 5, initialDelayMs: 10 }, { maxAttempts: 9, initialDelayMs: 1 })).toEqual({
      maxAttempts: 5,
      initialDelayMs: 10,
      multiplier: 2,
      maxDelayMs: 30000,
    });
  });

  it('backs off exponentially up to maxDelayMs', () => {
    const policy = resolveRetryPolicy({ maxAttempts: 10, initialDelayMs: 1000 });
    expect([1, 2, 3, 4, 5, 6, 7].map((attempt) => backoffDelayMs(policy, attempt))).toEqual([
      1000, 2000, 4000, 8000, 16000, 30000, 30000,
    ]);
  });
});

describe('redaction', () => {
  it('removes passwords from connection strings and key=value secrets', () => {
    expect(redactSecrets('connect ECONNREFUSED amqp://admin:hunter2@rabbit:5672/vhost')).toBe(
      'connect ECONNREFUSED amqp://admin:***@rabbit:5672/vhost',
    );
    expect(redactSecrets('password=hunter2&user=x')).toBe('password=***&user=x');
    expect(redactSecrets('{"secretAccessKey":"abc/def+ghi"}')).toBe('{"secretAccessKey":"***"}');
    expect(describeError(new Error('redis://:pw@host:6379 down'))).toBe('Error: redis://***@host:6379 down');
    // A password with '@' or '/' in it, a token as userinfo, and other shapes of secrets.
    expect(redactSecrets('amqp://user:p@ss@host')).toBe('amqp://user:***@host');
    expect(redactSecrets('amqp://user:pa/ss@host:5672/x')).toBe('amqp://user:***@host:5672/x');
    expect(redactSecrets('nats://s3cr3t@localhost:4222')).toBe('nats://***@localhost:4222');
    expect(redactSecrets('passphrase=hunter2')).toBe('passphrase=***');
    expect(redactSecrets("apiKey: 'hunter2'")).toBe("apiKey: '***'");
    expect(redactSecrets('Authorization: Bearer abc.def')).toBe('Authorization: Bearer ***');
    expect(redactSecrets('amqp://127.0.0.1:5672 refused')).toBe('amqp://127.0.0.1:5672 refused');
  });
});

const SERVER = 'delivery-spec';
const positive: StandardSchemaV1<{ amount: number }> = {
  '~standard': {
    version: 1,
    vendor: 'test',
    validate: async (value) => {
      const amount = (value as { amount?: unknown }).amount;
      return typeof amount === 'number' && amount > 0
        ? { value: { amount: Math.round(amount) } }
        : { issues: [{ message: 'amount must be positive' }] };
    },
  },
};

const options = (schema?: StandardSchemaV1): BrokerModuleOptions => ({
  env: 'prd',
  product: 'pay',
  brokers: [{ tag: 'bk', envs: [{ slug: 'prd', type: 'memory', config: { server: SERVER } }], topics: [{ tag: 'payments', schema }] }],
  shutdownTimeoutMs: 2000,
});

describe('topic schema on receive', () => {
  it('dead-letters a received message that fails the schema (reason "schema") and hands the parsed value to the handler', async () => {
    // A producer without the schema (an older release, say) shares the physical topic.
    const { app: producerApp, broker: producer } = await createBrokerApp(options());
    const { app, broker } = await createBrokerApp(options(positive));
    try {
      const handled: unknown[] = [];
      const dead: BrokerContext[] = [];
      await broker.subscribe({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { group: 'g', callback: (m) => void handled.push(m) } });
      await broker.subscribe({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { group: 'g', deadLetter: true, callback: (_m, ctx) => void dead.push(ctx) } });
      await producer.publish({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { message: { amount: -1 } } });
      await producer.publish({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { message: { amount: 2.4 } } });
      await waitFor(() => dead.length === 1 && handled.length === 1, 'one dead letter and one handled');
      expect(handled).toEqual([{ amount: 2 }]);
      expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('schema');
      expect(dead[0].headers[DEAD_LETTER_HEADERS.error]).toContain('amount must be positive');
      expect(dead[0].attempt).toBe(1);
    } finally {
      await app.close();
      await producerApp.close();
    }
  });
});

describe('shutdown', () => {
  it('lets a draining handler publish (connections close only after the drain)', async () => {
    const hold = gate();
    const forwarded: unknown[] = [];
    const ref: { broker?: MessageBrokerService } = {};

    @Injectable()
    class Forwarder {
      @OnBrokerEvent('bk:payments', { group: 'forwarder' })
      async forward(message: unknown): Promise<void> {
        await hold.promise;
        await ref.broker!.publish({ env: 'prd', event: 'bk:receipts', product_tag: 'pay', input: { message } });
      }
    }
    const config = options();
    config.brokers[0].topics!.push({ tag: 'receipts' });
    const created = await createBrokerApp(config, { providers: [Forwarder] });
    const broker = (ref.broker = created.broker);
    await broker.subscribe({ env: 'prd', event: 'bk:receipts', product_tag: 'pay', input: { group: 'receipts', callback: (m) => void forwarded.push(m) } });
    await broker.publish({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { message: { amount: 1 } } });
    await sleep(20);
    const closing = created.app.close();
    await sleep(20);
    hold.open();
    await closing;
    expect(MemoryBrokerServer.shared(SERVER).depth('pay.prd.receipts', 'receipts') + forwarded.length).toBe(1);
  });

  it('unsubscribe waits for the in-flight handler and acks it', async () => {
    const { app, broker } = await createBrokerApp(options());
    try {
      const hold = gate();
      let finished = false;
      const sub = await broker.subscribe({
        env: 'prd',
        event: 'bk:payments',
        product_tag: 'pay',
        input: {
          group: 'unsub',
          callback: async () => {
            await hold.promise;
            finished = true;
          },
        },
      });
      const server = MemoryBrokerServer.shared(SERVER);
      const ackedBefore = server.stats.acked;
      await broker.publish({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { message: { amount: 1 } } });
      await sleep(20);
      const leaving = sub.unsubscribe();
      setTimeout(hold.open, 50);
      await leaving;
      expect(finished).toBe(true);
      expect(server.stats.acked).toBe(ackedBefore + 1);
      expect(server.depth('pay.prd.payments', 'unsub')).toBe(0);
    } finally {
      await app.close();
    }
  });
});

describe('a message that cannot be settled', () => {
  it('goes back to the queue (not lost, slot not held) when its retry cannot be sent', async () => {
    const config: BrokerModuleOptions = {
      env: 'prd',
      product: 'pay',
      brokers: [{ tag: 'bk', envs: [{ slug: 'prd', type: 'memory', config: { server: 'delivery-settle', maxQueueLength: 1 } }] }],
    };
    const { app, broker } = await createBrokerApp(config);
    try {
      const attempts: string[] = [];
      const dead: unknown[] = [];
      await broker.subscribe({
        env: 'prd',
        event: 'bk:jobs',
        product_tag: 'pay',
        input: {
          group: 'g',
          retry: { maxAttempts: 2, initialDelayMs: 5 },
          callback: async (message, ctx) => {
            const { id } = message as { id: string };
            attempts.push(`${id}#${ctx.attempt}`);
            await sleep(30);
            if (id === 'a') throw new Error('a always fails');
          },
        },
      });
      await broker.subscribe({ env: 'prd', event: 'bk:jobs', product_tag: 'pay', input: { group: 'g', deadLetter: true, callback: (m) => void dead.push(m) } });
      await broker.publish({ env: 'prd', event: 'bk:jobs', product_tag: 'pay', input: { message: { id: 'a' } } });
      // 'b' waits in the queue (its bound is 1), so the retry of 'a' is refused by the broker.
      await broker.publish({ env: 'prd', event: 'bk:jobs', product_tag: 'pay', input: { message: { id: 'b' } } });
      await waitFor(() => dead.length === 1, "'a' in the dead letters", 5000);
      expect(attempts).toContain('b#1');
      expect(attempts.filter((attempt) => attempt.startsWith('a')).slice(-2)).toEqual(['a#1', 'a#2']);
      expect(dead).toEqual([{ id: 'a' }]);
    } finally {
      await app.close();
    }
  });

  it('a schema whose validate throws dead-letters the message (reason "schema") instead of stalling', async () => {
    const throwing: StandardSchemaV1 = {
      '~standard': {
        version: 1,
        vendor: 'test',
        validate: () => {
          throw new Error('validator crashed');
        },
      },
    };
    const { app: producerApp, broker: producer } = await createBrokerApp(options());
    const { app, broker } = await createBrokerApp(options(throwing));
    try {
      const dead: BrokerContext[] = [];
      await broker.subscribe({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { group: 'crash', callback: () => undefined } });
      await broker.subscribe({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { group: 'crash', deadLetter: true, callback: (_m, ctx) => void dead.push(ctx) } });
      for (let i = 0; i < 3; i++) await producer.publish({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { message: { amount: i + 1 } } });
      await waitFor(() => dead.length === 3, 'three dead letters');
      expect(dead.map((ctx) => ctx.headers[DEAD_LETTER_HEADERS.reason])).toEqual(['schema', 'schema', 'schema']);
      expect(dead[0].headers[DEAD_LETTER_HEADERS.error]).toContain('validator crashed');
    } finally {
      await app.close();
      await producerApp.close();
    }
  });
});

describe('shutdown order with other modules', () => {
  // Nest destroys global modules (this one) after the others, so the drain runs at the end of the
  // onModuleDestroy phase: before every module's beforeApplicationShutdown and onApplicationShutdown.
  it("drains handlers before other modules' shutdown hooks close what they use", async () => {
    const hold = gate();
    const observed: string[] = [];

    @Injectable()
    class Database implements BeforeApplicationShutdown {
      open = true;
      beforeApplicationShutdown(): void {
        this.open = false;
        observed.push('database closed');
      }
    }

    @Injectable()
    class Writer {
      constructor(private readonly db: Database) {}

      @OnBrokerEvent('bk:payments', { group: 'writer' })
      async write(): Promise<void> {
        await hold.promise;
        observed.push(`handler finished with the database ${this.db.open ? 'open' : 'closed'}`);
      }
    }

    @Module({ providers: [Database, Writer] })
    class DataModule {}

    const { app, broker } = await createBrokerApp(options(), { imports: [DataModule] });
    await broker.publish({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { message: { amount: 1 } } });
    await sleep(20);
    const closing = app.close();
    await sleep(20);
    hold.open();
    await closing;
    expect(observed).toEqual(['handler finished with the database open', 'database closed']);
  });
});

describe('timer bounds', () => {
  it('refuses a delayMs a Node.js timer cannot wait (it would fire at once)', async () => {
    const { app, broker } = await createBrokerApp(options());
    try {
      await expect(
        broker.publish({ env: 'prd', event: 'bk:payments', product_tag: 'pay', input: { message: {}, delayMs: 30 * 24 * 3600 * 1000 } }),
      ).rejects.toMatchObject({ code: 'INVALID_MESSAGE', message: expect.stringContaining('delayMs must be a number from 0 to 2147483647') as unknown });
    } finally {
      await app.close();
    }
  });
});
