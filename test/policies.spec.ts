import 'reflect-metadata';
import { Injectable, type INestApplication, type ModuleMetadata } from '@nestjs/common';
import {
  BrokerError,
  DEAD_LETTER_HEADERS,
  MemoryBrokerServer,
  OnBrokerEvent,
  type BrokerContext,
  type BrokerModuleOptions,
  type MemoryEnvConfig,
  type MessageBrokerService,
  type RetryPolicy,
} from '../lib';
import { createBrokerApp } from './support/app';
import { gate, sleep, waitFor } from './support/wait';

/**
 * Retry policies, dead-letter handlers, shutdown and reprocessing, through the Nest module on the
 * memory broker. The applications share one named memory server, as replicas share a real broker;
 * every test uses topics of its own.
 */
const SERVER = 'policies-spec';
const PRODUCT = 'pol';
const server = () => MemoryBrokerServer.shared(SERVER);
const physical = (topicTag: string) => `${PRODUCT}.prd.${topicTag}`;

const TOPIC_RETRY: RetryPolicy = { maxAttempts: 4, initialDelayMs: 5 };
const MODULE_RETRY: RetryPolicy = { maxAttempts: 2, initialDelayMs: 5 };

function options(overrides: Partial<BrokerModuleOptions> = {}, memory: MemoryEnvConfig['config'] = {}): BrokerModuleOptions {
  return {
    env: 'prd',
    product: PRODUCT,
    brokers: [
      {
        tag: 'bk',
        envs: [{ slug: 'prd', type: 'memory', config: { server: SERVER, ...memory } }],
        topics: [
          { tag: 'sub-over-topic', retry: TOPIC_RETRY },
          { tag: 'topic-over-module', retry: TOPIC_RETRY },
          { tag: 'sub-over-module' },
          { tag: 'module-over-default' },
          { tag: 'default-policy' },
          { tag: 'capped' },
          { tag: 'undefined-sub' },
          { tag: 'undefined-module' },
          { tag: 'unprintable' },
          { tag: 'dl-retry' },
          { tag: 'dl-unsub' },
          { tag: 'drain' },
          { tag: 'decorated' },
          { tag: 'reprocess' },
        ],
      },
    ],
    retry: MODULE_RETRY,
    shutdownTimeoutMs: 5000,
    ...overrides,
  };
}

const apps: INestApplication[] = [];

async function start(config: BrokerModuleOptions, metadata?: ModuleMetadata): Promise<{ app: INestApplication; broker: MessageBrokerService }> {
  const created = await createBrokerApp(config, metadata);
  apps.push(created.app);
  return created;
}

/** Closes an application the test closes itself, so afterEach does not close it twice. */
async function close(app: INestApplication): Promise<void> {
  apps.splice(apps.indexOf(app), 1);
  await app.close();
}

afterEach(async () => {
  await Promise.all(apps.splice(0).map((app) => app.close()));
});

afterAll(() => MemoryBrokerServer.deleteShared(SERVER));

const publish = (broker: MessageBrokerService, topicTag: string, message: unknown) =>
  broker.publish({ env: 'prd', event: `bk:${topicTag}`, product_tag: PRODUCT, input: { message } });

interface Attempt {
  attempt: number;
  at: number;
}

/**
 * Subscribes a handler that always fails, and the dead letters of its group; publishes one message
 * and resolves, once it is dead-lettered, with every attempt and the dead letter's context.
 */
async function attemptsUntilDeadLetter(
  broker: MessageBrokerService,
  topicTag: string,
  retry: RetryPolicy | undefined,
  timeoutMs = 5000,
): Promise<{ attempts: Attempt[]; dead: BrokerContext }> {
  const attempts: Attempt[] = [];
  const dead: BrokerContext[] = [];
  const event = `bk:${topicTag}`;
  await broker.subscribe({
    env: 'prd',
    event,
    product_tag: PRODUCT,
    input: {
      group: 'failing',
      retry,
      callback: (_message, ctx) => {
        attempts.push({ attempt: ctx.attempt, at: Date.now() });
        throw new Error(`attempt ${ctx.attempt} failed`);
      },
    },
  });
  await broker.subscribe({
    env: 'prd',
    event,
    product_tag: PRODUCT,
    input: { group: 'failing', deadLetter: true, callback: (_message, ctx) => void dead.push(ctx) },
  });
  await publish(broker, topicTag, { n: 1 });
  await waitFor(() => dead.length === 1, `the dead letter of ${topicTag}`, timeoutMs);
  await sleep(30);
  expect(dead).toHaveLength(1);
  return { attempts, dead: dead[0] };
}

describe('retry policy precedence', () => {
  it.each([
    ['the subscription retry beats the topic retry', 'sub-over-topic', { maxAttempts: 1, initialDelayMs: 5 }, 1],
    ['the topic retry beats the module retry', 'topic-over-module', undefined, 4],
    ['the subscription retry beats the module retry', 'sub-over-module', { maxAttempts: 3, initialDelayMs: 5 }, 3],
    ['the module retry beats the default', 'module-over-default', undefined, 2],
  ] as const)('%s', async (_title, topicTag, retry, expected) => {
    const { broker } = await start(options());
    const { attempts, dead } = await attemptsUntilDeadLetter(broker, topicTag, retry);
    expect(attempts.map((a) => a.attempt)).toEqual(Array.from({ length: expected }, (_, i) => i + 1));
    expect(dead.headers[DEAD_LETTER_HEADERS.attempts]).toBe(String(expected));
    expect(dead.headers[DEAD_LETTER_HEADERS.reason]).toBe('max-attempts');
  });

  it('the default is 3 attempts, 1 s apart at first', async () => {
    const { broker } = await start(options({ retry: undefined }));
    // Default backoff: 1 s, then 2 s.
    const { attempts, dead } = await attemptsUntilDeadLetter(broker, 'default-policy', undefined, 8000);
    expect(attempts.map((a) => a.attempt)).toEqual([1, 2, 3]);
    expect(dead.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    expect(attempts[1].at - attempts[0].at).toBeGreaterThanOrEqual(900);
    expect(attempts[2].at - attempts[1].at).toBeGreaterThanOrEqual(1800);
  });
});

describe('maxDelayMs', () => {
  it('caps the backoff of a real retry', async () => {
    const { broker } = await start(options());
    // Uncapped, the second delay would be 50 x 10 = 500 ms; capped, it is 80 ms.
    const { attempts } = await attemptsUntilDeadLetter(broker, 'capped', { maxAttempts: 3, initialDelayMs: 50, multiplier: 10, maxDelayMs: 80 });
    expect(attempts.map((a) => a.attempt)).toEqual([1, 2, 3]);
    expect(attempts[1].at - attempts[0].at).toBeGreaterThanOrEqual(45);
    const capped = attempts[2].at - attempts[1].at;
    expect(capped).toBeGreaterThanOrEqual(70);
    expect(capped).toBeLessThan(400);
  });
});

describe('a retry policy with fields set to undefined', () => {
  // Config built as `{ maxDelayMs: settings.maxDelay }` leaves fields undefined: they take the
  // defaults. Spread over the defaults they made every backoff NaN, run by a timer at once.
  it('keeps the backoff when a subscription leaves multiplier and maxDelayMs undefined', async () => {
    const { broker } = await start(options());
    const retry: RetryPolicy = { maxAttempts: 3, initialDelayMs: 150, multiplier: undefined, maxDelayMs: undefined };
    const { attempts } = await attemptsUntilDeadLetter(broker, 'undefined-sub', retry);
    expect(attempts.map((a) => a.attempt)).toEqual([1, 2, 3]);
    expect(attempts[1].at - attempts[0].at).toBeGreaterThanOrEqual(140);
    // The default multiplier, 2.
    expect(attempts[2].at - attempts[1].at).toBeGreaterThanOrEqual(290);
  });

  it('keeps the backoff when the module retry leaves them undefined', async () => {
    const { broker } = await start(options({ retry: { maxAttempts: 2, initialDelayMs: 200, multiplier: undefined, maxDelayMs: undefined } }));
    const { attempts } = await attemptsUntilDeadLetter(broker, 'undefined-module', undefined);
    expect(attempts.map((a) => a.attempt)).toEqual([1, 2]);
    expect(attempts[1].at - attempts[0].at).toBeGreaterThanOrEqual(190);
  });
});

describe('a handler that throws a value with no string form', () => {
  it('is retried and dead-lettered like any failure, with the value described', async () => {
    const { broker } = await start(options());
    const attempts: number[] = [];
    const dead: BrokerContext[] = [];
    const base = { env: 'prd', event: 'bk:unprintable', product_tag: PRODUCT } as const;
    await broker.subscribe({
      ...base,
      input: {
        group: 'failing',
        retry: { maxAttempts: 2, initialDelayMs: 5 },
        callback: (_message, ctx) => {
          attempts.push(ctx.attempt);
          // String() of a null-prototype object throws.
          throw Object.create(null) as unknown as Error;
        },
      },
    });
    await broker.subscribe({ ...base, input: { group: 'failing', deadLetter: true, callback: (_message, ctx) => void dead.push(ctx) } });
    await publish(broker, 'unprintable', { n: 1 });
    await waitFor(() => dead.length === 1, 'the dead letter');
    expect(attempts).toEqual([1, 2]);
    expect(dead[0].headers[DEAD_LETTER_HEADERS.error]).toMatch(/unprintable thrown value \(\[object Object\]\)/);
    expect(dead[0].headers[DEAD_LETTER_HEADERS.reason]).toBe('max-attempts');
  });
});

describe('a failing dead-letter handler', () => {
  /** Dead-letters one message of `topicTag` in group 'origin' (its handler always fails, one attempt). */
  async function deadLetterOne(broker: MessageBrokerService, topicTag: string): Promise<string> {
    await broker.subscribe({
      env: 'prd',
      event: `bk:${topicTag}`,
      product_tag: PRODUCT,
      input: {
        group: 'origin',
        retry: { maxAttempts: 1, initialDelayMs: 5 },
        callback: () => {
          throw new Error('handler down');
        },
      },
    });
    const { messageId } = await publish(broker, topicTag, { order: 7 });
    await waitFor(() => server().deadLetterCount(physical(topicTag), 'origin') === 1, 'the dead letter');
    return messageId;
  }

  it('does not lose the dead letter: it gets it again after a pause, and once handled it is gone', async () => {
    const { broker } = await start(options());
    const messageId = await deadLetterOne(broker, 'dl-retry');
    const calls: { messageId: string; message: unknown }[] = [];
    await broker.subscribe({
      env: 'prd',
      event: 'bk:dl-retry',
      product_tag: PRODUCT,
      input: {
        group: 'origin',
        deadLetter: true,
        retry: { maxAttempts: 1, initialDelayMs: 20 },
        callback: (message, ctx) => {
          calls.push({ messageId: ctx.messageId, message });
          if (calls.length === 1) throw new Error('dead-letter store down');
        },
      },
    });
    // The pause is the subscription's first backoff delay, or more: poll with a generous deadline.
    await waitFor(() => calls.length === 2, 'the dead letter to be delivered again', 8000);
    await waitFor(() => server().deadLetterCount(physical('dl-retry'), 'origin') === 0, 'the handled dead letter to be gone');
    await sleep(100);
    // Handled once it succeeded, and not delivered again.
    expect(calls).toHaveLength(2);
    expect(calls.every((call) => call.messageId === messageId)).toBe(true);
    expect(calls.every((call) => JSON.stringify(call.message) === JSON.stringify({ order: 7 }))).toBe(true);
    expect(server().deadLetterCount(physical('dl-retry'), 'origin')).toBe(0);
  });

  it('does not lose the dead letter when unsubscribed during its pause', async () => {
    const { broker } = await start(options());
    const messageId = await deadLetterOne(broker, 'dl-unsub');
    let calls = 0;
    const subscription = await broker.subscribe({
      env: 'prd',
      event: 'bk:dl-unsub',
      product_tag: PRODUCT,
      input: {
        group: 'origin',
        deadLetter: true,
        // A long pause: the unsubscribe below lands in it.
        retry: { maxAttempts: 1, initialDelayMs: 3000 },
        callback: () => {
          calls++;
          throw new Error('dead-letter store down');
        },
      },
    });
    await waitFor(() => calls === 1, 'the dead-letter handler to fail once');
    await sleep(20);
    const unsubscribing = Date.now();
    await subscription.unsubscribe();
    // The drain cuts the 3 s pause short: it does not wait it out.
    expect(Date.now() - unsubscribing).toBeLessThan(1500);
    expect(calls).toBe(1);
    expect(server().deadLetterCount(physical('dl-unsub'), 'origin')).toBe(1);

    // It is intact: the next dead-letter consumer gets it.
    const handled: string[] = [];
    await broker.subscribe({
      env: 'prd',
      event: 'bk:dl-unsub',
      product_tag: PRODUCT,
      input: { group: 'origin', deadLetter: true, callback: (_message, ctx) => void handled.push(ctx.messageId) },
    });
    await waitFor(() => handled.length === 1, 'the kept dead letter to be handled');
    expect(handled).toEqual([messageId]);
  });
});

describe('shutdown', () => {
  it('stops intake before it drains: a message published meanwhile goes to another application of the group', async () => {
    const hold = gate();
    const first: number[] = [];
    const { app: firstApp, broker: firstBroker } = await start(options());
    await firstBroker.subscribe<{ n: number }>({
      env: 'prd',
      event: 'bk:drain',
      product_tag: PRODUCT,
      input: {
        group: 'drainers',
        // Room for a second message: only the stopped intake keeps it out.
        concurrency: 2,
        callback: async (message) => {
          first.push(message.n);
          await hold.promise;
        },
      },
    });
    const { broker: secondBroker } = await start(options());
    await publish(firstBroker, 'drain', { n: 1 });
    await waitFor(() => first.length === 1, 'the first message in flight');

    const closing = close(firstApp);
    try {
      await sleep(50);
      await publish(secondBroker, 'drain', { n: 2 });
      await sleep(50);
      expect(first).toEqual([1]);

      const second: number[] = [];
      await secondBroker.subscribe<{ n: number }>({
        env: 'prd',
        event: 'bk:drain',
        product_tag: PRODUCT,
        input: { group: 'drainers', callback: (message) => void second.push(message.n) },
      });
      await waitFor(() => second.length === 1, 'the second application to get the message');
      expect(second).toEqual([2]);
      expect(first).toEqual([1]);

      hold.open();
      await closing;
      await sleep(30);
      // The in-flight message was finished and acked: nobody gets it again.
      expect(first).toEqual([1]);
      expect(second).toEqual([2]);
      expect(server().depth(physical('drain'), 'drainers')).toBe(0);
    } finally {
      hold.open();
      await closing;
    }
  });
});

describe('@OnBrokerEvent concurrency', () => {
  it('is honoured: at most that many handler calls at once, and that many reached', async () => {
    let running = 0;
    let peak = 0;
    let done = 0;

    @Injectable()
    class Worker {
      @OnBrokerEvent('bk:decorated', { group: 'decorated-workers', concurrency: 2 })
      async work(): Promise<void> {
        peak = Math.max(peak, ++running);
        await sleep(30);
        running--;
        done++;
      }
    }

    const { broker } = await start(options(), { providers: [Worker] });
    await Promise.all(Array.from({ length: 8 }, (_, i) => publish(broker, 'decorated', { i })));
    await waitFor(() => done === 8, 'all 8 handled');
    expect(peak).toBe(2);
  });
});

describe('reprocessDeadLetters', () => {
  it('keeps a dead letter it could not re-send, and rejects with PUBLISH_FAILED', async () => {
    const { broker } = await start(options({}, { maxQueueLength: 1 }));
    const topic = physical('reprocess');
    const subscription = await broker.subscribe({
      env: 'prd',
      event: 'bk:reprocess',
      product_tag: PRODUCT,
      input: {
        group: 'g',
        retry: { maxAttempts: 1, initialDelayMs: 5 },
        callback: () => {
          throw new Error('down');
        },
      },
    });
    const { messageId } = await publish(broker, 'reprocess', { n: 1 });
    await waitFor(() => server().deadLetterCount(topic, 'g') === 1, 'the dead letter');
    // The group's consumer is gone, and one message fills its queue.
    await subscription.unsubscribe();
    await publish(broker, 'reprocess', { n: 2 });
    expect(server().depth(topic, 'g')).toBe(1);

    const error = await broker.reprocessDeadLetters({ env: 'prd', event: 'bk:reprocess', product_tag: PRODUCT, group: 'g' }).then(
      () => undefined,
      (thrown: unknown) => thrown,
    );
    expect(error).toBeInstanceOf(BrokerError);
    expect((error as BrokerError).code).toBe('PUBLISH_FAILED');
    expect(server().deadLetterCount(topic, 'g')).toBe(1);
    expect(server().depth(topic, 'g')).toBe(1);

    // Once the queue has room, the same dead letter is moved back, then gone from the dead letters.
    const handled: { n: number; messageId: string; attempt: number }[] = [];
    await broker.subscribe<{ n: number }>({
      env: 'prd',
      event: 'bk:reprocess',
      product_tag: PRODUCT,
      input: { group: 'g', callback: (message, ctx) => void handled.push({ n: message.n, messageId: ctx.messageId, attempt: ctx.attempt }) },
    });
    await waitFor(() => handled.length === 1 && server().depth(topic, 'g') === 0, 'the waiting message to be handled');
    await expect(broker.reprocessDeadLetters({ env: 'prd', event: 'bk:reprocess', product_tag: PRODUCT, group: 'g' })).resolves.toBe(1);
    expect(server().deadLetterCount(topic, 'g')).toBe(0);
    await waitFor(() => handled.length === 2, 'the reprocessed dead letter to be handled');
    expect(handled[1]).toEqual({ n: 1, messageId, attempt: 1 });
  });
});
