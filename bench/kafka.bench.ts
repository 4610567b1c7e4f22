import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { ClientKafka } from '@nestjs/microservices';
import { Partitioners, type Producer } from 'kafkajs';
import { lastValueFrom } from 'rxjs';
import { KAFKA_BROKERS, kafkaEnv, rawKafka } from '../test/support/kafka';
import { alternate, benchApp, MESSAGE, perSecond, type Ratio, type ScenarioResult } from './harness';
import type { BenchOptions } from './memory.bench';

const OURS_RECORDS = 'kafkajs, hand-made batches of 1000 of ours’ records (bare JSON, ce_ headers)';

/**
 * Kafka publish: N single-message publishes made at once, each resolved on the brokers' ack
 * (acks = all on every side), against the same topic. Runs on whatever KAFKA_BROKERS names: the
 * test suite's librdkafka mock cluster unless set.
 */
export async function benchKafka(options: BenchOptions): Promise<{ results: ScenarioResult[]; ratios: Ratio[] }> {
  const count = options.quick ? 10_000 : 50_000;
  const tag = `bench-${randomUUID().slice(0, 8)}`;
  const { app, broker } = await benchApp('kf', kafkaEnv('prd'));
  const event = `kf:${tag}`;
  const ourTopic = `bench.prd.${tag}`;
  const rawTopic = `${ourTopic}.raw`;
  const value = JSON.stringify(MESSAGE);

  const producer: Producer = rawKafka('bench-raw').producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: true });
  await producer.connect();
  const nest = new ClientKafka({ client: { clientId: 'bench-nest', brokers: KAFKA_BROKERS }, producer: { createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: true }, producerOnlyMode: true });
  await nest.connect();
  // Topics exist before timing: one message each.
  await broker.publish({ env: 'prd', event, product_tag: 'bench', input: { message: MESSAGE } });
  await producer.send({ topic: rawTopic, acks: -1, messages: [{ value }] });

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
      name: OURS_RECORDS,
      run: async () => {
        const start = process.hrtime.bigint();
        const batches: Promise<unknown>[] = [];
        for (let sent = 0; sent < count; sent += 1000) {
          // What ours writes per record (kafka-headers.ts): the message's JSON, the CloudEvents
          // attributes as ce_ headers, content-type, publishedAt as the record timestamp.
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
          batches.push(producer.send({ topic: rawTopic, acks: -1, messages }));
        }
        await Promise.all(batches);
        return perSecond(count, start);
      },
    },
    {
      name: '@nestjs/microservices ClientKafka.emit',
      run: async () => {
        const start = process.hrtime.bigint();
        await Promise.all(Array.from({ length: count }, () => lastValueFrom(nest.emit(rawTopic, MESSAGE), { defaultValue: undefined })));
        return perSecond(count, start);
      },
    },
  ]);
  await app.close();
  await producer.disconnect();
  await nest.close();
  const m = publish.medians;
  const ours = m['ours (batched automatically)'];
  return {
    results: [publish],
    ratios: [
      { name: 'kafka-publish-vs-kafkajs-send-per-message', value: ours / m['kafkajs, one send per message'], target: 5 },
      { name: 'kafka-publish-vs-kafkajs-batches-of-1000', value: ours / m['kafkajs, hand-made batches of 1000'], target: 0.8 },
      { name: 'kafka-publish-vs-kafkajs-batches-of-ours-records', value: ours / m[OURS_RECORDS] },
      { name: 'kafka-publish-vs-nest-clientkafka-emit', value: ours / m['@nestjs/microservices ClientKafka.emit'], target: 5 },
    ],
  };
}
