import 'reflect-metadata';
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { DuctapeBrokerModule, MessageBrokerService, type BrokerContext, type BrokerModuleOptions, type RetryPolicy } from '../../lib';
import { silentLogger } from '../support/app';
import { printSkip } from '../support/broker-availability';
import { sleep, waitFor } from '../support/wait';
import type { ConformanceTarget } from './conformance-target';

export const FAST_RETRY: RetryPolicy = { maxAttempts: 3, initialDelayMs: 20, multiplier: 2 };

export interface Received {
  message: unknown;
  ctx: BrokerContext;
}

export type TestBody = () => Promise<void>;
export type TestFn = (name: string, fn: TestBody, timeoutMs?: number) => void;

/** What every test of the suite uses: its applications, fresh topics, and `it` as this target runs it. */
export interface Harness {
  target: ConformanceTarget;
  /** Upper bound for one delivery to arrive. */
  timeout: number;
  /** `it`, concurrent when the target asks; a test the target lists among its known limitations is skipped with the reason printed. */
  it: TestFn;
  /** `it` when `claimed`, else skipped with `the adapter does not claim <capability>` printed. */
  itIf(claimed: boolean, capability: string): TestFn;
  /** `fn` with a context of applications of its own, for a test defined with another `it` (itNeeding). */
  inContext(fn: TestBody): TestBody;
  /** A test that cannot run on this target: skipped, the reason printed and in its title. */
  skip(name: string, reason: string, fn: TestBody): void;
  /** Starts an application on the target (or on `overrides.brokers`); closed when its test ends. */
  startApp(overrides?: Partial<BrokerModuleOptions>): Promise<MessageBrokerService>;
  /** The applications the running test started, in order. */
  apps(): INestApplication[];
  newEvent(): { event: string; topicTag: string };
  collector(into: Received[], behaviour?: (ctx: BrokerContext) => Promise<void> | void): (message: unknown, ctx: BrokerContext) => Promise<void>;
  publish(broker: MessageBrokerService, event: string, message: unknown, input?: Record<string, unknown>): Promise<{ messageId: string }>;
}

/**
 * Each test's applications live in its own context (an AsyncLocalStorage), not in the describe
 * block, so tests can run concurrently (`concurrentTests`): each closes its own when it ends.
 */
export function createHarness(target: ConformanceTarget): Harness {
  const storage = new AsyncLocalStorage<INestApplication[]>();
  const limitations = target.knownLimitations ?? {};
  const base = target.concurrentTests ? global.it.concurrent : global.it;
  const skipped = target.concurrentTests ? global.it.concurrent.skip : global.it.skip;

  const skip = (name: string, reason: string, fn: TestBody) => {
    printSkip(`Skipping "conformance: ${target.broker} > ${name}": ${reason}`);
    skipped(`${name} (skipped: ${reason})`, fn);
  };

  const inContext = (fn: TestBody): TestBody => () => {
    const apps: INestApplication[] = [];
    return storage.run(apps, async () => {
      try {
        await fn();
      } finally {
        await Promise.all(apps.splice(0).map((app) => app.close()));
      }
    });
  };

  const it: TestFn = (name, fn, timeoutMs) => {
    const reason = limitations[name];
    if (reason !== undefined) return skip(name, reason, fn);
    base(name, inContext(fn), timeoutMs);
  };

  const apps = () => {
    const current = storage.getStore();
    if (!current) throw new Error('a conformance helper was called outside a test');
    return current;
  };

  return {
    target,
    timeout: target.deliveryTimeoutMs ?? 5000,
    it,
    itIf: (claimed, capability) => (claimed ? it : (name, fn) => skip(name, `the adapter does not claim ${capability}`, fn)),
    skip,
    inContext,
    apps,
    async startApp(overrides = {}) {
      const options: BrokerModuleOptions = {
        env: 'prd',
        product: 'conformance',
        brokers: [{ tag: 'bk', envs: [target.envConfig('prd'), target.envConfig('stg')] }],
        retry: FAST_RETRY,
        shutdownTimeoutMs: 2000,
        ...overrides,
      };
      const moduleRef = await Test.createTestingModule({ imports: [DuctapeBrokerModule.forRoot(options)] })
        .setLogger(silentLogger)
        .compile();
      const app = moduleRef.createNestApplication({ logger: false });
      await app.init();
      apps().push(app);
      return app.get(MessageBrokerService);
    },
    newEvent() {
      const topicTag = `t-${randomUUID().slice(0, 8)}`;
      return { event: `bk:${topicTag}`, topicTag };
    },
    collector(into, behaviour) {
      return async (message, ctx) => {
        into.push({ message, ctx });
        await behaviour?.(ctx);
      };
    },
    publish(broker, event, message, input = {}) {
      return broker.publish({ env: 'prd', event, product_tag: 'conformance', input: { message, ...input } });
    },
  };
}

/**
 * Publishes `count` messages (the i-th with key `keyOf(i)`) to a new subscription of `concurrency`
 * whose handler takes `handleMs`, and resolves with the most handlers that ran at once.
 */
export async function peakConcurrency(
  h: Harness,
  options: { concurrency: number; count: number; keyOf: (i: number) => string; handleMs: number; waitMs: number },
): Promise<number> {
  const broker = await h.startApp();
  const { event } = h.newEvent();
  let running = 0;
  let peak = 0;
  let done = 0;
  await broker.subscribe({
    env: 'prd',
    event,
    product_tag: 'conformance',
    input: {
      concurrency: options.concurrency,
      callback: async () => {
        peak = Math.max(peak, ++running);
        await sleep(options.handleMs);
        running--;
        done++;
      },
    },
  });
  await Promise.all(Array.from({ length: options.count }, (_, i) => h.publish(broker, event, { i }, { key: options.keyOf(i) })));
  await waitFor(() => done === options.count, `all ${options.count} handled`, options.waitMs);
  return peak;
}
