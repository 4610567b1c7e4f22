import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { AckPolicy, connect, DeliverPolicy, headers as natsHeaders, type JetStreamClient, type JetStreamManager, type JsMsg, type NatsConnection } from 'nats';
import type { Subscription } from '../lib';
import { benchApp, consumeClock, heapAfterGcMb, inWindows, MESSAGE, perSecond, warmedUp, within, type Ratio, type ScenarioResult } from './harness';
import type { BenchOptions } from './memory.bench';

const URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';
/** Publishes in flight at once (each awaited for its JetStream acknowledgement), on every side. */
const WINDOW = 1000;
/** Messages in hand at once when consuming, on every side. */
const IN_HAND = 100;
const GROUP = 'bench';
/** The stream ours makes for product 'bench', env 'prd' (lib/adapters/nats/nats-names.ts); the raw client uses it too. */
const STREAM = 'ductape_bench_prd';
const RAW_SUBJECT = 'bench.prd.raw-orders';
const RAW_CONSUMER = 'bench_raw';

async function ours() {
  const { app, broker } = await benchApp('nats', { slug: 'prd', type: 'nats', config: { servers: [URL] } }, GROUP);
  // The group's consumer must exist for it to read what is published: subscribe once, then leave it.
  await (await broker.subscribe({ env: 'prd', event: 'nats:orders', product_tag: 'bench', input: { callback: () => undefined } })).unsubscribe();
  const publish = (message: unknown) => broker.publish({ env: 'prd', event: 'nats:orders', product_tag: 'bench', input: { message } });
  return { app, broker, publish };
}

/**
 * What ours puts on the wire for the same message (lib/adapters/nats/nats-headers.ts): the
 * message's JSON, the ce- headers of a first attempt with no correlation id, key or user headers,
 * content-type, and a Nats-Msg-Id per publish (ours sends one, for deduplication of its resends).
 */
function sameWorkPublish(js: JetStreamClient): Promise<unknown> {
  const hdrs = natsHeaders();
  hdrs.set('ce-specversion', '1.0');
  hdrs.set('ce-id', randomUUID());
  hdrs.set('ce-source', '/bench/prd/bench');
  hdrs.set('ce-type', 'nats:orders');
  hdrs.set('ce-time', new Date().toISOString());
  hdrs.set('content-type', 'application/json');
  return js.publish(RAW_SUBJECT, Buffer.from(JSON.stringify(MESSAGE)), { headers: hdrs, msgID: randomUUID() });
}

export async function benchNats(options: BenchOptions): Promise<{ results: ScenarioResult[]; ratios: Ratio[]; growth: Record<string, number> }> {
  const publishCount = options.quick ? 4000 : 20_000;
  const consumeCount = options.quick ? 4000 : 20_000;

  const mine = await ours();
  const nc: NatsConnection = await connect({ servers: URL });
  const jsm: JetStreamManager = await nc.jetstreamManager();
  const js = nc.jetstream();
  // The raw consumer: durable, pull, explicit ack, on the raw subject of ours' stream (made by ours above).
  await jsm.consumers.add(STREAM, { durable_name: RAW_CONSUMER, filter_subject: RAW_SUBJECT, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.New });
  const purge = () => jsm.streams.purge(STREAM);

  const publishRound = async (work: () => Promise<void>) => {
    const start = process.hrtime.bigint();
    await work();
    const rate = perSecond(publishCount, start);
    await purge();
    return rate;
  };
  const SAME_WORK = 'raw nats js.publish of ours’ message (same bytes, headers, Nats-Msg-Id)';
  const publish = await warmedUp(`nats publish (JetStream acknowledged, ${WINDOW} in flight)`, 'msg/s', options.rounds, [
    { name: 'ours', run: () => publishRound(() => inWindows(publishCount, WINDOW, () => mine.publish(MESSAGE))) },
    { name: SAME_WORK, run: () => publishRound(() => inWindows(publishCount, WINDOW, () => sameWorkPublish(js))) },
    {
      name: 'raw nats js.publish (bare body)',
      run: () => publishRound(() => inWindows(publishCount, WINDOW, () => js.publish(RAW_SUBJECT, Buffer.from(JSON.stringify(MESSAGE))))),
    },
  ]);

  /** A raw pull consumer of `consumeCount` messages at `IN_HAND` messages: `work` on each, then ack. */
  const rawConsume = async (work: (msg: JsMsg) => void): Promise<number> => {
    await inWindows(consumeCount, WINDOW, () => sameWorkPublish(js));
    const clock = consumeClock(consumeCount);
    const consumer = await js.consumers.get(STREAM, RAW_CONSUMER);
    const messages = await consumer.consume({ max_messages: IN_HAND });
    const reading = (async () => {
      for await (const msg of messages) {
        work(msg);
        msg.ack();
        clock.handled();
      }
    })();
    await within(clock.done, 60_000, 'raw consume');
    messages.stop();
    await reading;
    await purge();
    return clock.rate();
  };
  const RAW_CONSUME = `raw nats consumer.consume (max_messages ${IN_HAND}): JSON.parse, ack`;
  // The same work as ours' adapter does on each delivery: the body parsed and the CloudEvents
  // attributes read from the headers (a consumer of CloudEvents needs both), then acked.
  const RAW_SAME_WORK = `raw nats consumer.consume (max_messages ${IN_HAND}): JSON.parse, ce- headers read, ack`;
  const consume = await warmedUp(`nats consume (${IN_HAND} in hand, ack after handler)`, 'msg/s', options.rounds, [
    {
      name: 'ours',
      run: async () => {
        await inWindows(consumeCount, WINDOW, () => mine.publish(MESSAGE));
        const clock = consumeClock(consumeCount);
        const subscription: Subscription = await mine.broker.subscribe({
          env: 'prd',
          event: 'nats:orders',
          product_tag: 'bench',
          input: { concurrency: IN_HAND, callback: () => clock.handled() },
        });
        await within(clock.done, 60_000, 'ours consume');
        await subscription.unsubscribe();
        await purge();
        return clock.rate();
      },
    },
    {
      name: RAW_SAME_WORK,
      run: () =>
        rawConsume((msg) => {
          JSON.parse(msg.string());
          const hdrs = msg.headers;
          if (hdrs) for (const name of hdrs.keys()) hdrs.get(name);
          void msg.info.deliveryCount;
        }),
    },
    { name: RAW_CONSUME, run: () => rawConsume((msg) => void JSON.parse(msg.string())) },
  ]);

  // Growth: 10,000 messages through ours (100,000 without --quick), published and consumed.
  const growthCount = options.quick ? 10_000 : 100_000;
  const before = heapAfterGcMb();
  {
    const clock = consumeClock(growthCount);
    const subscription = await mine.broker.subscribe({ env: 'prd', event: 'nats:orders', product_tag: 'bench', input: { concurrency: IN_HAND, callback: () => clock.handled() } });
    await inWindows(growthCount, WINDOW, () => mine.publish(MESSAGE));
    await within(clock.done, 120_000, 'growth run');
    await subscription.unsubscribe();
  }
  const after = heapAfterGcMb();

  await mine.app.close();
  // Everything this bench made: ours' stream (with its group consumers) and its held stream, if any.
  await jsm.streams.delete(STREAM).catch(() => undefined);
  await jsm.streams.delete(`${STREAM}_held`).catch(() => undefined);
  await nc.close();

  const m = publish.medians;
  const c = consume.medians;
  const ratios: Ratio[] = [
    { name: 'nats-publish-vs-jetstream', value: m.ours / m[SAME_WORK], target: 0.9 },
    { name: 'nats-consume-vs-jetstream', value: c.ours / c[RAW_SAME_WORK], target: 0.9 },
    // Against a raw consumer that reads no metadata at all (the bare body).
    { name: 'nats-consume-vs-jetstream-bare', value: c.ours / c[RAW_CONSUME] },
    // What the CloudEvents headers cost a plain client: the ceiling of ours against a bare body.
    { name: 'nats-raw-publish-with-ours-metadata-vs-bare', value: m[SAME_WORK] / m['raw nats js.publish (bare body)'] },
  ];
  return { results: [publish, consume], ratios, growth: { messages: growthCount, heapBeforeMb: before, heapAfterMb: after, growthMb: after - before } };
}
