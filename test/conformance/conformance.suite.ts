import { randomUUID } from 'node:crypto';
import { DEAD_LETTER_HEADERS } from '../../lib';
import { describeWithBroker } from '../support/broker-availability';
import { gate, sleep, waitFor } from '../support/wait';
import type { ConformanceTarget } from './conformance-target';
import { defineFeatureTests } from './feature-tests';
import { createHarness, peakConcurrency, type Received } from './harness';
import { defineVolumeTests } from './volume-tests';

/**
 * DESIGN.md §2 as tests, run unchanged against every adapter: one instance of this suite per
 * ConformanceTarget. Every test uses fresh topic tags, so targets on a shared server do not mix,
 * and tests may run concurrently (the target's `concurrentTests`).
 */
export function runConformanceSuite(target: ConformanceTarget): void {
  describeWithBroker(target.broker, `conformance: ${target.broker}`, () => {
    const h = createHarness(target);
    const { it, itIf, startApp, newEvent, collector, publish, timeout } = h;
    const keepsMessagesWithoutGroup = target.features.noGroupPublish === 'kept';

    it('round-trips a message with its headers, correlationId, messageId and key', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const received: Received[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { callback: collector(received) } });
      const before = Date.now();
      const message = { orderId: '12345', items: [1, 2.5, 'x', null, { deep: true }], unicode: 'é 漢字 🎉' };
      const result = await publish(broker, event, message, {
        headers: { tenant: 'acme', 'x-trace': 'abc' },
        correlationId: 'corr-1',
        messageId: 'msg-1',
        key: 'customer-7',
      });
      expect(result).toEqual({ messageId: 'msg-1' });
      await waitFor(() => received.length === 1, 'the message', timeout);
      const [{ message: got, ctx }] = received;
      expect(got).toEqual(message);
      expect(ctx).toMatchObject({
        messageId: 'msg-1',
        event,
        env: 'prd',
        product: 'conformance',
        attempt: 1,
        correlationId: 'corr-1',
        key: 'customer-7',
        headers: { tenant: 'acme', 'x-trace': 'abc' },
      });
      expect(ctx.publishedAt).toBeInstanceOf(Date);
      expect(ctx.publishedAt.getTime()).toBeGreaterThanOrEqual(before - 1000);
      expect(ctx.raw).toBeDefined();
    });

    it('gives a fresh UUID messageId when none is given', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const received: Received[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { callback: collector(received) } });
      const { messageId } = await publish(broker, event, 'plain string');
      expect(messageId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      await waitFor(() => received.length === 1, 'the message', timeout);
      expect(received[0].ctx.messageId).toBe(messageId);
      expect(received[0].message).toBe('plain string');
    });

    itIf(target.capabilities.fanOut, 'fanOut')('fans out across groups: each group gets every message', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const billing: Received[] = [];
      const shipping: Received[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { callback: collector(billing), group: 'billing' } });
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { callback: collector(shipping), group: 'shipping' } });
      for (let i = 0; i < 10; i++) await publish(broker, event, { i });
      await waitFor(() => billing.length === 10 && shipping.length === 10, 'both groups to get all 10', timeout);
      await sleep(50);
      expect(billing.map((r) => (r.message as { i: number }).i).sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      expect(shipping).toHaveLength(10);
    });

    it('shares the messages of one group between competing consumers, each message once', async () => {
      const first = await startApp();
      const second = await startApp();
      const { event } = newEvent();
      const a: Received[] = [];
      const b: Received[] = [];
      const slow = () => sleep(10);
      await first.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { callback: collector(a, slow), group: 'workers' } });
      await second.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { callback: collector(b, slow), group: 'workers' } });
      for (let i = 0; i < 20; i++) await publish(first, event, { i }, { key: `k${i}` });
      await waitFor(() => a.length + b.length === 20, 'all 20 messages', timeout);
      await sleep(100);
      const all = [...a, ...b].map((r) => (r.message as { i: number }).i).sort((x, y) => x - y);
      expect(all).toEqual(Array.from({ length: 20 }, (_, i) => i));
      expect(a.length).toBeGreaterThan(0);
      expect(b.length).toBeGreaterThan(0);
    });

    it('redelivers a failing message with attempt 1..maxAttempts, after backoff, then dead-letters it with the error', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const attempts: { attempt: number; at: number }[] = [];
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: 'conformance',
        input: {
          group: 'flaky',
          retry: { maxAttempts: 3, initialDelayMs: 100, multiplier: 2 },
          callback: (_message, ctx) => {
            attempts.push({ attempt: ctx.attempt, at: Date.now() });
            throw new Error('downstream is down');
          },
        },
      });
      const dead: Received[] = [];
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: 'conformance',
        input: { group: 'flaky', deadLetter: true, callback: collector(dead) },
      });
      const { messageId } = await publish(broker, event, { n: 1 }, { headers: { origin: 'test' } });
      await waitFor(() => dead.length === 1, 'the dead letter', timeout + 1000);
      expect(attempts.map((a) => a.attempt)).toEqual([1, 2, 3]);
      // Backoff: 100 ms, then 200 ms (lower bounds only; a loaded machine may be slower).
      expect(attempts[1].at - attempts[0].at).toBeGreaterThanOrEqual(90);
      expect(attempts[2].at - attempts[1].at).toBeGreaterThanOrEqual(180);
      const [{ message, ctx }] = dead;
      expect(message).toEqual({ n: 1 });
      expect(ctx.messageId).toBe(messageId);
      expect(ctx.headers.origin).toBe('test');
      expect(ctx.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
      expect(ctx.headers[DEAD_LETTER_HEADERS.error]).toContain('downstream is down');
      expect(ctx.headers[DEAD_LETTER_HEADERS.reason]).toBe('max-attempts');
      expect(Number.isNaN(Date.parse(ctx.headers[DEAD_LETTER_HEADERS.failedAt]))).toBe(false);
      await sleep(150);
      expect(attempts).toHaveLength(3);
    });

    it('reprocessDeadLetters sends dead letters back to their own group only', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      let healthy = false;
      const failing: Received[] = [];
      const other: Received[] = [];
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: 'conformance',
        input: {
          group: 'fragile',
          retry: { maxAttempts: 2, initialDelayMs: 10 },
          callback: collector(failing, () => {
            if (!healthy) throw new Error('not yet');
          }),
        },
      });
      // A second group gets its own copies only where the adapter fans out (one SQS queue has one group).
      const withOtherGroup = target.capabilities.fanOut;
      if (withOtherGroup) {
        await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'sturdy', callback: collector(other) } });
      }
      await publish(broker, event, { id: 'a' });
      await publish(broker, event, { id: 'b' });
      await waitFor(() => failing.length === 4, 'two messages to fail twice each', timeout);
      if (withOtherGroup) await waitFor(() => other.length === 2, 'the sturdy group', timeout);
      await sleep(100);
      healthy = true;
      const moved = await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: 'conformance', group: 'fragile' });
      expect(moved).toBe(2);
      await waitFor(() => failing.length === 6, 'the reprocessed messages', timeout);
      const replayed = failing.slice(4);
      expect(replayed.map((r) => r.ctx.attempt)).toEqual([1, 1]);
      expect(replayed.map((r) => (r.message as { id: string }).id).sort()).toEqual(['a', 'b']);
      expect(replayed[0].ctx.headers[DEAD_LETTER_HEADERS.error]).toBeUndefined();
      await sleep(150);
      expect(other).toHaveLength(withOtherGroup ? 2 : 0);
      expect(await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: 'conformance', group: 'fragile' })).toBe(0);
    });

    it('reprocessDeadLetters honours its limit', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const dead: Received[] = [];
      const sub = await broker.subscribe({
        env: 'prd',
        event,
        product_tag: 'conformance',
        input: { group: 'g', retry: { maxAttempts: 1, initialDelayMs: 0 }, callback: collector(dead, () => Promise.reject(new Error('no'))) },
      });
      for (let i = 0; i < 3; i++) await publish(broker, event, { i });
      await waitFor(() => dead.length === 3, 'three failures', timeout);
      await sub.unsubscribe();
      await sleep(50);
      expect(await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: 'conformance', group: 'g', limit: 2 })).toBe(2);
      expect(await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: 'conformance', group: 'g', limit: 5 })).toBe(1);
    });

    it('sends a poison (non-JSON) message straight to the dead letters, its bytes as they came, and keeps consuming', async () => {
      const broker = await startApp();
      const { event, topicTag } = newEvent();
      const handled: Received[] = [];
      const dead: Received[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'eater', callback: collector(handled) } });
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'eater', deadLetter: true, callback: collector(dead) } });
      await target.publishRaw(`conformance.prd.${topicTag}`, Buffer.from('{"this is": not json'));
      await target.publishRaw(`conformance.prd.${topicTag}`, Buffer.from('plain text, not JSON'));
      await waitFor(() => dead.length === 2, 'two poison messages in the dead letters', timeout);
      expect(handled).toHaveLength(0);
      expect(dead.map((d) => d.message).sort()).toEqual(['{"this is": not json', 'plain text, not JSON'].sort());
      expect(dead.every((d) => d.ctx.headers[DEAD_LETTER_HEADERS.reason] === 'poison')).toBe(true);
      expect(dead.every((d) => /not JSON/.test(d.ctx.headers[DEAD_LETTER_HEADERS.error]))).toBe(true);
      expect(dead[0].ctx.headers[DEAD_LETTER_HEADERS.attempts]).toBe('1');
      await publish(broker, event, { after: 'poison' });
      await waitFor(() => handled.length === 1, 'the next good message', timeout);
      expect(handled[0].message).toEqual({ after: 'poison' });
    });

    it("handles a plain client's JSON (none of our metadata) as a message, with one id on every delivery of it", async () => {
      const broker = await startApp();
      const { event, topicTag } = newEvent();
      const received: Received[] = [];
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: 'conformance',
        input: { group: 'foreign', callback: collector(received, (ctx) => (ctx.attempt === 1 ? Promise.reject(new Error('once')) : undefined)) },
      });
      const before = Date.now();
      await target.publishRaw(`conformance.prd.${topicTag}`, Buffer.from(JSON.stringify({ orderId: 'j-1', from: 'java' })), { 'x-origin': 'billing-java' });
      await waitFor(() => received.length === 2, 'the first delivery and its retry', timeout);
      const [first, second] = received;
      expect(first.message).toEqual({ orderId: 'j-1', from: 'java' });
      expect(second.message).toEqual({ orderId: 'j-1', from: 'java' });
      expect([first.ctx.attempt, second.ctx.attempt]).toEqual([1, 2]);
      expect(typeof first.ctx.messageId).toBe('string');
      expect(first.ctx.messageId).not.toBe('');
      expect(second.ctx.messageId).toBe(first.ctx.messageId);
      expect(first.ctx.headers['x-origin']).toBe('billing-java');
      expect(second.ctx.headers['x-origin']).toBe('billing-java');
      expect(first.ctx.publishedAt.getTime()).toBeGreaterThanOrEqual(before - 5000);
      expect(first.ctx).toMatchObject({ event, env: 'prd', product: 'conformance' });
    });

    it('reads a message written by 0.1.0 (its v: 1 envelope, still on a queue during an upgrade) as before', async () => {
      const broker = await startApp();
      const { event, topicTag } = newEvent();
      const received: Received[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'upgrade', callback: collector(received) } });
      const envelope = {
        v: 1,
        id: 'old-1',
        publishedAt: 1_700_000_000_000,
        attempt: 1,
        headers: { tenant: 'acme' },
        correlationId: 'corr-old',
        key: 'k-old',
        message: { orderId: 'o-1' },
      };
      await target.publishRaw(`conformance.prd.${topicTag}`, Buffer.from(JSON.stringify(envelope)));
      await waitFor(() => received.length === 1, 'the 0.1.0 message', timeout);
      expect(received[0].message).toEqual({ orderId: 'o-1' });
      expect(received[0].ctx).toMatchObject({ messageId: 'old-1', attempt: 1, correlationId: 'corr-old', key: 'k-old' });
      expect(received[0].ctx.headers.tenant).toBe('acme');
      expect(received[0].ctx.publishedAt.getTime()).toBe(1_700_000_000_000);
    });

    it(
      keepsMessagesWithoutGroup
        ? 'keeps a message published before any consumer for the first one (the topic is the queue)'
        : 'resolves a publish to a topic with no group, and a group subscribing later never receives it',
      async () => {
        const broker = await startApp();
        const { event } = newEvent();
        await publish(broker, event, { n: 'before any group' });
        const received: Received[] = [];
        await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'late', callback: collector(received) } });
        await publish(broker, event, { n: 'after' });
        const expected = keepsMessagesWithoutGroup ? [{ n: 'before any group' }, { n: 'after' }] : [{ n: 'after' }];
        await waitFor(() => received.length >= expected.length, 'the messages the group should get', timeout);
        await sleep(300);
        expect(received.map((r) => r.message)).toEqual(expected);
      },
    );

    itIf(target.features.whenNoGroupReject === 'fails', "whenNoGroupReject: 'fails'")(
      "fails a publish to a topic with no group under whenNoGroup: 'reject', and not once a group subscribed",
      async () => {
        const tag = `t-${randomUUID().slice(0, 8)}`;
        const broker = await startApp({
          brokers: [{ tag: 'bk', envs: [target.envConfig('prd'), target.envConfig('stg')], topics: [{ tag, whenNoGroup: 'reject' }] }],
        });
        const event = `bk:${tag}`;
        const refused = await publish(broker, event, { n: 1 }).catch((error: unknown) => error);
        expect(refused).toMatchObject({ code: 'PUBLISH_FAILED' });
        expect((refused as Error).message).toMatch(/no subscription group/);
        const received: Received[] = [];
        await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'strict', callback: collector(received) } });
        await publish(broker, event, { n: 2 });
        await waitFor(() => received.length === 1, 'the message published once the group existed', timeout);
        await sleep(200);
        expect(received.map((r) => r.message)).toEqual([{ n: 2 }]);
      },
    );

    (target.rawReader ? it : itIf(false, 'a raw reader in its conformance target'))(
      'puts the bare message JSON on the wire, with its id where a plain client of the broker finds it',
      async () => {
        const broker = await startApp();
        const { event, topicTag } = newEvent();
        const reader = await target.rawReader!(`conformance.prd.${topicTag}`);
        try {
          const message = { orderId: '12345', status: 'pending', unicode: 'é 漢字 🎉' };
          const { messageId } = await publish(broker, event, message, { headers: { tenant: 'acme' }, correlationId: 'corr-raw' });
          const record = await reader.next(timeout);
          expect(record.body.toString('utf8')).toBe(JSON.stringify(message));
          expect(record.id).toBe(messageId);
          expect(record.headers.tenant).toBe('acme');
        } finally {
          await reader.close();
        }
      },
    );

    it('honours the concurrency limit of a subscription', async () => {
      expect(await peakConcurrency(h, { concurrency: 3, count: 12, keyOf: (i) => `k${i}`, handleMs: 40, waitMs: timeout })).toBe(3);
    });

    it('stops delivery on unsubscribe, and keeps later messages for the group', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const first: Received[] = [];
      const sub = await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'g', callback: collector(first) } });
      await publish(broker, event, { n: 1 });
      await waitFor(() => first.length === 1, 'the first message', timeout);
      await sub.unsubscribe();
      await publish(broker, event, { n: 2 });
      await sleep(200);
      expect(first).toHaveLength(1);
      const second: Received[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'g', callback: collector(second) } });
      await waitFor(() => second.length === 1, 'the message published while nobody listened', timeout);
      expect(second[0].message).toEqual({ n: 2 });
    });

    it('isolates environments: a message published on prd never reaches stg', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const prd: Received[] = [];
      const stg: Received[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { callback: collector(prd) } });
      await broker.subscribe({ env: 'stg', event, product_tag: 'conformance', input: { callback: collector(stg) } });
      await publish(broker, event, { where: 'prd' });
      await broker.publish({ env: 'stg', event, product_tag: 'conformance', input: { message: { where: 'stg' } } });
      await waitFor(() => prd.length === 1 && stg.length === 1, 'one message per env', timeout);
      await sleep(100);
      expect(prd.map((r) => r.message)).toEqual([{ where: 'prd' }]);
      expect(stg.map((r) => r.message)).toEqual([{ where: 'stg' }]);
      expect(stg[0].ctx.env).toBe('stg');
    });

    it('isolates products: two products on one broker never see each other', async () => {
      const shop = await startApp({ product: 'shop' });
      const blog = await startApp({ product: 'blog' });
      const { event } = newEvent();
      const shopGot: Received[] = [];
      const blogGot: Received[] = [];
      await shop.subscribe({ env: 'prd', event, product_tag: 'shop', input: { callback: collector(shopGot) } });
      await blog.subscribe({ env: 'prd', event, product_tag: 'blog', input: { callback: collector(blogGot) } });
      await shop.publish({ env: 'prd', event, product_tag: 'shop', input: { message: 'for shop' } });
      await blog.publish({ env: 'prd', event, product_tag: 'blog', input: { message: 'for blog' } });
      await waitFor(() => shopGot.length === 1 && blogGot.length === 1, 'one message per product', timeout);
      await sleep(100);
      expect(shopGot.map((r) => r.message)).toEqual(['for shop']);
      expect(blogGot.map((r) => r.message)).toEqual(['for blog']);
    });

    itIf(target.capabilities.orderingPerKey, 'orderingPerKey')('keeps publish order per key, even with concurrency', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const seen = new Map<string, number[]>();
      let done = 0;
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: 'conformance',
        input: {
          concurrency: 4,
          callback: async (message, ctx) => {
            const { seq } = message as { seq: number };
            await sleep((seq * 7) % 5);
            seen.set(ctx.key!, [...(seen.get(ctx.key!) ?? []), seq]);
            done++;
          },
        },
      });
      for (let seq = 0; seq < 30; seq++) await publish(broker, event, { seq }, { key: `key-${seq % 3}` });
      await waitFor(() => done === 30, 'all 30', timeout);
      for (let k = 0; k < 3; k++) {
        expect(seen.get(`key-${k}`)).toEqual(Array.from({ length: 10 }, (_, i) => i * 3 + k));
      }
    });

    it('delivers a message no sooner than its delayMs', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const received: number[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { callback: () => void received.push(Date.now()) } });
      const sent = Date.now();
      await publish(broker, event, { later: true }, { delayMs: 300 });
      await waitFor(() => received.length === 1, 'the delayed message', timeout + 300);
      expect(received[0] - sent).toBeGreaterThanOrEqual(290);
    });

    it('on shutdown, lets an in-flight handler finish and acks it: no other instance gets it again', async () => {
      const leaving = await startApp();
      const staying = await startApp();
      const { event } = newEvent();
      const hold = gate();
      let started = false;
      let finished = false;
      await leaving.subscribe({
        env: 'prd',
        event,
        product_tag: 'conformance',
        input: {
          group: 'shared',
          callback: async () => {
            started = true;
            await hold.promise;
            await sleep(100);
            finished = true;
          },
        },
      });
      await publish(leaving, event, { n: 1 });
      await waitFor(() => started, 'the handler to start', timeout);
      const otherGot: Received[] = [];
      await staying.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'shared', callback: collector(otherGot) } });
      const closing = h.apps()[0].close();
      await sleep(50);
      expect(finished).toBe(false);
      hold.open();
      await closing;
      expect(finished).toBe(true);
      await sleep(300);
      expect(otherGot).toHaveLength(0);
    });

    it(
      target.features.attemptsSurviveCrash
        ? 'on shutdown, never acks a handler still running at shutdownTimeoutMs: another instance gets it again, as attempt 2'
        : 'on shutdown, never acks a handler still running at shutdownTimeoutMs: another instance gets it again, still attempt 1', async () => {
      const leaving = await startApp({ shutdownTimeoutMs: 100 });
      const staying = await startApp();
      const { event } = newEvent();
      let started = false;
      let finished = false;
      const never = gate();
      await leaving.subscribe({
        env: 'prd',
        event,
        product_tag: 'conformance',
        input: {
          group: 'shared',
          callback: async () => {
            started = true;
            await never.promise;
            finished = true;
          },
        },
      });
      const { messageId } = await publish(leaving, event, { n: 1 });
      await waitFor(() => started, 'the handler to start', timeout);
      const otherGot: Received[] = [];
      await staying.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'shared', callback: collector(otherGot) } });
      const closedAt = Date.now();
      await h.apps()[0].close();
      expect(Date.now() - closedAt).toBeLessThan(target.closeWithinMs ?? 1500);
      never.open(); // the late finish of the abandoned handler must not ack or crash anything
      await waitFor(() => otherGot.length === 1, 'the unfinished message at the other instance', timeout + 2000);
      expect(finished).toBe(true);
      expect(otherGot[0].ctx.messageId).toBe(messageId);
      // features.attemptsSurviveCrash: the unfinished delivery counts as an attempt, or not.
      expect(otherGot[0].ctx.attempt).toBe(target.features.attemptsSurviveCrash ? 2 : 1);
    });

    defineFeatureTests(h);
    defineVolumeTests(h);
  });
}
