import { Logger } from '@nestjs/common';
import type { AdapterConsumer, BrokerAdapter, DeliveryListener, InboundDelivery, OutboundMessage } from '../lib';
import { SubscriptionRunner } from '../lib/delivery/subscription-runner';
import { resolveRetryPolicy } from '../lib/delivery/retry';
import { testRoute } from './support/route';
import { gate, waitFor } from './support/wait';

/**
 * The runner on its own, over a recording stand-in for an adapter (our own interface, not a broker
 * client): with the memory adapter a late ack is already a no-op, which would hide a runner that
 * acked an abandoned message. Here every ack, release and re-send is recorded.
 */
function recordingAdapter() {
  const calls: string[] = [];
  let listener!: DeliveryListener;
  const consumer: AdapterConsumer = {
    stop: () => (calls.push('stop'), Promise.resolve()),
    close: () => (calls.push('close'), Promise.resolve()),
  };
  const adapter: BrokerAdapter = {
    capabilities: { fanOut: true, orderingPerKey: false, nativeDelay: true, nativeDeadLetters: true, detectsNoGroup: true },
    connect: () => Promise.resolve(),
    publish: () => Promise.resolve(),
    sendToGroup: () => (calls.push('sendToGroup'), Promise.resolve()),
    sendToDeadLetters: () => (calls.push('sendToDeadLetters'), Promise.resolve()),
    drainDeadLetters: () => Promise.resolve(0),
    consume: (_topic, _options, onDelivery) => {
      listener = onDelivery;
      return Promise.resolve(consumer);
    },
    close: () => Promise.resolve(),
  };
  const deliver = (id: string, options: { ackReturnsNothing?: boolean } = {}): Promise<void> => {
    const delivery: InboundDelivery = {
      body: JSON.stringify({ id }),
      headers: {},
      metadata: { specversion: '1.0', id, time: 0 },
      raw: id,
      // A plain-JavaScript adapter may return nothing from ack: the types cannot promise it never does.
      ack: () => (calls.push(`ack ${id}`), options.ackReturnsNothing ? (undefined as unknown as Promise<void>) : Promise.resolve()),
      release: () => (calls.push(`release ${id}`), Promise.resolve()),
    };
    return listener(delivery);
  };
  return { adapter, calls, deliver };
}

const route = testRoute();
const logger = new Logger('test');
beforeAll(() => {
  Logger.overrideLogger(false);
});

describe('SubscriptionRunner', () => {
  it('settles a delivery whose ack returns nothing, and counts it finished (a drain does not wait for it)', async () => {
    const { adapter, calls, deliver } = recordingAdapter();
    const runner = new SubscriptionRunner(
      { route, group: 'g', concurrency: 1, retry: resolveRetryPolicy(), source: 'messages', handler: () => undefined },
      adapter,
      logger,
    );
    await runner.start();
    await deliver('plain', { ackReturnsNothing: true });
    const startedAt = Date.now();
    await runner.stop(2000);
    expect(Date.now() - startedAt).toBeLessThan(500);
    expect(calls).toEqual(['ack plain', 'stop', 'close']);
  });

  it('acks a finished handler, and never one that finishes after the drain gave up on it', async () => {
    const { adapter, calls, deliver } = recordingAdapter();
    const slow = gate();
    const runner = new SubscriptionRunner(
      { route, group: 'g', concurrency: 2, retry: resolveRetryPolicy(), source: 'messages', handler: (m) => ((m as { id: string }).id === 'late' ? slow.promise : undefined) },
      adapter,
      logger,
    );
    await runner.start();
    await deliver('quick');
    const late = deliver('late');
    await runner.stop(50);
    expect(calls).toEqual(['ack quick', 'stop', 'close']);
    slow.open();
    await late;
    expect(calls).toEqual(['ack quick', 'stop', 'close']);
  });

  it('neither re-sends nor dead-letters a handler that fails after the drain gave up on it', async () => {
    const { adapter, calls, deliver } = recordingAdapter();
    const slow = gate();
    const runner = new SubscriptionRunner(
      {
        route,
        group: 'g',
        concurrency: 1,
        retry: resolveRetryPolicy({ maxAttempts: 1, initialDelayMs: 0 }),
        source: 'messages',
        handler: async () => {
          await slow.promise;
          throw new Error('late failure');
        },
      },
      adapter,
      logger,
    );
    await runner.start();
    const late = deliver('late');
    await runner.stop(20);
    slow.open();
    await late;
    expect(calls).toEqual(['stop', 'close']);
  });

  it('releases a delivery it could not settle, so the broker gives it again', async () => {
    const { adapter, calls, deliver } = recordingAdapter();
    adapter.sendToGroup = () => Promise.reject(new Error('broker refused the retry'));
    const runner = new SubscriptionRunner(
      { route, group: 'g', concurrency: 1, retry: resolveRetryPolicy({ maxAttempts: 3, initialDelayMs: 0 }), source: 'messages', handler: () => Promise.reject(new Error('no')) },
      adapter,
      logger,
    );
    await runner.start();
    const pending = deliver('x');
    // The release comes after a pause (1 s), so a broker that keeps refusing is not hammered.
    await waitFor(() => calls.includes('release x'), 'the release', 3000);
    await pending;
    expect(calls).toEqual(['release x']);
  });

  it("gives a dead letter the delivery's deliveryId (fromDelivery), so an adapter that deduplicates stores it once", async () => {
    const { adapter, deliver } = recordingAdapter();
    const sent: OutboundMessage[] = [];
    adapter.sendToDeadLetters = (_topic, _group, message) => (sent.push(message), Promise.resolve());
    const consume = adapter.consume.bind(adapter);
    // The stand-in's deliveries carry no deliveryId: this one adds it, as the NATS adapter does.
    adapter.consume = (topic, options, onDelivery) => consume(topic, options, (delivery) => onDelivery({ ...delivery, metadata: { ...delivery.metadata, deliveryId: `stream/${delivery.metadata.id}` } }));
    const runner = new SubscriptionRunner(
      { route, group: 'g', concurrency: 1, retry: resolveRetryPolicy({ maxAttempts: 1, initialDelayMs: 0 }), source: 'messages', handler: () => Promise.reject(new Error('no')) },
      adapter,
      logger,
    );
    await runner.start();
    await deliver('x');
    expect(sent.map((message) => message.fromDelivery)).toEqual(['stream/x']);
    await runner.stop(100);
  });
});
