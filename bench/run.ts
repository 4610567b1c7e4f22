/**
 * npm run bench [-- --quick]
 *
 * Runs each scenario and its baselines alternately in one process (A B A B ..., several rounds),
 * reports the median of each, one table per broker, and for --quick one machine-readable line per
 * figure: `ratio <name> <value>` (ours / baseline; higher is better for throughput). Full results
 * go to bench/results/ as JSON. Scenarios for real brokers join as their adapters land.
 */
import 'reflect-metadata';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { Test } from '@nestjs/testing';
import { EventEmitter2, EventEmitterModule } from '@nestjs/event-emitter';
import { DuctapeBrokerModule, MessageBrokerService } from '../lib';

/* eslint-disable no-console -- a benchmark reports on the console */

const quick = process.argv.includes('--quick');
const ROUNDS = quick ? 3 : 5;
const MESSAGES = quick ? 100_000 : 500_000;
const BATCH = 1000;

/** A 200-byte JSON message, as the benchmarks of the issue specify. */
const MESSAGE = { orderId: 'ord-000000001', status: 'pending', amount: 1234.5, currency: 'EUR', customer: { id: 'cus-42', email: 'john@example.com' }, items: [{ sku: 'sku-1', qty: 2 }], note: 'x'.repeat(24) };

interface Scenario {
  name: string;
  unit: 'msg/s';
  run(): Promise<number>;
}

/** Ours: publish -> envelope -> JSON -> memory broker -> decode -> handler -> ack. */
async function memoryBroker(): Promise<() => Promise<number>> {
  const moduleRef = await Test.createTestingModule({
    imports: [DuctapeBrokerModule.forRoot({ env: 'prd', product: 'bench', brokers: [{ tag: 'mem', envs: [{ slug: 'prd', type: 'memory', config: { maxQueueLength: MESSAGES + 1 } }] }] })],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  const broker = app.get(MessageBrokerService);
  let handled = 0;
  let target = 0;
  let done: () => void = () => undefined;
  await broker.subscribe({
    env: 'prd',
    event: 'mem:orders',
    product_tag: 'bench',
    input: {
      concurrency: BATCH,
      callback: () => {
        if (++handled === target) done();
      },
    },
  });
  return async () => {
    handled = 0;
    target = MESSAGES;
    const finished = new Promise<void>((resolve) => (done = resolve));
    const start = process.hrtime.bigint();
    for (let sent = 0; sent < MESSAGES; sent += BATCH) {
      const batch: Promise<unknown>[] = [];
      for (let i = 0; i < BATCH; i++) batch.push(broker.publish({ env: 'prd', event: 'mem:orders', product_tag: 'bench', input: { message: MESSAGE } }));
      await Promise.all(batch);
    }
    await finished;
    return MESSAGES / (Number(process.hrtime.bigint() - start) / 1e9);
  };
}

/** Baseline: @nestjs/event-emitter emitAsync to one @OnEvent-style listener (no copy, no ack). */
async function eventEmitter(): Promise<() => Promise<number>> {
  const moduleRef = await Test.createTestingModule({ imports: [EventEmitterModule.forRoot()] }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  const emitter = app.get(EventEmitter2);
  let handled = 0;
  // An async listener, as a handler doing I/O would be; emitAsync awaits it.
  const listener = (): Promise<void> => {
    handled++;
    return Promise.resolve();
  };
  emitter.on('orders', listener as () => void);
  return async () => {
    handled = 0;
    const start = process.hrtime.bigint();
    for (let sent = 0; sent < MESSAGES; sent += BATCH) {
      const batch: Promise<unknown>[] = [];
      for (let i = 0; i < BATCH; i++) batch.push(emitter.emitAsync('orders', MESSAGE));
      await Promise.all(batch);
    }
    if (handled !== MESSAGES) throw new Error(`event-emitter handled ${handled} of ${MESSAGES}`);
    return MESSAGES / (Number(process.hrtime.bigint() - start) / 1e9);
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

async function main(): Promise<void> {
  const scenarios: Scenario[] = [
    { name: 'memory publish->handler (ours)', unit: 'msg/s', run: await memoryBroker() },
    { name: '@nestjs/event-emitter emitAsync', unit: 'msg/s', run: await eventEmitter() },
  ];
  const samples = new Map<string, number[]>(scenarios.map((s) => [s.name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const scenario of scenarios) samples.get(scenario.name)!.push(await scenario.run());
  }
  const medians = Object.fromEntries([...samples].map(([name, values]) => [name, median(values)]));
  const ratio = medians['memory publish->handler (ours)'] / medians['@nestjs/event-emitter emitAsync'];

  console.log(`\nmemory broker: ${MESSAGES} messages of ${JSON.stringify(MESSAGE).length} bytes, ${ROUNDS} rounds, median`);
  console.table(Object.entries(medians).map(([scenario, value]) => ({ scenario, 'msg/s': Math.round(value) })));
  console.log(`target: ours >= 500000 msg/s (${medians['memory publish->handler (ours)'] >= 500_000 ? 'met' : 'missed'})`);
  if (quick) {
    console.log(`ratio memory-vs-event-emitter ${ratio.toFixed(3)}`);
  }
  const results = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    quick,
    rounds: ROUNDS,
    messages: MESSAGES,
    samples: Object.fromEntries(samples),
    medians,
    ratios: { 'memory-vs-event-emitter': ratio },
  };
  const dir = join(__dirname, 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `bench-${quick ? 'quick' : 'full'}-${results.date.replace(/[:.]/g, '-')}.json`), JSON.stringify(results, null, 2));
  process.exit(0);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
