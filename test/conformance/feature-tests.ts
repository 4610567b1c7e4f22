import { randomUUID } from 'node:crypto';
import { BrokerError } from '../../lib';
import { sleep, waitFor } from '../support/wait';
import { formatDuration } from './features';
import { peakConcurrency, type Harness, type Received } from './harness';

/**
 * Both sides of every declared feature (features.ts): where a target claims it, a test shows it
 * holds; where it declares the opposite, a test shows that behaviour, so a change either way fails.
 * (Fan-out, ordering per key, publishing with no group and 'reject' on a broker that can tell,
 * and attempts across an unfinished delivery have their claimed side in conformance.suite.ts.)
 */
export function defineFeatureTests(h: Harness): void {
  const { target, it, startApp, newEvent, collector, publish, timeout } = h;
  const { features, capabilities } = target;

  it('declares the features its adapter claims in AdapterCapabilities, and no other', () => {
    expect({ fanOut: features.fanOut, orderingPerKey: features.orderingPerKey }).toEqual({
      fanOut: capabilities.fanOut,
      orderingPerKey: capabilities.orderingPerKey,
    });
    // 'reject' fails only where the adapter can tell there is no group, and there can be none.
    expect(features.whenNoGroupReject === 'fails').toBe(capabilities.detectsNoGroup && features.noGroupPublish === 'dropped');
    expect(features.whenNoGroupReject === 'never-no-group').toBe(features.noGroupPublish === 'kept');
    return Promise.resolve();
  });

  if (!features.fanOut) {
    it('has no fan-out: a second group on a topic fails at subscribe with SUBSCRIBE_FAILED', async () => {
      const broker = await startApp();
      const { event } = newEvent();
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'first', callback: () => undefined } });
      const refused = await broker
        .subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'second', callback: () => undefined } })
        .catch((error: unknown) => error);
      expect(refused).toBeInstanceOf(BrokerError);
      expect(refused).toMatchObject({ code: 'SUBSCRIBE_FAILED' });
    });
  }

  it(
    features.orderingPerKey
      ? 'handles the messages of one key one at a time, even with concurrency (ordering per key)'
      : 'handles the messages of one key side by side with concurrency > 1 (no ordering per key)',
    async () => {
      const peak = await peakConcurrency(h, { concurrency: 4, count: 8, keyOf: () => 'one-key', handleMs: 100, waitMs: timeout + 2000 });
      if (features.orderingPerKey) expect(peak).toBe(1);
      else expect(peak).toBeGreaterThan(1);
    },
  );

  if (features.whenNoGroupReject !== 'fails') {
    it(
      features.whenNoGroupReject === 'accepted'
        ? "accepts a publish to a topic with no group under whenNoGroup: 'reject' (the broker cannot tell), and no later group gets it"
        : "accepts a publish under whenNoGroup: 'reject' (the topic is the group's queue), and the first consumer gets it",
      async () => {
        const tag = `t-${randomUUID().slice(0, 8)}`;
        const broker = await startApp({
          brokers: [{ tag: 'bk', envs: [target.envConfig('prd'), target.envConfig('stg')], topics: [{ tag, whenNoGroup: 'reject' }] }],
        });
        const event = `bk:${tag}`;
        await publish(broker, event, { n: 'before any group' });
        const received: Received[] = [];
        await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'late', callback: collector(received) } });
        await publish(broker, event, { n: 'after' });
        const expected = features.whenNoGroupReject === 'accepted' ? [{ n: 'after' }] : [{ n: 'before any group' }, { n: 'after' }];
        await waitFor(() => received.length >= expected.length, 'the messages the group should get', timeout);
        await sleep(300);
        expect(received.map((r) => r.message)).toEqual(expected);
      },
    );
  }

  it(`takes a delayMs of ${features.maxDelayMs} (${formatDuration(features.maxDelayMs)}, its longest) and refuses one more with INVALID_MESSAGE`, async () => {
    const broker = await startApp();
    const { event } = newEvent();
    const received: Received[] = [];
    await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'patient', callback: collector(received) } });
    const { messageId } = await publish(broker, event, { n: 'longest' }, { delayMs: features.maxDelayMs });
    expect(typeof messageId).toBe('string');
    const refused = await publish(broker, event, { n: 'too long' }, { delayMs: features.maxDelayMs + 1 }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(BrokerError);
    expect(refused).toMatchObject({ code: 'INVALID_MESSAGE' });
    // The accepted one is held (not delivered at once, not lost): a message published after it still flows.
    await publish(broker, event, { n: 'now' });
    await waitFor(() => received.length >= 1, 'the undelayed message', timeout);
    await sleep(300);
    expect(received.map((r) => r.message)).toEqual([{ n: 'now' }]);
  });

  it(
    features.longDelayHoldsBackShorter
      ? 'holds a delayed message of a key behind an earlier one due later (a long delay holds back shorter ones)'
      : 'delivers a shorter delay before a longer one published earlier (a long delay holds nothing back)',
    async () => {
      const LONG = 3000;
      const SHORT = 1000; // SQS delays are whole seconds
      const broker = await startApp();
      const { event } = newEvent();
      const arrived = new Map<string, number>();
      await broker.subscribe({
        env: 'prd',
        event,
        product_tag: 'conformance',
        input: { callback: (message) => void arrived.set((message as { n: string }).n, Date.now()) },
      });
      const sent = Date.now();
      // One key: on Kafka, one partition of the delay topic.
      await publish(broker, event, { n: 'long' }, { delayMs: LONG, key: 'k' });
      await publish(broker, event, { n: 'short' }, { delayMs: SHORT, key: 'k' });
      await waitFor(() => arrived.size === 2, 'both delayed messages', LONG + timeout);
      const short = arrived.get('short')! - sent;
      const long = arrived.get('long')! - sent;
      expect(long).toBeGreaterThanOrEqual(LONG - 10);
      expect(short).toBeGreaterThanOrEqual(SHORT - 10);
      if (features.longDelayHoldsBackShorter) expect(short).toBeGreaterThanOrEqual(LONG - 10);
      else expect(short).toBeLessThan(LONG - 500);
    },
    30_000,
  );

  it(
    features.survivesProcessRestart
      ? "keeps a group's messages published while none of its consumers ran for a consumer in a new process"
      : 'keeps nothing once the process that held the broker is gone (the broker lives in the process)',
    async () => {
      const first = await startApp();
      const { event } = newEvent();
      const sub = await first.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'durable', callback: () => undefined } });
      await sub.unsubscribe();
      for (let i = 0; i < 3; i++) await publish(first, event, { i });
      await Promise.all(h.apps().splice(0).map((app) => app.close()));
      // The process ends: whatever it held beyond its applications goes with it.
      target.endProcess?.();
      const next = await startApp();
      const received: Received[] = [];
      await next.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'durable', callback: collector(received) } });
      if (features.survivesProcessRestart) await waitFor(() => received.length === 3, 'the three messages', timeout);
      await sleep(500);
      expect(received.map((r) => (r.message as { i: number }).i).sort()).toEqual(features.survivesProcessRestart ? [0, 1, 2] : []);
    },
  );
}
