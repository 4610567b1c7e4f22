import { randomUUID } from 'node:crypto';
import type { InboundDelivery, MemoryBrokerServer } from '../../lib';
import type { RawReader, RawRecord } from '../conformance/conformance-target';

/**
 * Reads a topic of the embedded broker as a consumer outside the module would: a group of its own,
 * straight off the server. Its id is the message-id field the broker holds (its metadata).
 */
export function memoryRawReader(server: MemoryBrokerServer, topicName: string): RawReader {
  const records: RawRecord[] = [];
  const waiters: (() => void)[] = [];
  const consumer = server.queue(topicName, `raw-${randomUUID()}`, 'messages').addConsumer(100, async (delivery: InboundDelivery) => {
    const body = typeof delivery.body === 'string' ? Buffer.from(delivery.body) : delivery.body;
    records.push({ body, id: delivery.metadata.id, headers: { ...delivery.headers } });
    await delivery.ack();
    for (const wake of waiters.splice(0)) wake();
  });
  return {
    async next(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (records.length === 0) {
        if (Date.now() >= deadline) throw new Error(`no message on ${topicName} within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 50);
        });
      }
      return records.shift() as RawRecord;
    },
    close() {
      consumer.close();
      return Promise.resolve();
    },
  };
}
