import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { dirname, join } from 'node:path';
import { connect, type Channel, type ChannelModel, type Message, type Options } from 'amqplib';
import type { RabbitMqEnvConfig } from '../../lib';

/** The RabbitMQ the integration suites use; RABBITMQ_URL points them elsewhere. */
export const RABBITMQ_URL = process.env.RABBITMQ_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

/** An env config for tests: short timeouts, so a broken test fails in seconds. */
export function rabbitEnv(slug: string, config: Partial<RabbitMqEnvConfig['config']> = {}): RabbitMqEnvConfig {
  return { slug, type: 'rabbitmq', config: { url: RABBITMQ_URL, connectTimeoutMs: 5000, reconnectDelayMs: 200, ...config } };
}

/** Runs rabbitmqctl on this machine (the server-side tools the resilience tests need). */
export function rabbitmqctl(...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('rabbitmqctl', args, { timeout: 60_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`rabbitmqctl ${args.join(' ')} failed: ${error.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** A plain amqplib connection, as a foreign client or an operator's script would use. */
export async function withRawConnection<T>(work: (connection: ChannelModel) => Promise<T>): Promise<T> {
  const connection = await connect(RABBITMQ_URL);
  connection.on('error', () => undefined);
  try {
    return await work(connection);
  } finally {
    await connection.close().catch(() => undefined);
  }
}

/**
 * Publishes bytes to an exchange with a plain amqplib confirm channel: the headers and properties
 * given (no message-id unless `properties` has one), nothing of this module's metadata.
 */
export function rawPublish(
  exchange: string,
  routingKey: string,
  body: Buffer,
  headers?: Record<string, unknown>,
  properties: Omit<Options.Publish, 'headers'> = {},
): Promise<void> {
  return withRawConnection(async (connection) => {
    const channel = await connection.createConfirmChannel();
    channel.publish(exchange, routingKey, body, { persistent: true, ...properties, headers });
    await channel.waitForConfirms();
  });
}

/** A message as a plain amqplib consumer reads it. */
export interface RawAmqpRecord {
  body: Buffer;
  /** The AMQP message-id property. */
  id: string | undefined;
  /** The AMQP headers as strings (a Buffer as UTF-8, anything else as String()). */
  headers: Record<string, string>;
  message: Message;
}

/**
 * Reads a topic as a consumer outside the module would: a queue of its own (a unique name), bound
 * to the topic's exchange, read with plain amqplib. The exchange is declared as the adapter declares
 * it, so the reader may come first. close() deletes that queue, and only it.
 */
export async function rawTopicReader(exchange: string): Promise<{ next(timeoutMs: number): Promise<RawAmqpRecord>; close(): Promise<void> }> {
  const connection = await connect(RABBITMQ_URL);
  connection.on('error', () => undefined);
  const channel = await connection.createChannel();
  const queue = `raw-reader.${randomUUID()}`;
  await channel.assertExchange(exchange, 'fanout', { durable: true });
  await channel.assertQueue(queue, { durable: false, exclusive: true });
  await channel.bindQueue(queue, exchange, '');
  const records: RawAmqpRecord[] = [];
  let wake: (() => void) | undefined;
  await channel.consume(
    queue,
    (message) => {
      if (!message) return;
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(message.properties.headers ?? {})) {
        headers[name] = Buffer.isBuffer(value) ? value.toString('utf8') : String(value);
      }
      records.push({ body: message.content, id: message.properties.messageId as string | undefined, headers, message });
      wake?.();
    },
    { noAck: true },
  );
  return {
    async next(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (records.length === 0) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no message on exchange '${exchange}' within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, Math.min(left, 50));
        });
      }
      return records.shift() as RawAmqpRecord;
    },
    async close() {
      await channel.deleteQueue(queue).catch(() => undefined);
      await connection.close().catch(() => undefined);
    },
  };
}

/**
 * Deletes exactly these queues and exchanges (what one test declared), through AMQP. One that is
 * already gone (an expired delay queue) is passed over; any other failure is thrown once the rest
 * were tried, so a cleanup that leaves something behind says so.
 */
export function deleteNamed(names: { queues?: string[]; exchanges?: string[] }): Promise<void> {
  return withRawConnection(async (connection) => {
    const failures: string[] = [];
    let channel: Channel | undefined;
    // A failed delete closes its channel: the next one opens another.
    const remove = async (what: string, del: (channel: Channel) => Promise<unknown>) => {
      if (!channel) {
        channel = await connection.createChannel();
        channel.on('error', () => undefined);
      }
      try {
        await del(channel);
      } catch (error) {
        channel = undefined;
        if ((error as { code?: number }).code !== 404) failures.push(`${what}: ${(error as Error).message}`);
      }
    };
    for (const queue of names.queues ?? []) await remove(`queue '${queue}'`, (ch) => ch.deleteQueue(queue));
    for (const exchange of names.exchanges ?? []) await remove(`exchange '${exchange}'`, (ch) => ch.deleteExchange(exchange));
    await channel?.close().catch(() => undefined);
    if (failures.length > 0) throw new Error(`could not delete what the test declared:\n${failures.join('\n')}`);
  });
}

/** Ready messages in a queue, or undefined when it does not exist. */
export function queueDepth(queue: string): Promise<number | undefined> {
  return withRawConnection(async (connection) => {
    const channel = await connection.createChannel();
    channel.on('error', () => undefined);
    try {
      return (await channel.checkQueue(queue)).messageCount;
    } catch {
      return undefined;
    }
  });
}

/** Queue names with their ready and unacked counts, from the server itself. */
export async function listQueues(): Promise<{ name: string; ready: number; unacked: number }[]> {
  const out = await rabbitmqctl('list_queues', '-q', '--no-table-headers', 'name', 'messages_ready', 'messages_unacknowledged');
  return out
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const [name, ready, unacked] = line.split('\t');
      return { name, ready: Number(ready), unacked: Number(unacked) };
    });
}

/** Whether a queue exists, by a passive declare (no rabbitmqctl needed). */
export async function queueExists(queue: string): Promise<boolean> {
  return (await queueDepth(queue)) !== undefined;
}

/** Whether an exchange exists, by a passive declare (no rabbitmqctl needed). */
export function exchangeExists(exchange: string): Promise<boolean> {
  return withRawConnection(async (connection) => {
    const channel = await connection.createChannel();
    channel.on('error', () => undefined);
    return channel.checkExchange(exchange).then(
      () => true,
      () => false,
    );
  });
}

export { runUnique } from './names';

/** What one test file declared on RabbitMQ, as recordDeclarations() saw it. */
export interface DeclaredTopology {
  readonly queues: ReadonlySet<string>;
  readonly exchanges: ReadonlySet<string>;
  /** Deletes every queue and exchange recorded, through AMQP, and nothing else. */
  deleteAll(): Promise<void>;
}

/**
 * Records every queue and exchange this test file declares (the module under test and plain
 * amqplib clients alike) at amqplib's Channel.prototype.assertQueue/assertExchange, so the file
 * deletes exactly what it created, through AMQP: no listing, no prefix, no rabbitmqctl. A name is
 * recorded before the declare is sent (a connection may drop after the server created it); a
 * server-named queue once the server named it. Jest gives every test file its own amqplib, so the
 * recording is per file.
 */
export function recordDeclarations(): DeclaredTopology {
  const queues = new Set<string>();
  const exchanges = new Set<string>();
  // amqplib exports only its entry point; its channel classes are in lib/channel_model.js.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Channel: ChannelClass } = require(join(dirname(require.resolve('amqplib')), 'lib', 'channel_model.js')) as {
    Channel: { prototype: Pick<Channel, 'assertQueue' | 'assertExchange'> };
  };
  const proto = ChannelClass.prototype;
  const { assertQueue, assertExchange } = proto;
  proto.assertQueue = function (this: Channel, queue?: string | null, options?: Options.AssertQueue) {
    if (queue) queues.add(queue);
    const declared = assertQueue.call(this, queue ?? undefined, options);
    if (!queue) void declared.then((ok) => queues.add(ok.queue), () => undefined);
    return declared;
  };
  proto.assertExchange = function (this: Channel, exchange: string, type: string, options?: Options.AssertExchange) {
    if (exchange !== '' && !exchange.startsWith('amq.')) exchanges.add(exchange);
    return assertExchange.call(this, exchange, type, options);
  };
  return {
    queues,
    exchanges,
    async deleteAll() {
      if (queues.size === 0 && exchanges.size === 0) return;
      await deleteNamed({ queues: [...queues], exchanges: [...exchanges] });
      queues.clear();
      exchanges.clear();
    },
  };
}
