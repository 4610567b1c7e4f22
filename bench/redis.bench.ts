import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import Redis from 'ioredis';
import type { Subscription } from '../lib';
import { benchApp, consumeClock, inWindows, MESSAGE, warmedUp, within, type Ratio, type ScenarioResult } from './harness';
import type { BenchOptions } from './memory.bench';

const URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const WINDOW = 1000;
const CONCURRENCY = 100;
/** Ours' default trim, applied by the raw client too. */
const MAX_LEN = 1_000_000;
/**
 * The bench's own keys on the shared server, named for this run (product 'bench', topic tag
 * orders-<random>; bench.raw.orders-<random> for the raw client), so another run's are never
 * touched; deleted at the end, whatever happened.
 */
const TAG = `orders-${randomUUID().slice(0, 8)}`;
const EVENT = `redis:${TAG}`;
const TOPIC = `bench.prd.${TAG}`;
const GROUP = 'bench';
const RAW_STREAM = `bench.raw.${TAG}`;
const RAW_GROUP = 'bench-raw';

async function ours() {
  const { app, broker } = await benchApp('redis', { slug: 'prd', type: 'redis', config: { url: URL } }, GROUP);
  // The group exists from its first subscribe on: it then keeps what is published while it is away.
  await (await broker.subscribe({ env: 'prd', event: EVENT, product_tag: 'bench', input: { callback: () => undefined } })).unsubscribe();
  const publish = (message: unknown) => broker.publish({ env: 'prd', event: EVENT, product_tag: 'bench', input: { message } });
  return { app, broker, publish };
}

/**
 * The fields ours writes for the same message (lib/adapters/redis/redis-fields.ts): the JSON as
 * `data`, and the ce- fields and content-type of a first attempt with no correlation id, key or
 * user headers. JSON.stringify, a UUID and a timestamp per message, as ours does.
 */
function sameWorkFields(): string[] {
  return [
    'data',
    JSON.stringify(MESSAGE),
    'ce-specversion',
    '1.0',
    'ce-id',
    randomUUID(),
    'ce-source',
    '/bench/prd/bench',
    'ce-type',
    EVENT,
    'ce-time',
    new Date().toISOString(),
    'content-type',
    'application/json',
  ];
}

type Entries = [Buffer, [Buffer, Buffer[]][]][] | null;

export async function benchRedis(options: BenchOptions): Promise<{ results: ScenarioResult[]; ratios: Ratio[] }> {
  // The raw client with ours' connection options: one connection, auto-pipelined.
  const raw = new Redis(URL, { enableAutoPipelining: true });
  const rawReader = new Redis(URL);
  const keys = [TOPIC, `${TOPIC}:delayed`, `${TOPIC}:group:${GROUP}`, `${TOPIC}:group:${GROUP}:delayed`, `${TOPIC}:dead-letters:${GROUP}`, RAW_STREAM];
  let mine: Awaited<ReturnType<typeof ours>> | undefined;
  try {
    mine = await ours();
    return await measure(options, mine, raw, rawReader);
  } finally {
    await mine?.app.close();
    await raw.del(...keys);
    raw.disconnect();
    rawReader.disconnect();
  }
}

async function measure(options: BenchOptions, mine: Awaited<ReturnType<typeof ours>>, raw: Redis, rawReader: Redis): Promise<{ results: ScenarioResult[]; ratios: Ratio[] }> {
  const publishCount = options.quick ? 5000 : 20_000;
  const consumeCount = options.quick ? 5000 : 20_000;
  await raw.xgroup('CREATE', RAW_STREAM, RAW_GROUP, '$', 'MKSTREAM');
  /** Empties both streams for the next round; the consumer groups stay. */
  const emptyAll = async () => {
    await raw.xtrim(TOPIC, 'MAXLEN', 0);
    await raw.xtrim(RAW_STREAM, 'MAXLEN', 0);
  };
  const publishRound = async (work: () => Promise<void>) => {
    const start = process.hrtime.bigint();
    await work();
    const rate = publishCount / (Number(process.hrtime.bigint() - start) / 1e9);
    await emptyAll();
    return rate;
  };
  const SAME_WORK = 'raw ioredis XADD of ours’ fields (MAXLEN ~, windows of 1000)';

  const publish = await warmedUp('redis publish (XADD acknowledged)', 'msg/s', options.rounds, [
    { name: 'ours', run: () => publishRound(() => inWindows(publishCount, WINDOW, () => mine.publish(MESSAGE))) },
    { name: SAME_WORK, run: () => publishRound(() => inWindows(publishCount, WINDOW, () => raw.xadd(RAW_STREAM, 'MAXLEN', '~', MAX_LEN, '*', ...sameWorkFields()))) },
    {
      name: 'raw ioredis XADD of the bare JSON (windows of 1000)',
      run: () => publishRound(() => inWindows(publishCount, WINDOW, () => raw.xadd(RAW_STREAM, '*', 'data', JSON.stringify(MESSAGE)))),
    },
  ]);

  /** A raw consumer: blocking XREADGROUP of 100 on a connection of its own, JSON.parse of `data`, one XACK per message. */
  const rawConsume = async (): Promise<number> => {
    const clock = consumeClock(consumeCount);
    let done = 0;
    while (done < consumeCount) {
      const reply = (await rawReader.xreadgroupBuffer('GROUP', RAW_GROUP, 'reader', 'COUNT', CONCURRENCY, 'BLOCK', 1000, 'STREAMS', RAW_STREAM, '>')) as Entries;
      for (const [, entries] of reply ?? []) {
        for (const [id, fields] of entries) {
          for (let i = 0; i < fields.length; i += 2) if (fields[i].toString() === 'data') JSON.parse(fields[i + 1].toString());
          void raw.xack(RAW_STREAM, RAW_GROUP, id);
          clock.handled();
          done++;
        }
      }
    }
    await within(clock.done, 60_000, 'raw consume');
    return clock.rate();
  };
  const consume = await warmedUp(`redis consume (XREADGROUP, ${CONCURRENCY} in flight, XACK after the handler)`, 'msg/s', options.rounds, [
    {
      name: 'ours',
      run: async () => {
        await inWindows(consumeCount, WINDOW, () => mine.publish(MESSAGE));
        const clock = consumeClock(consumeCount);
        const subscription: Subscription = await mine.broker.subscribe({
          env: 'prd',
          event: EVENT,
          product_tag: 'bench',
          input: { concurrency: CONCURRENCY, callback: () => clock.handled() },
        });
        await within(clock.done, 60_000, 'ours consume');
        await subscription.unsubscribe();
        await emptyAll();
        return clock.rate();
      },
    },
    {
      name: 'raw ioredis XREADGROUP + XACK on ours’ fields',
      run: async () => {
        await inWindows(consumeCount, WINDOW, () => raw.xadd(RAW_STREAM, 'MAXLEN', '~', MAX_LEN, '*', ...sameWorkFields()));
        const rate = await rawConsume();
        await emptyAll();
        return rate;
      },
    },
  ]);

  const p = publish.medians;
  const c = consume.medians;
  const ratios: Ratio[] = [
    { name: 'redis-publish-vs-ioredis-xadd', value: p.ours / p[SAME_WORK], target: 0.9 },
    { name: 'redis-consume-vs-ioredis-xreadgroup', value: c.ours / c['raw ioredis XREADGROUP + XACK on ours’ fields'], target: 0.9 },
    // What the CloudEvents fields cost a plain client, for information.
    { name: 'redis-raw-xadd-with-ours-fields-vs-bare', value: p[SAME_WORK] / p['raw ioredis XADD of the bare JSON (windows of 1000)'] },
  ];
  return { results: [publish, consume], ratios };
}
