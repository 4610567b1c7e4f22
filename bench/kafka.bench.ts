import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { ClientKafka } from '@nestjs/microservices';
import { Partitioners, type Producer } from 'kafkajs';
import { lastValueFrom } from 'rxjs';
import { KAFKA_BROKERS, kafkaEnv, rawKafka } from '../test/support/kafka';
import type { MessageBrokerService, Subscription } from '../lib';
import { alternate, benchApp, consumeClock, MESSAGE, perSecond, within, type Ratio, type ScenarioResult } from './harness';
import type { BenchOptions } from './memory.bench';

const OURS_RECORDS = 'kafkajs, hand-made batches of 1000 of ours’ records (bare JSON, ce_ headers)';
const SAME_RECORDS = 'kafkajs idempotent, hand-made batches of 1000 of ours’ records (the same work)';
const OURS_PLAIN = 'ours with idempotent: false';

/**
 * Kafka publish: N single-message publishes made at once, each resolved on the brokers' ack
 * (acks = all on every side), against the same topic. Runs on whatever KAFKA_BROKERS names: the
 * test suite's librdkafka mock cluster unless set.
 */
export async function benchKafka(options: BenchOptions): Promise<{ results: ScenarioResult[]; ratios: Ratio[] }> {
  const count = options.quick ? 10_000 : 50_000;
  const tag = `bench-${randomUUID().slice(0, 8)}`;
  const { app, broker } = await benchApp('kf', kafkaEnv('prd'));
  // For information: ours without the idempotent producer (its default), to show what idempotence costs.
  const plain = await benchApp('kf', kafkaEnv('prd', { idempotent: false }));
  const event = `kf:${tag}`;
  const ourTopic = `bench.prd.${tag}`;
  const rawTopic = `${ourTopic}.raw`;
  const value = JSON.stringify(MESSAGE);

  const producer: Producer = rawKafka('bench-raw').producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: true });
  await producer.connect();
  // The same work as ours: acks all, idempotent (kafkajs then sends one request per broker at a time).
  const idempotentProducer: Producer = rawKafka('bench-raw-idempotent').producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: true, idempotent: true });
  await idempotentProducer.connect();
  const nest = new ClientKafka({ client: { clientId: 'bench-nest', brokers: KAFKA_BROKERS }, producer: { createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: true }, producerOnlyMode: true });
  await nest.connect();
  // Topics exist before timing: one message each.
  await broker.publish({ env: 'prd', event, product_tag: 'bench', input: { message: MESSAGE } });
  await plain.broker.publish({ env: 'prd', event, product_tag: 'bench', input: { message: MESSAGE } });
  await producer.send({ topic: rawTopic, acks: -1, messages: [{ value }] });
  await idempotentProducer.send({ topic: rawTopic, acks: -1, messages: [{ value }] });

  /** Hand-made batches of 1000 of what ours writes per record (kafka-headers.ts): the message's JSON, the CloudEvents attributes as ce_ headers, content-type, publishedAt as the record timestamp. */
  const sendOursRecords = async (sender: Producer): Promise<number> => {
    const start = process.hrtime.bigint();
    const batches: Promise<unknown>[] = [];
    for (let sent = 0; sent < count; sent += 1000) {
      const messages = Array.from({ length: Math.min(1000, count - sent) }, () => {
        const publishedAt = Date.now();
        return {
          key: null,
          value: JSON.stringify(MESSAGE),
          timestamp: String(publishedAt),
          headers: {
            ce_specversion: '1.0',
            ce_id: randomUUID(),
            ce_source: '/bench/prd/bench',
            ce_type: event,
            ce_time: new Date(publishedAt).toISOString(),
            'content-type': 'application/json',
          },
        };
      });
      batches.push(sender.send({ topic: rawTopic, acks: -1, messages }));
    }
    await Promise.all(batches);
    return perSecond(count, start);
  };

  const publish = await alternate(`kafka publish: ${count} single-message publishes at once`, 'msg/s', options.rounds, [
    {
      name: 'ours (batched automatically)',
      run: async () => {
        const start = process.hrtime.bigint();
        await Promise.all(Array.from({ length: count }, () => broker.publish({ env: 'prd', event, product_tag: 'bench', input: { message: MESSAGE } })));
        return perSecond(count, start);
      },
    },
    {
      name: 'kafkajs, one send per message',
      run: async () => {
        const start = process.hrtime.bigint();
        await Promise.all(Array.from({ length: count }, () => producer.send({ topic: rawTopic, acks: -1, messages: [{ value }] })));
        return perSecond(count, start);
      },
    },
    {
      name: 'kafkajs, hand-made batches of 1000',
      run: async () => {
        const start = process.hrtime.bigint();
        const batches: Promise<unknown>[] = [];
        for (let sent = 0; sent < count; sent += 1000) {
          batches.push(producer.send({ topic: rawTopic, acks: -1, messages: Array.from({ length: Math.min(1000, count - sent) }, () => ({ value })) }));
        }
        await Promise.all(batches);
        return perSecond(count, start);
      },
    },
    {
      name: OURS_PLAIN,
      run: async () => {
        const start = process.hrtime.bigint();
        await Promise.all(Array.from({ length: count }, () => plain.broker.publish({ env: 'prd', event, product_tag: 'bench', input: { message: MESSAGE } })));
        return perSecond(count, start);
      },
    },
    { name: OURS_RECORDS, run: () => sendOursRecords(producer) },
    { name: SAME_RECORDS, run: () => sendOursRecords(idempotentProducer) },
    {
      name: '@nestjs/microservices ClientKafka.emit',
      run: async () => {
        const start = process.hrtime.bigint();
        await Promise.all(Array.from({ length: count }, () => lastValueFrom(nest.emit(rawTopic, MESSAGE), { defaultValue: undefined })));
        return perSecond(count, start);
      },
    },
  ]);
  await plain.app.close();
  await producer.disconnect();
  await idempotentProducer.disconnect();
  await nest.close();
  const consume = await benchConsume(broker, options);
  await app.close();
  const m = publish.medians;
  const ours = m['ours (batched automatically)'];
  const c = consume.medians;
  return {
    results: [publish, consume],
    ratios: [
      { name: 'kafka-publish-vs-kafkajs-send-per-message', value: ours / m['kafkajs, one send per message'], target: 5 },
      { name: 'kafka-publish-vs-nest-clientkafka-emit', value: ours / m['@nestjs/microservices ClientKafka.emit'], target: 5 },
      { name: 'kafka-publish-vs-kafkajs-same-records', value: ours / m[SAME_RECORDS], target: 0.9 },
      { name: 'kafka-publish-vs-kafkajs-batches-of-1000', value: ours / m['kafkajs, hand-made batches of 1000'] },
      { name: 'kafka-publish-vs-kafkajs-batches-of-ours-records-not-idempotent', value: ours / m[OURS_RECORDS] },
      { name: 'kafka-publish-idempotent-vs-not', value: ours / m[OURS_PLAIN] },
      { name: 'kafka-consume-vs-kafkajs', value: c[CONSUME_OURS] / c[CONSUME_RAW], target: 0.9 },
      { name: 'kafka-consume-vs-kafkajs-eachbatch-same-commits', value: c[CONSUME_OURS] / c[CONSUME_BATCH] },
    ],
  };
}

const CONSUME_OURS = 'ours (concurrency 6, commit after the handler)';
const CONSUME_RAW = 'kafkajs eachMessage (6 partitions at once, commit after each message)';
const CONSUME_BATCH = 'kafkajs eachBatch (6 partitions at once, commit after each batch’s handlers, as ours)';
const CONSUME_PARTITIONS = 6;

/**
 * Kafka consume: a group reads a backlog of N of ours' records (6 partitions), parsing each and
 * committing after its handler; timed from the first message handled to the last, so joining the
 * group is left out. kafkajs reads the same kind of backlog on a topic of its own, with eachMessage
 * at the same partition concurrency, committing each message's offset as it is handled.
 */
async function benchConsume(broker: MessageBrokerService, options: BenchOptions): Promise<ScenarioResult> {
  const count = options.quick ? 4000 : 20_000;
  const tag = `bench-consume-${randomUUID().slice(0, 8)}`;
  const rawTag = `${tag}-raw`;
  const publishBacklog = async (topicTag: string) => {
    for (let sent = 0; sent < count; sent += 1000) {
      await Promise.all(Array.from({ length: Math.min(1000, count - sent) }, () => broker.publish({ env: 'prd', event: `kf:${topicTag}`, product_tag: 'bench', input: { message: MESSAGE } })));
    }
  };
  // Both groups exist before the first backlog (a group gets what is published after it first subscribed).
  const warmUp = await broker.subscribe({ env: 'prd', event: `kf:${tag}`, product_tag: 'bench', input: { group: 'consume', concurrency: CONSUME_PARTITIONS, callback: () => undefined } });
  await warmUp.unsubscribe();
  const rawTopic = `bench.prd.${rawTag}`;
  await broker.publish({ env: 'prd', event: `kf:${rawTag}`, product_tag: 'bench', input: { message: MESSAGE } });
  const rawGroup = `${rawTopic}:raw`;
  const runRaw = async (expected: number, perBatch = false): Promise<number> => {
    const clock = consumeClock(expected);
    const consumer = rawKafka('bench-raw-consumer').consumer({ groupId: rawGroup, maxWaitTimeInMs: 100 });
    await consumer.connect();
    await consumer.subscribe({ topics: [rawTopic], fromBeginning: true });
    await consumer.run(
      perBatch
        ? {
            autoCommit: false,
            eachBatchAutoResolve: false,
            partitionsConsumedConcurrently: CONSUME_PARTITIONS,
            eachBatch: async (payload) => {
              for (const message of payload.batch.messages) {
                if (!payload.isRunning() || payload.isStale()) break;
                JSON.parse(String(message.value));
                payload.resolveOffset(message.offset);
                clock.handled();
              }
              await payload.commitOffsetsIfNecessary();
            },
          }
        : {
            autoCommit: false,
            partitionsConsumedConcurrently: CONSUME_PARTITIONS,
            eachMessage: async ({ topic, partition, message }) => {
              JSON.parse(String(message.value));
              await consumer.commitOffsets([{ topic, partition, offset: (BigInt(message.offset) + 1n).toString() }]);
              clock.handled();
            },
          },
    );
    await within(clock.done, 120_000, 'kafkajs consume');
    await consumer.disconnect();
    return clock.rate();
  };
  await runRaw(1);

  return alternate(`kafka consume: a backlog of ${count} records, ${CONSUME_PARTITIONS} partitions`, 'msg/s', options.rounds, [
    {
      name: CONSUME_OURS,
      run: async () => {
        await publishBacklog(tag);
        const clock = consumeClock(count);
        const subscription: Subscription = await broker.subscribe({
          env: 'prd',
          event: `kf:${tag}`,
          product_tag: 'bench',
          input: { group: 'consume', concurrency: CONSUME_PARTITIONS, callback: () => clock.handled() },
        });
        await within(clock.done, 120_000, 'ours consume');
        await subscription.unsubscribe();
        return clock.rate();
      },
    },
    {
      name: CONSUME_RAW,
      run: async () => {
        await publishBacklog(rawTag);
        return runRaw(count);
      },
    },
    {
      name: CONSUME_BATCH,
      run: async () => {
        await publishBacklog(rawTag);
        return runRaw(count, true);
      },
    },
  ]);
}
