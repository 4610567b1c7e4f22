import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
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

/** Deletes exactly these queues and exchanges (what one test declared), each on a channel of its own. */
export function deleteNamed(names: { queues?: string[]; exchanges?: string[] }): Promise<void> {
  return withRawConnection(async (connection) => {
    // A channel per deletion: deleting what does not exist (an expired delay queue) closes its channel.
    const remove = async (del: (channel: Channel) => Promise<unknown>) => {
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      await del(channel).catch(() => undefined);
      await channel.close().catch(() => undefined);
    };
    for (const queue of names.queues ?? []) await remove((channel) => channel.deleteQueue(queue));
    for (const exchange of names.exchanges ?? []) await remove((channel) => channel.deleteExchange(exchange));
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

/**
 * Deletes the queues and exchanges a test file declared (names start with one of `prefixes`), so
 * durable test topology does not pile up on the broker. Needs rabbitmqctl; without it, a no-op.
 */
export async function deleteTopology(prefixes: string[]): Promise<void> {
  let queues: string;
  let exchanges: string;
  try {
    queues = await rabbitmqctl('list_queues', '-q', '--no-table-headers', 'name');
    exchanges = await rabbitmqctl('list_exchanges', '-q', '--no-table-headers', 'name');
  } catch {
    return;
  }
  const ours = (out: string) => out.split('\n').map((n) => n.trim()).filter((n) => prefixes.some((p) => n.startsWith(p)));
  await withRawConnection(async (connection) => {
    // A channel per deletion: a delay queue that expired meanwhile fails its delete and closes its channel.
    const remove = async (del: (channel: Channel) => Promise<unknown>) => {
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      await del(channel).catch(() => undefined);
      await channel.close().catch(() => undefined);
    };
    for (const queue of ours(queues)) await remove((channel) => channel.deleteQueue(queue));
    for (const exchange of ours(exchanges)) await remove((channel) => channel.deleteExchange(exchange));
  });
}
