import { spawn } from 'node:child_process';
import { closeSync, constants, existsSync, openSync, readdirSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { Kafka, logLevel, Partitioners, type Admin, type IHeaders } from 'kafkajs';
import type { KafkaEnvConfig } from '../../lib';
import type { RawReader, RawRecord } from '../conformance/conformance-target';
import { whileLeadershipSettles } from '../../lib/adapters/kafka/kafka-topology';
import { startKafkaServer, type KafkaServer } from './kafka-server';

/**
 * The Kafka cluster the integration suites use: KAFKA_BROKERS (comma-separated host:port), which
 * test/support/global-setup.ts sets to librdkafka's mock cluster when it was not set.
 */
export const KAFKA_BROKERS: string[] = (process.env.KAFKA_BROKERS ?? '')
  .split(',')
  .map((broker) => broker.trim())
  .filter(Boolean);

/**
 * True on librdkafka's mock cluster. It differs from a real Kafka in ways tests may need to know:
 * no admin API (CreateTopics, DescribeGroups, ListGroups...), a first group join that takes 3 s, a
 * rebalance that takes about sessionTimeout - 1 s, a fetch that waits its full maxWaitTime when
 * there is nothing to return, and auto-created topics with 4 partitions.
 */
/**
 * kafkajs requires each protocol request's module when first used (an idempotent producer's
 * InitProducerId, say). Jest 30 refuses a require while it is between two tests, where a file's
 * concurrent tests (it.concurrent) may well be: every one is loaded here, once, up front.
 */
function preloadKafkaProtocol(): void {
  const requests = join(dirname(require.resolve('kafkajs/package.json')), 'src', 'protocol', 'requests');
  for (const api of readdirSync(requests, { withFileTypes: true })) {
    if (!api.isDirectory()) continue;
    for (const version of readdirSync(join(requests, api.name))) {
      if (!/^v\d+$/.test(version)) continue;
      for (const file of ['request.js', 'response.js']) {
        const path = join(requests, api.name, version, file);
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        if (existsSync(path)) require(path);
      }
    }
  }
}
preloadKafkaProtocol();

export function isKafkaMock(): boolean {
  return process.env.DUCTAPE_TEST_KAFKA_MOCK === '1';
}

/**
 * An env config for tests: short timeouts, so a broken test fails in seconds. On the mock the
 * group session is short too, since its rebalances last about that long (a real broker refuses a
 * session under its group.min.session.timeout.ms, 6 s by default).
 */
export function kafkaEnv(slug: string, config: Partial<KafkaEnvConfig['config']> = {}): KafkaEnvConfig {
  return {
    slug,
    type: 'kafka',
    config: {
      brokers: KAFKA_BROKERS,
      clientId: 'ductape-test',
      connectTimeoutMs: 5000,
      requestTimeoutMs: 10_000,
      ...(isKafkaMock() ? { sessionTimeoutMs: 2500, heartbeatIntervalMs: 300 } : { sessionTimeoutMs: 6000, heartbeatIntervalMs: 500 }),
      // The mock answers a fetch only when its wait is over, even when data arrives.
      fetchMaxWaitMs: 100,
      joinWaitMs: 5000,
      ...config,
    },
  };
}

/** A plain kafkajs client, as a foreign producer or an operator's script would use. */
export function rawKafka(clientId = 'ductape-test-raw'): Kafka {
  return new Kafka({ clientId, brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING, connectionTimeout: 5000, requestTimeout: 10_000 });
}

export async function withKafkaAdmin<T>(work: (admin: Admin) => Promise<T>): Promise<T> {
  const admin = rawKafka().admin();
  await admin.connect();
  try {
    return await work(admin);
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/** Produces one record with a plain kafkajs producer (acks all); resolves to its partition and offset. */
export async function rawProduce(
  topic: string,
  value: Buffer | string | null,
  headers?: IHeaders,
  options: { key?: Buffer | string; partition?: number; timestamp?: number } = {},
): Promise<{ partition: number; offset: string }> {
  const producer = rawKafka().producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: true });
  await producer.connect();
  try {
    const timestamp = options.timestamp === undefined ? undefined : String(options.timestamp);
    const [result] = await producer.send({ topic, acks: -1, messages: [{ value, headers, key: options.key, partition: options.partition, timestamp }] });
    return { partition: result.partition, offset: String(result.baseOffset ?? result.offset) };
  } finally {
    await producer.disconnect().catch(() => undefined);
  }
}

/**
 * Creates a topic with `partitions` partitions and waits until the metadata shows it. Tries the
 * admin API (a real Kafka); the mock has none, so there the command goes to the mock's control
 * FIFO; failing both, the topic is auto-created through a metadata request (4 partitions on the
 * mock, num.partitions on a real broker). Resolves to how it was made and its partition count.
 */
export async function createTopic(topic: string, partitions: number): Promise<{ via: 'admin' | 'mock-control' | 'auto-create'; partitions: number }> {
  return withKafkaAdmin(async (admin) => {
    let via: 'admin' | 'mock-control' | 'auto-create';
    try {
      await admin.createTopics({ topics: [{ topic, numPartitions: partitions }], waitForLeaders: true, timeout: 5000 });
      via = 'admin';
    } catch (error) {
      if (isKafkaMock() && process.env.DUCTAPE_TEST_KAFKA_MOCK_CONTROL) {
        kafkaMockControl(`topic ${topic} ${partitions}`);
        via = 'mock-control';
      } else {
        via = 'auto-create';
        void error;
      }
    }
    // listTopics asks for all topics, which auto-creates none (asking for this one would, on the mock).
    const deadline = Date.now() + 10_000;
    while (via === 'mock-control' && !(await admin.listTopics()).includes(topic)) {
      if (Date.now() > deadline) throw new Error(`topic ${topic} did not appear within 10 s of the mock's control command`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const metadata = await whileLeadershipSettles(() => admin.fetchTopicMetadata({ topics: [topic] })); // auto-creates when still missing
    return { via, partitions: metadata.topics[0].partitions.length };
  });
}

/** Latest offsets of each partition of a topic (ListOffsets). */
export function topicOffsets(topic: string): Promise<{ partition: number; offset: string; low: string; high: string }[]> {
  return withKafkaAdmin((admin) => whileLeadershipSettles(() => admin.fetchTopicOffsets(topic)));
}

/** The offsets a consumer group committed on a topic, by partition ('-1': none). */
export async function committedOffsets(groupId: string, topic: string): Promise<Record<number, string>> {
  const [result] = await withKafkaAdmin((admin) => whileLeadershipSettles(() => admin.fetchOffsets({ groupId, topics: [topic] })));
  return Object.fromEntries(result.partitions.map(({ partition, offset }) => [partition, offset]));
}

/**
 * Sends one command to the mock cluster (see test/kafka/mock-cluster.c): `topic NAME PARTITIONS`,
 * `down BROKER_ID` / `up BROKER_ID` (ids 1..3, -1: all), `rtt BROKER_ID MS`. Fire and forget: the
 * reply goes to the mock's stdout, so check the effect through the protocol.
 */
export function kafkaMockControl(command: string): void {
  const fifo = process.env.DUCTAPE_TEST_KAFKA_MOCK_CONTROL;
  if (!fifo) throw new Error('no Kafka mock control channel (KAFKA_BROKERS points at a real cluster, or mkfifo failed)');
  // O_NONBLOCK: fails with ENXIO instead of hanging when the mock is gone.
  const fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  try {
    writeSync(fd, `${command.replace(/\n/g, ' ')}\n`); // one write under PIPE_BUF: never interleaved
  } finally {
    closeSync(fd);
  }
}

/**
 * Why a test cannot have a mock cluster of its own (librdkafka-dev or gcc missing), or undefined
 * when it can. The mock's binary is built by the global setup whatever cluster the suites share.
 */
export function privateKafkaMockUnavailable(): string | undefined {
  if (process.env.DUCTAPE_TEST_KAFKA_MOCK_BINARY) return undefined;
  return process.env.DUCTAPE_TEST_UNAVAILABLE_KAFKA_MOCK || "librdkafka's mock cluster was not built";
}

/**
 * A real Kafka node of the test's own (test/support/kafka-server.ts), for a test that stops,
 * kills or restarts the broker: never the run's shared node, nor the user's cluster.
 */
export function startPrivateKafkaServer(): Promise<KafkaServer> {
  return startKafkaServer({ startTimeoutMs: 60_000 });
}

/**
 * A mock cluster of the test's own (3 brokers), from the binary the global setup built: for a test
 * that slows its brokers down, which the shared one must not be. `control` takes the commands of
 * kafkaMockControl; `stop` closes its stdin, which ends it.
 */
export async function startPrivateKafkaMock(): Promise<{ brokers: string[]; control: (command: string) => void; stop: () => Promise<void> }> {
  const binary = process.env.DUCTAPE_TEST_KAFKA_MOCK_BINARY;
  if (!binary) throw new Error(privateKafkaMockUnavailable() ?? 'no Kafka mock binary');
  const child = spawn(binary, ['3'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const bootstrap = await new Promise<string>((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error('the private Kafka mock printed no broker list within 10 s')), 10_000);
    child.stdout.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      const end = seen.indexOf('\n');
      if (end >= 0) {
        clearTimeout(timer);
        resolve(seen.slice(0, end).trim());
      }
    });
  });
  return {
    brokers: bootstrap.split(','),
    control: (command) => void child.stdin.write(`${command}\n`),
    stop: async () => {
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Kafka header values (Buffers, or arrays of them) as strings, the first of a repeated name. */
export function headerStrings(headers: IHeaders | undefined): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    const first = Array.isArray(value) ? value[0] : value;
    if (first !== undefined) result[name] = Buffer.isBuffer(first) ? first.toString('utf8') : String(first);
  }
  return result;
}

/**
 * Reads a topic as a plain kafkajs consumer would: a consumer group of its own, from the messages
 * published after it resolves (each partition's end offset is taken first, and what lies before
 * it passed over, so no reset-to-latest race can miss one). Its id is the `ce_id` header, where
 * the CloudEvents Kafka binding puts it. Resolves once the group has its partitions.
 */
export async function kafkaRawReader(topic: string): Promise<RawReader> {
  await createTopic(topic, 4);
  const ends = new Map((await topicOffsets(topic)).map(({ partition, high }) => [partition, BigInt(high)]));
  const groupId = `raw-reader-${randomUUID()}`;
  const consumer = rawKafka('ductape-test-raw-reader').consumer({ groupId, maxWaitTimeInMs: 100, sessionTimeout: 10_000, heartbeatInterval: 1000 });
  const records: RawRecord[] = [];
  const waiters: (() => void)[] = [];
  let joined: () => void = () => undefined;
  const joinedOnce = new Promise<void>((resolve) => (joined = resolve));
  consumer.on(consumer.events.GROUP_JOIN, () => joined());
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      if (BigInt(message.offset) < (ends.get(partition) ?? 0n)) return;
      const headers = headerStrings(message.headers);
      records.push({ body: message.value ?? Buffer.alloc(0), id: headers.ce_id, headers });
      for (const wake of waiters.splice(0)) wake();
    },
  });
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([joinedOnce, new Promise<void>((resolve) => (timer = setTimeout(resolve, 15_000)))]);
  clearTimeout(timer);
  return {
    async next(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (records.length === 0) {
        if (Date.now() >= deadline) throw new Error(`no record on ${topic} within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 50);
        });
      }
      return records.shift() as RawRecord;
    },
    async close() {
      await consumer.disconnect();
      // The mock cluster has no DeleteGroups (its groups end with it); a real Kafka deletes the reader's group.
      if (!isKafkaMock()) await withKafkaAdmin((admin) => admin.deleteGroups([groupId]));
    },
  };
}

/**
 * Records every topic this test file names to Kafka (the module under test and plain kafkajs
 * clients alike: producer sends, consumer subscriptions, createTopics, topic metadata requests,
 * any of which may create one) and every consumer group it joins, at kafkajs's Kafka.prototype,
 * and deletes exactly those in an afterAll of the file, through the admin API. On librdkafka's
 * mock cluster there is nothing to delete: the run started it, and it ends with the run (it has
 * no admin API either). Call it at the top of the file, outside any describe, so it runs after
 * the suites' own afterAll hooks.
 */
export function deleteCreatedKafkaResourcesAfterAll(): { topics: ReadonlySet<string>; groups: ReadonlySet<string> } {
  const topics = new Set<string>();
  const groups = new Set<string>();
  const proto = Kafka.prototype as unknown as Record<'producer' | 'consumer' | 'admin', (this: Kafka, ...args: unknown[]) => Record<string, unknown>>;
  const original = { producer: proto.producer, consumer: proto.consumer, admin: proto.admin };
  type Method = (...args: unknown[]) => unknown;
  /** Wraps `client[name]` so that each call first records the topics `names(arg)` gives. */
  const recording = (client: Record<string, unknown>, name: string, names: (arg: Record<string, unknown>) => unknown[]) => {
    const method = client[name] as Method | undefined;
    if (typeof method !== 'function') return;
    client[name] = (...args: unknown[]) => {
      const arg = (args[0] ?? {}) as Record<string, unknown>;
      for (const topic of names(arg)) if (typeof topic === 'string') topics.add(topic);
      return method.apply(client, args);
    };
  };
  const list = (value: unknown): unknown[] => (Array.isArray(value) ? value : value === undefined ? [] : [value]);
  proto.producer = function (...args) {
    const producer = original.producer.apply(this, args);
    recording(producer, 'send', (arg) => [arg.topic]);
    recording(producer, 'sendBatch', (arg) => list(arg.topicMessages).map((entry) => (entry as { topic?: unknown }).topic));
    return producer;
  };
  proto.consumer = function (...args) {
    const { groupId } = (args[0] ?? {}) as { groupId?: unknown };
    if (typeof groupId === 'string') groups.add(groupId);
    const consumer = original.consumer.apply(this, args);
    // A RegExp subscription names no topic; the topics it matches were named elsewhere.
    recording(consumer, 'subscribe', (arg) => [...list(arg.topic), ...list(arg.topics)]);
    return consumer;
  };
  proto.admin = function (...args) {
    const admin = original.admin.apply(this, args);
    recording(admin, 'createTopics', (arg) => list(arg.topics).map((entry) => (entry as { topic?: unknown }).topic));
    recording(admin, 'fetchTopicMetadata', (arg) => list(arg.topics));
    return admin;
  };
  afterAll(async () => {
    Object.assign(proto, original);
    if (topics.size === 0 && groups.size === 0) return;
    if (isKafkaMock()) return; // the run's own cluster: it ends with the run
    await withKafkaAdmin(async (admin) => {
      const failures: string[] = [];
      // Members have left (the suites closed their applications): the groups can go.
      if (groups.size > 0) {
        await admin.deleteGroups([...groups]).catch((error: Error & { groups?: { groupId: string; error?: { type?: string } }[] }) => {
          for (const result of error.groups ?? []) {
            if (result.error && result.error.type !== 'GROUP_ID_NOT_FOUND') failures.push(`group ${result.groupId}: ${result.error.type}`);
          }
          if (!error.groups) failures.push(`groups: ${error.message}`);
        });
      }
      const existing = new Set(await admin.listTopics());
      const ours = [...topics].filter((topic) => existing.has(topic));
      if (ours.length > 0) await admin.deleteTopics({ topics: ours, timeout: 10_000 }).catch((error: Error) => void failures.push(`topics: ${error.message}`));
      if (failures.length > 0) throw new Error(`could not delete what the test created:\n${failures.join('\n')}`);
    });
    topics.clear();
    groups.clear();
  });
  return { topics, groups };
}
