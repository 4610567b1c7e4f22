import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Controller, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ClientRMQ, Ctx, EventPattern, Payload, RmqContext, Transport, type MicroserviceOptions } from '@nestjs/microservices';
import { AmqpConnection } from '@golevelup/nestjs-rabbitmq';
import { connect, type Channel, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { lastValueFrom } from 'rxjs';
import type { Subscription } from '../lib';
import {
  benchApp,
  consumeClock,
  heapAfterGcMb,
  inWindows,
  MESSAGE,
  percentile,
  perSecond,
  sleep,
  warmedUp,
  within,
  type Ratio,
  type ScenarioResult,
} from './harness';
import type { BenchOptions } from './memory.bench';

const URL = process.env.RABBITMQ_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const BATCH = 1000;
const PREFETCH = 100;
const TOPIC = 'bench.prd.orders';
const GROUP = 'bench';
const OUR_QUEUE = `${TOPIC}:${GROUP}`;
const QUEUES = { raw: 'bench.raw', nest: 'bench.nest', golevelup: 'bench.golevelup', sameWork: 'bench.same-work' };
const GOLEVELUP_EXCHANGE = 'bench.golevelup';
const SAME_WORK_EXCHANGE = 'bench.same-work';

async function ours() {
  const { app, broker } = await benchApp('rmq', { slug: 'prd', type: 'rabbitmq', config: { url: URL } }, GROUP);
  // The group's queue must exist for publishes to be routed: subscribe once, then leave it.
  await (await broker.subscribe({ env: 'prd', event: 'rmq:orders', product_tag: 'bench', input: { callback: () => undefined } })).unsubscribe();
  const publish = (message: unknown) => broker.publish({ env: 'prd', event: 'rmq:orders', product_tag: 'bench', input: { message } });
  return { app, broker, publish };
}

/**
 * `alternate` after one untimed run of every contender: the first contender of the first round
 * otherwise runs with cold JIT code and undeclared topology (ours is first, and its first round
 * came out 25-35 % below its others in three runs of 2026-12-04).
 */
@Controller()
class NestOrdersController {
  static onOrder: () => void = () => undefined;

  @EventPattern('orders')
  handle(@Payload() _order: unknown, @Ctx() context: RmqContext): void {
    // noAck: false, so the handler acks, as it must for at-least-once.
    (context.getChannelRef() as Channel).ack(context.getMessage() as Parameters<Channel['ack']>[0]);
    NestOrdersController.onOrder();
  }
}

@Module({ controllers: [NestOrdersController] })
class NestOrdersModule {}

export async function benchRabbitMq(options: BenchOptions): Promise<{ results: ScenarioResult[]; ratios: Ratio[]; growth: Record<string, number> }> {
  const publishCount = options.quick ? 4000 : 20_000;
  const consumeCount = options.quick ? 4000 : 20_000;
  const latencySeconds = options.quick ? 1.5 : 5;

  const connection: ChannelModel = await connect(URL);
  const admin = await connection.createChannel();
  for (const queue of Object.values(QUEUES)) {
    await admin.assertQueue(queue, { durable: true });
    await admin.purgeQueue(queue);
  }
  await admin.assertExchange(GOLEVELUP_EXCHANGE, 'fanout', { durable: true });
  await admin.assertExchange(SAME_WORK_EXCHANGE, 'fanout', { durable: true });
  await admin.bindQueue(QUEUES.sameWork, SAME_WORK_EXCHANGE, '');
  await admin.bindQueue(QUEUES.golevelup, GOLEVELUP_EXCHANGE, '');
  const confirm: ConfirmChannel = await connection.createConfirmChannel();

  const mine = await ours();
  await admin.purgeQueue(OUR_QUEUE);
  const nestClient = new ClientRMQ({ urls: [URL], queue: QUEUES.nest, queueOptions: { durable: true }, persistent: true });
  await nestClient.connect();
  const golevelup = new AmqpConnection({ uri: URL, connectionInitOptions: { wait: true }, prefetchCount: PREFETCH });
  await golevelup.init();
  const purgeAll = async () => {
    for (const queue of [...Object.values(QUEUES), OUR_QUEUE]) await admin.purgeQueue(queue);
  };
  const body = Buffer.from(JSON.stringify(MESSAGE));
  /**
   * What ours puts on the wire for the same message (lib/adapters/rabbitmq/rabbitmq-headers.ts):
   * the message's JSON, the AMQP properties, and the cloudEvents: headers of a first attempt with
   * no correlation id, key or user headers. Not mandatory: ours sends one publish per topic per
   * minute mandatory (the no-group probe), none of these.
   */
  const sameWorkOptions = () => {
    const id = randomUUID();
    const now = Date.now();
    return {
      persistent: true,
      mandatory: false,
      contentType: 'application/json',
      messageId: id,
      timestamp: Math.floor(now / 1000),
      headers: {
        'cloudEvents:specversion': '1.0',
        'cloudEvents:id': id,
        'cloudEvents:source': '/bench/prd/bench',
        'cloudEvents:type': 'rmq:orders',
        'cloudEvents:time': new Date(now).toISOString(),
      },
    };
  };
  const SAME_WORK = 'raw amqplib sending ours’ message (same bytes, properties, headers; batches of 1000)';

  /** Writes `count` messages on the raw confirm channel, 1000 at a time, each thousand confirmed before the next. */
  const confirmInBatches = async (count: number, sendOne: () => void) => {
    for (let sent = 0; sent < count; sent += BATCH) {
      for (let i = 0; i < BATCH && sent + i < count; i++) sendOne();
      await confirm.waitForConfirms();
    }
  };
  /** One publish round: its rate, then every queue emptied for the next contender. */
  const publishRound = async (work: () => Promise<void>) => {
    const start = process.hrtime.bigint();
    await work();
    const rate = perSecond(publishCount, start);
    await purgeAll();
    return rate;
  };

  // Publish, resolved on the broker's confirm, persistent messages on every side.
  const publish = await warmedUp('rabbitmq publish (confirmed, persistent)', 'msg/s', options.rounds, [
    {
      name: 'ours',
      run: () => publishRound(() => inWindows(publishCount, BATCH, () => mine.publish(MESSAGE))),
    },
    {
      name: 'raw amqplib ConfirmChannel (batches of 1000)',
      run: () => publishRound(() => confirmInBatches(publishCount, () => confirm.sendToQueue(QUEUES.raw, body, { persistent: true, contentType: 'application/json' }))),
    },
    {
      // JSON.stringify per message, as ours encodes each one.
      name: SAME_WORK,
      run: () => publishRound(() => confirmInBatches(publishCount, () => confirm.publish(SAME_WORK_EXCHANGE, '', Buffer.from(JSON.stringify(MESSAGE)), sameWorkOptions()))),
    },
    {
      name: '@nestjs/microservices ClientRMQ.emit',
      run: () => publishRound(() => inWindows(publishCount, BATCH, () => lastValueFrom(nestClient.emit('orders', MESSAGE), { defaultValue: undefined }))),
    },
    {
      name: '@golevelup/nestjs-rabbitmq publish',
      run: () => publishRound(() => inWindows(publishCount, BATCH, () => golevelup.publish(GOLEVELUP_EXCHANGE, '', MESSAGE, { persistent: true }))),
    },
  ]);

  // Consume at prefetch 100, ack after the handler: each queue filled first (not timed).
  const fill = (queue: string, content: Buffer) => confirmInBatches(consumeCount, () => confirm.sendToQueue(queue, content, { persistent: true }));
  /** A raw amqplib consumer at prefetch 100 that parses and acks `consumeCount` messages of `queue`. */
  const rawConsume = async (queue: string): Promise<number> => {
    const channel = await connection.createChannel();
    await channel.prefetch(PREFETCH);
    const clock = consumeClock(consumeCount);
    await channel.consume(queue, (message) => {
      if (!message) return;
      JSON.parse(message.content.toString());
      channel.ack(message);
      clock.handled();
    });
    await within(clock.done, 60_000, `raw consume of ${queue}`);
    await channel.close();
    return clock.rate();
  };
  const consume = await warmedUp('rabbitmq consume (prefetch 100, ack after handler)', 'msg/s', options.rounds, [
    {
      name: 'ours',
      run: async () => {
        await inWindows(consumeCount, BATCH, () => mine.publish(MESSAGE));
        const clock = consumeClock(consumeCount);
        const subscription: Subscription = await mine.broker.subscribe({
          env: 'prd',
          event: 'rmq:orders',
          product_tag: 'bench',
          input: { concurrency: PREFETCH, callback: () => clock.handled() },
        });
        await within(clock.done, 60_000, 'ours consume');
        await subscription.unsubscribe();
        return clock.rate();
      },
    },
    {
      name: 'raw amqplib (prefetch 100)',
      run: async () => {
        await fill(QUEUES.raw, body);
        return rawConsume(QUEUES.raw);
      },
    },
    {
      name: 'raw amqplib on ours’ messages (prefetch 100)',
      run: async () => {
        await inWindows(consumeCount, BATCH, () => mine.publish(MESSAGE));
        return rawConsume(OUR_QUEUE);
      },
    },
    {
      name: '@golevelup/nestjs-rabbitmq subscriber (@RabbitSubscribe)',
      run: async () => {
        await fill(QUEUES.golevelup, body);
        const clock = consumeClock(consumeCount);
        // What @RabbitSubscribe registers at bootstrap, made here so each round can start and stop it.
        const { consumerTag } = await golevelup.createSubscriber(
          () => {
            clock.handled();
            return Promise.resolve();
          },
          { queue: QUEUES.golevelup, createQueueIfNotExists: false },
          'benchHandler',
        );
        await within(clock.done, 60_000, 'golevelup consume');
        await golevelup.cancelConsumer(consumerTag);
        return clock.rate();
      },
    },
    {
      name: '@nestjs/microservices @EventPattern (RMQ)',
      run: async () => {
        await fill(QUEUES.nest, Buffer.from(JSON.stringify({ pattern: 'orders', data: MESSAGE })));
        const clock = consumeClock(consumeCount);
        NestOrdersController.onOrder = clock.handled;
        const server = await NestFactory.createMicroservice<MicroserviceOptions>(NestOrdersModule, {
          transport: Transport.RMQ,
          options: { urls: [URL], queue: QUEUES.nest, queueOptions: { durable: true }, prefetchCount: PREFETCH, noAck: false },
          logger: false,
        });
        await server.listen();
        await within(clock.done, 60_000, 'nest consume');
        await server.close();
        return clock.rate();
      },
    },
  ]);

  // End-to-end latency at a steady 2,000 msg/s: publish call to handler, same process.
  const steady = async (send: (sentAt: number) => Promise<unknown>, received: number[]) => {
    const total = latencySeconds * 2000;
    let sent = 0;
    const started = performance.now();
    const pending: Promise<unknown>[] = [];
    while (sent < total) {
      // 10 messages every 5 ms, each on time.
      const due = started + (sent / 2000) * 1000;
      const wait = due - performance.now();
      if (wait > 1) await sleep(wait);
      for (let i = 0; i < 10; i++, sent++) pending.push(send(performance.now()));
    }
    await Promise.all(pending);
    await within(
      (async () => {
        while (received.length < total) await sleep(5);
      })(),
      30_000,
      'latency run',
    );
  };
  const latencies: Record<string, { p50: number[]; p99: number[] }> = { ours: { p50: [], p99: [] }, raw: { p50: [], p99: [] } };
  const oursLatencyRound = async () => {
    const received: number[] = [];
    const subscription = await mine.broker.subscribe({
      env: 'prd',
      event: 'rmq:orders',
      product_tag: 'bench',
      input: { concurrency: PREFETCH, callback: (message) => void received.push(performance.now() - (message as { sentAt: number }).sentAt) },
    });
    await steady((sentAt) => mine.publish({ ...MESSAGE, sentAt }), received);
    await subscription.unsubscribe();
    latencies.ours.p50.push(percentile(received, 50));
    latencies.ours.p99.push(percentile(received, 99));
  };
  const rawLatencyRound = async () => {
    const received: number[] = [];
    // Consumer and publisher on connections of their own, as ours has.
    const consuming = await connect(URL);
    const channel = await consuming.createChannel();
    await channel.prefetch(PREFETCH);
    await channel.consume(QUEUES.raw, (message) => {
      if (!message) return;
      const { sentAt } = JSON.parse(message.content.toString()) as { sentAt: number };
      received.push(performance.now() - sentAt);
      channel.ack(message);
    });
    const rawConfirm = await connection.createConfirmChannel();
    await steady(
      (sentAt) =>
        new Promise<void>((resolve, reject) =>
          rawConfirm.sendToQueue(QUEUES.raw, Buffer.from(JSON.stringify({ ...MESSAGE, sentAt })), { persistent: true }, (error) => (error ? reject(error as Error) : resolve())),
        ),
      received,
    );
    await channel.close();
    await consuming.close();
    await rawConfirm.close();
    latencies.raw.p50.push(percentile(received, 50));
    latencies.raw.p99.push(percentile(received, 99));
  };
  // Ours first in even rounds, raw first in odd ones, as `alternate` rotates the other scenarios.
  // At least 5 rounds even with --quick: the p99 ratio is the median of each round's p99.
  const latencyRounds = Math.max(5, options.rounds);
  for (let round = 0; round < latencyRounds; round++) {
    for (const run of round % 2 === 0 ? [oursLatencyRound, rawLatencyRound] : [rawLatencyRound, oursLatencyRound]) await run();
  }
  const latency: ScenarioResult = {
    scenario: `rabbitmq end-to-end latency at 2,000 msg/s (${latencyRounds} rounds)`,
    unit: 'ms',
    samples: { 'ours p50': latencies.ours.p50, 'ours p99': latencies.ours.p99, 'raw amqplib p50': latencies.raw.p50, 'raw amqplib p99': latencies.raw.p99 },
    medians: {},
  };
  for (const [name, values] of Object.entries(latency.samples)) latency.medians[name] = [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

  // Growth: 100,000 messages through ours (20,000 with --quick), published and consumed.
  const growthCount = options.quick ? 10_000 : 100_000;
  const before = heapAfterGcMb();
  {
    const clock = consumeClock(growthCount);
    const subscription = await mine.broker.subscribe({ env: 'prd', event: 'rmq:orders', product_tag: 'bench', input: { concurrency: PREFETCH, callback: () => clock.handled() } });
    await inWindows(growthCount, BATCH, () => mine.publish(MESSAGE));
    await within(clock.done, 120_000, 'growth run');
    await subscription.unsubscribe();
  }
  const after = heapAfterGcMb();

  await mine.app.close();
  await nestClient.close();
  await golevelup.managedConnection.close();
  await purgeAll();
  await connection.close();

  const m = publish.medians;
  const c = consume.medians;
  const l = latency.medians;
  const ratios: Ratio[] = [
    { name: 'rabbitmq-publish-vs-raw-confirm-batches', value: m.ours / m['raw amqplib ConfirmChannel (batches of 1000)'], target: 0.8 },
    { name: 'rabbitmq-publish-vs-raw-same-work', value: m.ours / m[SAME_WORK], target: 0.9 },
    { name: 'rabbitmq-publish-vs-nest-clientrmq-emit', value: m.ours / m['@nestjs/microservices ClientRMQ.emit'], target: 1.3 },
    { name: 'rabbitmq-publish-vs-golevelup', value: m.ours / m['@golevelup/nestjs-rabbitmq publish'], target: 1.1 },
    // What the CloudEvents metadata (a header table and properties on every message) costs a plain
    // client: the ceiling of ours against contenders that send and read bare bodies.
    { name: 'rabbitmq-raw-publish-with-ours-metadata-vs-bare', value: m[SAME_WORK] / m['raw amqplib ConfirmChannel (batches of 1000)'] },
    { name: 'rabbitmq-raw-consume-of-ours-messages-vs-bare', value: c['raw amqplib on ours’ messages (prefetch 100)'] / c['raw amqplib (prefetch 100)'] },
    { name: 'rabbitmq-consume-vs-raw', value: c.ours / c['raw amqplib (prefetch 100)'], target: 0.95 },
    { name: 'rabbitmq-consume-vs-raw-on-ours-messages', value: c.ours / c['raw amqplib on ours’ messages (prefetch 100)'] },
    { name: 'rabbitmq-consume-vs-golevelup', value: c.ours / c['@golevelup/nestjs-rabbitmq subscriber (@RabbitSubscribe)'], target: 1.1 },
    { name: 'rabbitmq-consume-vs-nest-eventpattern', value: c.ours / c['@nestjs/microservices @EventPattern (RMQ)'], target: 1.1 },
    { name: 'rabbitmq-latency-p50-vs-raw', value: l['ours p50'] / l['raw amqplib p50'], target: 1.3, lowerIsBetter: true },
    { name: 'rabbitmq-latency-p99-vs-raw', value: l['ours p99'] / l['raw amqplib p99'], target: 1.3, lowerIsBetter: true },
  ];
  return { results: [publish, consume, latency], ratios, growth: { messages: growthCount, heapBeforeMb: before, heapAfterMb: after, growthMb: after - before } };
}
