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
import type { InboundMessage, InboundMetadata } from '../lib/adapters/broker-adapter';
import { readCloudEventHeaders, writeCloudEventHeaders } from '../lib/adapters/cloudevents';
import { decodeInbound, encodeMessage, outboundOf, undecoded } from '../lib/delivery/message-codec';
import { backoffDelayMs, resolveRetryPolicy } from '../lib/delivery/retry';
import { describeError, redactSecrets } from '../lib/errors';
import type { StandardSchemaV1 } from '../lib/interfaces/standard-schema.interface';
import { createBrokerApp } from './support/app';
import { gate, sleep, waitFor } from './support/wait';

describe('message codec (wire format 2)', () => {
  const inbound = (body: string | Buffer, metadata: InboundMetadata = {}, headers: Record<string, string> = {}): InboundMessage => ({
    body,
    headers,
    metadata,
    raw: undefined,
  });

  it('encodes the message itself: the bytes JSON.stringify gives, nothing around them', () => {
    const cases: unknown[] = [{ nested: [1, 'two', { three: true }], date: new Date(0) }, 'just a string', 0, null, [1, 2], { u: 'é 漢字 🎉\u2028' }];
    for (const message of cases) expect(encodeMessage(message, 1 << 20)).toBe(JSON.stringify(message));
  });

  it('refuses what JSON cannot carry, with INVALID_MESSAGE', () => {
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    for (const bad of [undefined, () => 1, Symbol('s'), circular, { n: BigInt(1) }]) {
      expect(() => encodeMessage(bad, 1 << 20)).toThrow(expect.objectContaining({ code: 'INVALID_MESSAGE' }) as Error);
    }
  });

  it('counts the limit in UTF-8 bytes, exactly at the boundary', () => {
    const message = 'é'.repeat(100); // 100 UTF-16 units, 200 UTF-8 bytes, plus 2 quotes
    expect(() => encodeMessage(message, 202)).not.toThrow();
    expect(() => encodeMessage(message, 201)).toThrow('message is too large: 202 bytes encoded, the limit is 201');
  });

  it('reads a binary-mode message: the body is the message, the context from the metadata', () => {
    const decoded = decodeInbound(
      inbound('{"orderId":"1"}', { specversion: '1.0', id: 'm-1', time: 1_764_000_000_000, type: 'b:t', source: '/p/prd/s', contentType: 'application/json', correlationId: 'c', key: 'k', attempt: 2 }, { tenant: 'acme' }),
    );
    expect(decoded).toMatchObject({ message: { orderId: '1' }, id: 'm-1', publishedAt: 1_764_000_000_000, attempt: 2, correlationId: 'c', key: 'k', headers: { tenant: 'acme' } });
    expect(decoded.body).toBe('{"orderId":"1"}');
  });

  it("reads any producer's JSON: the id is the broker's own, else a digest of the bytes (the same on every delivery); the time the broker's", () => {
    expect(decodeInbound(inbound('{"a":1}', { brokerMessageId: 'topic/0/42', brokerTime: 5 }))).toMatchObject({ message: { a: 1 }, id: 'topic/0/42', publishedAt: 5, attempt: 1 });
    const first = decodeInbound(inbound(Buffer.from('[1,2]')));
    const again = decodeInbound(inbound(Buffer.from('[1,2]')));
    expect(first.id).toMatch(/^sha256:[0-9a-f]{32}$/);
    expect(again.id).toBe(first.id);
    expect(decodeInbound(inbound('[1,3]')).id).not.toBe(first.id);
  });

  it('refuses a body that is not JSON (the delivery is then poison), and describes it all the same', () => {
    expect(() => decodeInbound(inbound('not json'))).toThrow('body is not JSON');
    expect(() => decodeInbound(inbound(''))).toThrow('body is not JSON');
    const poison = undecoded(inbound(Buffer.from('not json'), { id: 'p-1' }));
    expect(poison).toMatchObject({ message: 'not json', id: 'p-1', contentType: undefined });
    expect(Buffer.isBuffer(poison.body) && poison.body.toString()).toBe('not json');
  });

  it('reads a 0.1.0 envelope by its shape, and goes on with the message itself (a retry is in the new format)', () => {
    const earlier = { v: 1, id: 'old-1', event: 'b:t', env: 'prd', product: 'p', publishedAt: 5, attempt: 2, headers: { h: 'v' }, correlationId: 'c', message: { n: 1 } };
    const decoded = decodeInbound(inbound(JSON.stringify(earlier), {}, { native: 'x' }));
    expect(decoded).toMatchObject({ message: { n: 1 }, id: 'old-1', publishedAt: 5, attempt: 2, correlationId: 'c', headers: { h: 'v', native: 'x' } });
    expect(decoded.body).toBe('{"n":1}');
    // With CloudEvents metadata it is a message of that shape, not an envelope.
    expect(decodeInbound(inbound(JSON.stringify(earlier), { specversion: '1.0', id: 'new' })).message).toEqual(earlier);
  });

  it('unwraps a structured-mode CloudEvent to its data and attributes', () => {
    const event = { specversion: '1.0', id: 'ce-1', source: '/billing', type: 'com.example.paid', time: '2026-01-02T03:04:05.000Z', correlationid: 'c-9', traceparent: '00-ab-cd-01', data: { paid: true } };
    const decoded = decodeInbound(inbound(JSON.stringify(event), { contentType: 'application/cloudevents+json; charset=utf-8' }));
    expect(decoded).toMatchObject({ message: { paid: true }, id: 'ce-1', publishedAt: Date.parse(event.time), correlationId: 'c-9', type: 'com.example.paid', headers: { traceparent: '00-ab-cd-01' } });
    const base64 = { specversion: '1.0', id: 'ce-2', source: '/s', type: 't', data_base64: Buffer.from('{"x":1}').toString('base64') };
    expect(decodeInbound(inbound(JSON.stringify(base64), { contentType: 'application/cloudevents+json' })).message).toEqual({ x: 1 });
    expect(() => decodeInbound(inbound('{"data":1}', { contentType: 'application/cloudevents+json' }))).toThrow(/without specversion/);
  });

  it('sends a retry or a dead letter with the same bytes and id, and the new attempt', () => {
    const body = Buffer.from('{"a":1}');
    const decoded = decodeInbound(inbound(body, { brokerMessageId: 'q/7' }, { h: '1' }));
    const out = outboundOf(decoded, { event: 'b:t', source: '/p/prd/s' }, 3, { h: '1', x: '2' }, 100);
    expect(out).toMatchObject({ messageId: 'q/7', attempt: 3, type: 'b:t', source: '/p/prd/s', contentType: 'application/json', delayMs: 100, headers: { h: '1', x: '2' } });
    expect(out.body).toBe(body);
  });
});

describe('CloudEvents headers', () => {
  it('writes the attributes with a prefix, the attempt only above 1, and reads them back apart from the other headers', () => {
    const message = { body: '{}', messageId: 'id-1', publishedAt: 0, type: 'b:t', source: '/p/prd/s', attempt: 1, correlationId: 'c', key: 'k', headers: {} };
    const written = writeCloudEventHeaders('ce_', message, {});
    expect(written).toEqual({ ce_specversion: '1.0', ce_id: 'id-1', ce_source: '/p/prd/s', ce_type: 'b:t', ce_time: '1970-01-01T00:00:00.000Z', ce_correlationid: 'c', ce_partitionkey: 'k' });
    expect(writeCloudEventHeaders('ce_', { ...message, attempt: 2 }, {}, { omitKey: true })).toMatchObject({ ce_ductapeattempt: '2' });
    const read = readCloudEventHeaders(['ce_'], { ...(written as Record<string, string>), ce_ductapeattempt: '2', ce_traceparent: 't', plain: 'p' });
    expect(read.metadata).toEqual({ specversion: '1.0', id: 'id-1', source: '/p/prd/s', type: 'b:t', time: 0, correlationId: 'c', key: 'k', attempt: 2 });
    expect(read.headers).toEqual({ ce_traceparent: 't', plain: 'p' });
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
    // A list of URLs keeps each host, and every password goes.
    expect(redactSecrets('nats://u:p1@h1:4222,nats://u:p2@h2:4222')).toBe('nats://u:***@h1:4222,nats://u:***@h2:4222');
    expect(redactSecrets('amqp://user:pa?ss@host amqp://user:pa#ss@host')).toBe('amqp://user:***@host amqp://user:***@host');
  });

  it('describes a thrown plain object by its JSON (an RPC exception filter answers { status, message })', () => {
    expect(describeError({ status: 'error', message: 'Internal server error' })).toBe('{"status":"error","message":"Internal server error"}');
    expect(describeError({ password: 'hunter2' })).toBe('{"password":"***"}');
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
