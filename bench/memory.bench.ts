import 'reflect-metadata';
import { Test } from '@nestjs/testing';
import { EventEmitter2, EventEmitterModule } from '@nestjs/event-emitter';
import { alternate, benchApp, countdown, heapAfterGcMb, MESSAGE, perSecond, type Ratio, type ScenarioResult } from './harness';

const BATCH = 1000;

export interface BenchOptions {
  quick: boolean;
  rounds: number;
}

/** Ours: publish -> JSON -> memory broker -> decode -> handler -> ack, 1000 publishes awaited at a time. */
async function memoryBroker(messages: number) {
  const { app, broker } = await benchApp('mem', { slug: 'prd', type: 'memory', config: { maxQueueLength: messages + 1 } });
  let tick: () => void = () => undefined;
  await broker.subscribe({ env: 'prd', event: 'mem:orders', product_tag: 'bench', input: { concurrency: BATCH, callback: () => tick() } });
  const send = async (count: number) => {
    const handled = countdown(count);
    tick = handled.tick;
    for (let sent = 0; sent < count; sent += BATCH) {
      const batch: Promise<unknown>[] = [];
      for (let i = 0; i < BATCH && sent + i < count; i++) batch.push(broker.publish({ env: 'prd', event: 'mem:orders', product_tag: 'bench', input: { message: MESSAGE } }));
      await Promise.all(batch);
    }
    await handled.done;
  };
  return {
    run: async () => {
      const start = process.hrtime.bigint();
      await send(messages);
      return perSecond(messages, start);
    },
    send,
    close: () => app.close(),
  };
}

/**
 * The floor: only the copy every broker makes of a message, `JSON.parse(JSON.stringify(message))`,
 * on the same message, in a loop that awaits every 1000 as ours does. No broker can beat it.
 */
function jsonFloor(messages: number) {
  let sink: unknown;
  return {
    run: async () => {
      const start = process.hrtime.bigint();
      for (let sent = 0; sent < messages; sent += BATCH) {
        for (let i = 0; i < BATCH; i++) sink = JSON.parse(JSON.stringify(MESSAGE));
        await Promise.resolve();
      }
      if (sink === undefined) throw new Error('the JSON floor copied nothing');
      return perSecond(messages, start);
    },
  };
}

/** Baseline: @nestjs/event-emitter emitAsync to one async listener (no copy, no envelope, no ack). */
async function eventEmitter(messages: number) {
  const moduleRef = await Test.createTestingModule({ imports: [EventEmitterModule.forRoot()] }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  const emitter = app.get(EventEmitter2);
  let handled = 0;
  emitter.on('orders', (() => {
    handled++;
    return Promise.resolve();
  }) as () => void);
  return {
    run: async () => {
      handled = 0;
      const start = process.hrtime.bigint();
      for (let sent = 0; sent < messages; sent += BATCH) {
        const batch: Promise<unknown>[] = [];
        for (let i = 0; i < BATCH; i++) batch.push(emitter.emitAsync('orders', MESSAGE));
        await Promise.all(batch);
      }
      if (handled !== messages) throw new Error(`event-emitter handled ${handled} of ${messages}`);
      return perSecond(messages, start);
    },
    close: () => app.close(),
  };
}

export async function benchMemory(options: BenchOptions): Promise<{ results: ScenarioResult[]; ratios: Ratio[]; growth: Record<string, number> }> {
  const messages = options.quick ? 100_000 : 500_000;
  const ours = await memoryBroker(messages);
  const baseline = await eventEmitter(messages);
  const floor = jsonFloor(messages);
  await ours.run(); // warm-up: JIT, and the broker's maps
  await baseline.run();
  await floor.run();
  const throughput = await alternate('memory publish -> handler', 'msg/s', options.rounds, [
    { name: 'ours (memory broker)', run: ours.run },
    { name: '@nestjs/event-emitter emitAsync', run: baseline.run },
    { name: 'JSON floor: JSON.parse(JSON.stringify(message))', run: floor.run },
  ]);
  await baseline.close();

  // Growth: the heap after GC before and after a million messages (200k with --quick).
  const total = options.quick ? 200_000 : 1_000_000;
  const before = heapAfterGcMb();
  for (let done = 0; done < total; done += 100_000) await ours.send(Math.min(100_000, total - done));
  const after = heapAfterGcMb();
  await ours.close();

  const ratios: Ratio[] = [
    { name: 'memory-vs-json-floor', value: throughput.medians['ours (memory broker)'] / throughput.medians['JSON floor: JSON.parse(JSON.stringify(message))'], target: 0.5 },
    { name: 'memory-vs-event-emitter', value: throughput.medians['ours (memory broker)'] / throughput.medians['@nestjs/event-emitter emitAsync'] },
  ];
  return { results: [throughput], ratios, growth: { messages: total, heapBeforeMb: before, heapAfterMb: after, growthMb: after - before } };
}
