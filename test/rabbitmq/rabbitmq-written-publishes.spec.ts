import type { ConfirmChannel } from 'amqplib';
import { publishOn, WrittenPublishes } from '../../lib/adapters/rabbitmq/rabbitmq-publisher';

// The publisher's queue of written publishes, on its own (no broker): the real publisher's paths
// through it (confirms, returns, timeouts, lost channels) are tested against RabbitMQ in
// rabbitmq.adapter.spec.ts and rabbitmq.resilience.spec.ts.
type Entry = Parameters<WrittenPublishes['add']>[0] & { n: number };

function entry(n: number): Entry {
  return {
    n,
    exchange: 'x',
    routingKey: '',
    content: Buffer.from(String(n)),
    options: {},
    deadline: 0,
    resolve: () => undefined,
    reject: () => undefined,
    settled: false,
    written: false,
  };
}

const numbers = (queue: WrittenPublishes) => [...queue].map((pending) => (pending as Entry).n);
const slotCount = (queue: WrittenPublishes) => (queue as unknown as { slots: unknown[] }).slots.length;

describe('RabbitMQ publisher: written publishes', () => {
  it('lists the unfinished ones oldest first, whatever order they finish in', () => {
    const queue = new WrittenPublishes();
    const entries = [0, 1, 2, 3, 4].map(entry);
    for (const pending of entries) queue.add(pending);
    queue.remove(entries[2]);
    queue.remove(entries[0]);
    expect(numbers(queue)).toEqual([1, 3, 4]);
    expect(queue.size).toBe(3);
    expect(entries[2].written).toBe(false);
    expect(entries[1].written).toBe(true);
    // Removing twice changes nothing.
    queue.remove(entries[2]);
    expect(queue.size).toBe(3);
    for (const pending of [entries[1], entries[3], entries[4]]) queue.remove(pending);
    expect(numbers(queue)).toEqual([]);
    expect(queue.size).toBe(0);
    expect(slotCount(queue)).toBe(0);
  });

  it('holds one slot for a publish that failed as it was written and is written again', () => {
    const queue = new WrittenPublishes();
    const first = entry(1);
    const again = entry(2);
    queue.add(first);
    queue.add(again);
    queue.remove(again);
    queue.add(again);
    expect(numbers(queue)).toEqual([1, 2]);
    expect(slotCount(queue)).toBe(2);
  });

  it('does not grow without bound as publishes finish in order', () => {
    const queue = new WrittenPublishes();
    const entries = Array.from({ length: 8000 }, (_, n) => entry(n));
    for (const pending of entries.slice(0, 5000)) queue.add(pending);
    for (const pending of entries.slice(0, 4000)) queue.remove(pending);
    expect(numbers(queue)).toEqual(entries.slice(4000, 5000).map((pending) => pending.n));
    expect(slotCount(queue)).toBeLessThan(3100);
    for (const pending of entries.slice(5000)) queue.add(pending);
    for (const pending of entries.slice(4000, 7999)) queue.remove(pending);
    expect(numbers(queue)).toEqual([7999]);
    expect(slotCount(queue)).toBeLessThan(1100);
  });

  it('does not grow without bound behind one publish that waits for its confirm', () => {
    const queue = new WrittenPublishes();
    const stuck = entry(-1);
    queue.add(stuck);
    // Two in flight at a time, the older confirmed first: its slot stays behind the stuck one.
    for (let n = 0; n < 10_000; n += 2) {
      const older = entry(n);
      const newer = entry(n + 1);
      queue.add(older);
      queue.add(newer);
      queue.remove(older);
      queue.remove(newer);
      expect(slotCount(queue)).toBeLessThan(1100);
    }
    expect(numbers(queue)).toEqual([-1]);
    expect(queue.size).toBe(1);
    queue.remove(stuck);
    expect(slotCount(queue)).toBe(0);
  });
});

// A stand-in channel, not amqplib's: an amqplib without the two steps publishOn takes cannot be
// had from the installed version. The steps themselves are tested on the server (rabbitmq.adapter.spec.ts).
describe('RabbitMQ publisher: publishOn on an amqplib without its publish steps', () => {
  it("falls back to the channel's public publish(), with the same arguments and callback", () => {
    const calls: unknown[][] = [];
    const channel = {
      publish: (...args: unknown[]) => {
        calls.push(args);
        return false;
      },
    } as unknown as ConfirmChannel;
    const pending = entry(1);
    const confirmed = () => undefined;
    expect(publishOn(channel, pending, confirmed)).toBe(false);
    expect(calls).toEqual([['x', '', pending.content, pending.options, confirmed]]);
  });
});
