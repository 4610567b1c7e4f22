/**
 * npm run bench [-- --quick] [-- --only memory,rabbitmq,kafka,sqs]
 *
 * Each scenario runs ours and its baselines alternately in one process (A B A B …, several
 * rounds) and reports the median of each: one table per broker, the ratios with their targets, and
 * with --quick one machine-readable line per figure: `ratio <name> <value>` (ours / baseline;
 * higher is better for throughput, lower for latency). Full results go to bench/results/ as JSON.
 * The Kafka mock cluster and the SQS emulator are the test suite's own (test/support/global-setup.ts).
 */
import 'reflect-metadata';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import globalSetup, { stopKafkaMock, stopSqsEmulator } from '../test/support/global-setup';
import { met, printTable, type Ratio, type ScenarioResult } from './harness';
import { benchMemory, type BenchOptions } from './memory.bench';

/* eslint-disable no-console -- a benchmark reports on the console */

type Suite = (options: BenchOptions) => Promise<{ results: ScenarioResult[]; ratios: Ratio[]; growth?: Record<string, number> }>;

const SUITES: Record<string, () => Promise<Suite>> = {
  memory: () => Promise.resolve(benchMemory),
  rabbitmq: async () => (await import('./rabbitmq.bench')).benchRabbitMq,
  kafka: async () => (await import('./kafka.bench')).benchKafka,
  sqs: async () => (await import('./sqs.bench')).benchSqs,
};

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const onlyArg = process.argv.find((arg) => arg.startsWith('--only'));
  const only = onlyArg ? (onlyArg.includes('=') ? onlyArg.split('=')[1] : process.argv[process.argv.indexOf(onlyArg) + 1]).split(',') : Object.keys(SUITES);
  const options: BenchOptions = { quick, rounds: quick ? 3 : 5 };
  await globalSetup();
  const started = Date.now();
  const report: Record<string, unknown> = {};
  const allRatios: Ratio[] = [];
  for (const name of only) {
    const load = SUITES[name];
    if (!load) throw new Error(`unknown suite '${name}' (known: ${Object.keys(SUITES).join(', ')})`);
    const unavailable = process.env[`DUCTAPE_TEST_UNAVAILABLE_${name.toUpperCase()}`];
    if (unavailable) {
      console.log(`\n${name}: skipped (${unavailable})`);
      report[name] = { skipped: unavailable };
      continue;
    }
    const suiteStarted = Date.now();
    const { results, ratios, growth } = await (await load())(options);
    for (const result of results) {
      printTable(
        `${result.scenario} (${result.unit}, median of ${options.rounds})`,
        Object.entries(result.medians).map(([contender, value]) => ({ contender, [result.unit]: result.unit === 'ms' ? Number(value.toFixed(2)) : Math.round(value) })),
      );
    }
    if (growth) console.log(`${name} heap after GC: ${growth.heapBeforeMb.toFixed(1)} MB before, ${growth.heapAfterMb.toFixed(1)} MB after ${growth.messages} messages (growth ${growth.growthMb.toFixed(1)} MB; target < 50)`);
    printTable(
      `${name} ratios (ours / baseline)`,
      ratios.map((ratio) => ({
        ratio: ratio.name,
        value: Number(ratio.value.toFixed(3)),
        target: ratio.target === undefined ? '' : `${ratio.lowerIsBetter ? '<=' : '>='} ${ratio.target}`,
        met: met(ratio) === undefined ? '' : met(ratio) ? 'yes' : 'NO',
      })),
    );
    console.log(`${name}: ${((Date.now() - suiteStarted) / 1000).toFixed(1)} s`);
    allRatios.push(...ratios);
    if (growth) allRatios.push({ name: `${name}-heap-growth-mb-vs-50`, value: growth.growthMb / 50, target: 1, lowerIsBetter: true });
    report[name] = { results, ratios, growth };
  }
  if (quick) for (const ratio of allRatios) console.log(`ratio ${ratio.name} ${ratio.value.toFixed(3)}`);
  console.log(`\ntotal: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const results = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    quick,
    rounds: options.rounds,
    report,
  };
  const dir = join(__dirname, 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `bench-${quick ? 'quick' : 'full'}-${results.date.replace(/[:.]/g, '-')}.json`), JSON.stringify(results, null, 2));
}

main()
  .then(async () => {
    await Promise.all([stopKafkaMock(), stopSqsEmulator()]);
    process.exit(0);
  })
  .catch(async (error: unknown) => {
    console.error(error);
    await Promise.all([stopKafkaMock(), stopSqsEmulator()]);
    process.exit(1);
  });
