import { Logger } from '@nestjs/common';
import type {
  AdapterConsumer,
  AdapterLogger,
  AdapterTopic,
  BrokerAdapter,
  ConsumeOptions,
  DeliveryListener,
  OutboundMessage,
} from '../lib/adapters/broker-adapter';
import { hasDeadLetterStore, hasGroupSender } from '../lib/adapters/broker-adapter';
import { MemoryAdapter } from '../lib/adapters/memory';
import { DEAD_LETTER_HEADERS } from '../lib/constants';
import { deliveryParts, emulatedDeadLetterTopic, emulatedRetryTopic } from '../lib/delivery/adapter-parts';
import { reprocessDeadLetters } from '../lib/delivery/dead-letters';
import { resolveRetryPolicy } from '../lib/delivery/retry';
import { SubscriptionRunner, type SubscriptionSpec } from '../lib/delivery/subscription-runner';
import type { BrokerContext } from '../lib/interfaces/message-broker.interface';
import { testRoute } from './support/route';
import { sleep, waitFor } from './support/wait';

/**
 * An adapter of the kind a new broker starts with: only the core transport (connect, publish,
 * consume, close). It delivers through the embedded broker, and records every topic it is asked
 * to publish to or consume. The delivery layer must give it retries, dead letters, dead-letter
 * subscriptions and reprocessing all the same, over per-group topics.
 */
class CoreOnlyAdapter implements BrokerAdapter {
  readonly published: string[] = [];
  readonly consumed: string[] = [];
  /** Deliveries of this topic fail their ack (a connection lost while acking). */
  failAcksOn?: string;
  private readonly inner: MemoryAdapter;

  constructor(logger: AdapterLogger) {
    this.inner = new MemoryAdapter({}, { brokerTag: 'b', envSlug: 'prd', logger });
  }

  get capabilities(): BrokerAdapter['capabilities'] {
    return this.inner.capabilities;
  }

  connect(): Promise<void> {
    return this.inner.connect();
  }

  publish(topic: AdapterTopic, message: OutboundMessage): Promise<void> {
    this.published.push(topic.name);
    return this.inner.publish(topic, message);
  }

  consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> {
    if (options.source !== 'messages') throw new Error('a core-only adapter is never asked for its dead letters');
    this.consumed.push(`${topic.name} as ${options.group}`);
    if (topic.name !== this.failAcksOn) return this.inner.consume(topic, options, listener);
    return this.inner.consume(topic, options, (delivery) =>
      listener({
        body: delivery.body,
        headers: delivery.headers,
        metadata: delivery.metadata,
        raw: delivery.raw,
        ack: () => Promise.reject(new Error('connection lost while acking')),
        release: () => delivery.release(),
      }),
    );
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

const silent: AdapterLogger = { log: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };
const route = testRoute('p.prd.orders');

function outbound(id: string, payload: unknown): OutboundMessage {
  return {
    body: JSON.stringify(payload),
    messageId: id,
    publishedAt: Date.now(),
    type: route.event,
    source: route.source,
    contentType: 'application/json',
    attempt: 1,
    headers: {},
  };
}

describe('an adapter with only the core transport', () => {
  let adapter: CoreOnlyAdapter;
  const runners: SubscriptionRunner[] = [];

  beforeEach(async () => {
    adapter = new CoreOnlyAdapter(silent);
    await adapter.connect();
  });

  afterEach(async () => {
    await Promise.all(runners.splice(0).map((runner) => runner.stop(1000)));
    await adapter.close();
  });

  async function subscribe(
    handler: (message: unknown, context: BrokerContext) => unknown,
    overrides: Partial<SubscriptionSpec> = {},
  ): Promise<SubscriptionRunner> {
    const spec: SubscriptionSpec = {
      route,
      group: 'billing',
      concurrency: 4,
      retry: resolveRetryPolicy({ maxAttempts: 3, initialDelayMs: 10, multiplier: 1 }),
      source: 'messages',
      handler: handler,
      ...overrides,
    };
    const runner = new SubscriptionRunner(spec, adapter, new Logger('core-only', { timestamp: false }));
    runners.push(runner);
    await runner.start();
    return runner;
  }

  it('is told apart from a complete adapter by the type guards', () => {
    const complete = new MemoryAdapter({}, { brokerTag: 'b', envSlug: 'prd', logger: silent });
    expect(hasGroupSender(complete) && hasDeadLetterStore(complete)).toBe(true);
    expect(hasGroupSender(adapter)).toBe(false);
    expect(hasDeadLetterStore(adapter)).toBe(false);
  });

  it('uses a complete adapter\'s own parts, bound to it', async () => {
    const complete = new MemoryAdapter({}, { brokerTag: 'b', envSlug: 'prd', logger: silent });
    const sent = jest.spyOn(complete, 'sendToGroup');
    await deliveryParts(complete).sendToGroup(route.topic, 'billing', outbound('m0', {}));
    expect(sent).toHaveBeenCalledTimes(1);
    expect(deliveryParts(complete)).toBe(deliveryParts(complete));
  });

  it('retries a failed message through the group\'s own retry topic, with the next attempt', async () => {
    const attempts: number[] = [];
    await subscribe((_message, context) => {
      attempts.push(context.attempt);
      if (context.attempt < 2) throw new Error('first attempt fails');
    });
    expect(adapter.consumed).toEqual(
      expect.arrayContaining([`${route.topic.name} as billing`, `${emulatedRetryTopic(route.topic, 'billing').name} as billing`]),
    );
    await adapter.publish(route.topic, outbound('m1', { n: 1 }));
    await waitFor(() => attempts.length === 2, 'the retry handled');
    expect(attempts).toEqual([1, 2]);
    expect(adapter.published).toEqual([route.topic.name, 'p.prd.orders.billing.retry']);
  });

  it('dead-letters to the group\'s dead-letter topic, kept before anyone reads it, and a dead-letter subscription reads it', async () => {
    await subscribe(() => {
      throw new Error('always fails');
    });
    await adapter.publish(route.topic, outbound('m2', { n: 2 }));
    const deadLetterTopic = emulatedDeadLetterTopic(route.topic, 'billing').name;
    await waitFor(() => adapter.published.includes(deadLetterTopic), 'the dead letter sent');

    const read: { message: unknown; context: BrokerContext }[] = [];
    await subscribe((message, context) => void read.push({ message, context }), { source: 'dead-letters' });
    await waitFor(() => read.length === 1, 'the dead letter read');
    expect(read[0].message).toEqual({ n: 2 });
    expect(read[0].context.messageId).toBe('m2');
    expect(read[0].context.headers[DEAD_LETTER_HEADERS.reason]).toBe('max-attempts');
    expect(adapter.consumed).toContain(`${deadLetterTopic} as billing`);
  });

  it('reprocesses dead letters back to the group only, as first attempts, up to the limit', async () => {
    let failing = true;
    const handled: { message: unknown; attempt: number }[] = [];
    await subscribe((message, context) => {
      if (failing) throw new Error('down');
      handled.push({ message, attempt: context.attempt });
    });
    for (const n of [1, 2, 3]) await adapter.publish(route.topic, outbound(`d${n}`, { n }));
    const deadLetterTopic = emulatedDeadLetterTopic(route.topic, 'billing').name;
    await waitFor(() => adapter.published.filter((name) => name === deadLetterTopic).length === 3, 'three dead letters');

    failing = false;
    expect(await reprocessDeadLetters(adapter, route, 'billing', 2)).toBe(2);
    await waitFor(() => handled.length === 2, 'two reprocessed');
    expect(handled.every((entry) => entry.attempt === 1)).toBe(true);

    expect(await reprocessDeadLetters(adapter, route, 'billing', 10)).toBe(1);
    await waitFor(() => handled.length === 3, 'the last one reprocessed');
    expect(handled.map((entry) => entry.message)).toEqual(expect.arrayContaining([{ n: 1 }, { n: 2 }, { n: 3 }]));
    expect(await reprocessDeadLetters(adapter, route, 'billing', 10)).toBe(0);
  });

  it('stops a drain at the first failure and keeps that dead letter', async () => {
    await subscribe(() => {
      throw new Error('down');
    });
    await adapter.publish(route.topic, outbound('k1', { n: 1 }));
    const deadLetterTopic = emulatedDeadLetterTopic(route.topic, 'billing').name;
    await waitFor(() => adapter.published.includes(deadLetterTopic), 'the dead letter sent');
    const parts = deliveryParts(adapter);
    await expect(parts.drainDeadLetters(route.topic, 'billing', 10, () => Promise.reject(new Error('visit failed')))).rejects.toThrow('visit failed');
    const seen: string[] = [];
    expect(await parts.drainDeadLetters(route.topic, 'billing', 10, async (record) => void seen.push(String(record.metadata.id)))).toBe(1);
    expect(seen).toEqual(['k1']);
  });

  it('ends a drain whose ack fails with that failure, instead of waiting for ever', async () => {
    await subscribe(() => {
      throw new Error('down');
    });
    await adapter.publish(route.topic, outbound('k1', { n: 1 }));
    const deadLetterTopic = emulatedDeadLetterTopic(route.topic, 'billing').name;
    await waitFor(() => adapter.published.includes(deadLetterTopic), 'the dead letter sent');
    adapter.failAcksOn = deadLetterTopic;
    const drained = deliveryParts(adapter).drainDeadLetters(route.topic, 'billing', 10, () => Promise.resolve());
    const outcome = await Promise.race([drained.then(String, (error: Error) => error.message), sleep(5000).then(() => 'still pending')]);
    expect(outcome).toBe('connection lost while acking');
  });

  it("holds the subscription's concurrency across its messages and its group's retry topic", async () => {
    let running = 0;
    let peak = 0;
    await subscribe(
      async (_message, context) => {
        peak = Math.max(peak, ++running);
        try {
          if (context.messageId === 'a' && context.attempt === 1) throw new Error('first attempt fails');
          await sleep(150);
        } finally {
          running--;
        }
      },
      { concurrency: 1 },
    );
    for (const id of ['a', 'b', 'c']) await adapter.publish(route.topic, outbound(id, { id }));
    await waitFor(() => adapter.published.includes(emulatedRetryTopic(route.topic, 'billing').name), 'the retry sent');
    await sleep(700);
    expect(peak).toBe(1);
  });

  it('keeps dead letters in one place when an adapter has only half a dead-letter store', async () => {
    const drainedNatively: string[] = [];
    const half = Object.assign(adapter, {
      drainDeadLetters: () => {
        drainedNatively.push('called');
        return Promise.resolve(0);
      },
    });
    await subscribe(() => {
      throw new Error('down');
    });
    await half.publish(route.topic, outbound('k1', { n: 1 }));
    const deadLetterTopic = emulatedDeadLetterTopic(route.topic, 'billing').name;
    await waitFor(() => adapter.published.includes(deadLetterTopic), 'the dead letter sent to the emulated topic');
    const seen: string[] = [];
    expect(await deliveryParts(half).drainDeadLetters(route.topic, 'billing', 10, async (record) => void seen.push(String(record.metadata.id)))).toBe(1);
    expect({ seen, drainedNatively }).toEqual({ seen: ['k1'], drainedNatively: [] });
  });
});
