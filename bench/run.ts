/**
 * npm run bench [-- --quick] [-- --only memory,rabbitmq,kafka,sqs]
 *
 * Each scenario runs ours and its baselines alternately in one process (A B A B …, several
 * rounds) and reports the median of each: one table per broker, the ratios with their targets, and
 * at the end one machine-readable line per figure: `ratio <name> <value>` (ours / baseline;
 * higher is better for throughput, lower for latency). Full results go to bench/results/ as JSON.
 * The Kafka mock cluster and the SQS emulator are the test suite's own (test/support/global-setup.ts).
 *
 * Each broker's suite runs in a Node.js process of its own (this file again, with --suite), so
 * one suite does not hand its heap and GC state to the next (the memory suite leaves a heap that
 * has seen a million messages; with it in the same process RabbitMQ's latency p99 came out at
 * 20 ms once, against 7–9 ms alone, which is still GC-bound: see bench/README.md).
 */
import 'reflect-metadata';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import globalSetup, { stopKafkaMock, stopKafkaServer, stopSqsEmulator } from '../test/support/global-setup';
import { met, printTable, type Ratio, type ScenarioResult } from './harness';
import { benchMemory, type BenchOptions } from './memory.bench';

/* eslint-disable no-console -- a benchmark reports on the console */

interface SuiteReport {
  results: ScenarioResult[];
  ratios: Ratio[];
  growth?: Record<string, number>;
}
type Suite = (options: BenchOptions) => Promise<SuiteReport>;

const SUITES: Record<string, () => Promise<Suite>> = {
  memory: () => Promise.resolve(benchMemory),
  rabbitmq: async () => (await import('./rabbitmq.bench')).benchRabbitMq,
  kafka: async () => (await import('./kafka.bench')).benchKafka,
  sqs: async () => (await import('./sqs.bench')).benchSqs,
  redis: async () => (await import('./redis.bench')).benchRedis,
  nats: async () => (await import('./nats.bench')).benchNats,
};

/** In a child process: runs one suite, prints its tables, and writes its report to `out`. */
async function runSuite(name: string, options: BenchOptions, out: string): Promise<void> {
  const load = SUITES[name];
  if (!load) throw new Error(`unknown suite '${name}' (known: ${Object.keys(SUITES).join(', ')})`);
  const suiteStarted = Date.now();
  const { results, ratios, growth } = await (await load())(options);
  for (const result of results) {
    printTable(
      // A scenario may run more rounds than asked (its own count): the samples say how many.
      `${result.scenario} (${result.unit}, median of ${Math.max(0, ...Object.values(result.samples).map((samples) => samples.length))})`,
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
  writeFileSync(out, JSON.stringify({ results, ratios, growth } satisfies SuiteReport));
}

/** Runs one suite in a fresh process with this one's flags (--expose-gc, ts-node) and environment (the brokers' endpoints). */
function runSuiteInChild(name: string, quick: boolean, out: string): Promise<SuiteReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, __filename, '--suite', name, '--out', out, ...(quick ? ['--quick'] : [])], { stdio: 'inherit' });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code !== 0) return reject(new Error(`the ${name} suite exited with ${signal ?? code}`));
      try {
        const report = JSON.parse(readFileSync(out, 'utf8')) as SuiteReport;
        // JSON has no Infinity or NaN: a ratio over a zero baseline comes back as null.
        for (const ratio of report.ratios) ratio.value ??= Number.NaN;
        resolve(report);
      } catch (error) {
        reject(new Error(`the ${name} suite left no report: ${(error as Error).message}`));
      }
    });
  });
}

function argument(name: string): string | undefined {
  const index = process.argv.findIndex((arg) => arg === name || arg.startsWith(`${name}=`));
  if (index < 0) return undefined;
  return process.argv[index].includes('=') ? process.argv[index].split('=')[1] : process.argv[index + 1];
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const suite = argument('--suite');
  if (suite) return runSuite(suite, { quick, rounds: quick ? 3 : 5 }, argument('--out') as string);
  const only = argument('--only')?.split(',') ?? Object.keys(SUITES);
  const options: BenchOptions = { quick, rounds: quick ? 3 : 5 };
  await globalSetup();
  const started = Date.now();
  const report: Record<string, unknown> = {};
  const allRatios: Ratio[] = [];
  const scratch = mkdtempSync(join(tmpdir(), 'ductape-bench-'));
  try {
    for (const name of only) {
      if (!SUITES[name]) throw new Error(`unknown suite '${name}' (known: ${Object.keys(SUITES).join(', ')})`);
      const unavailable = process.env[`DUCTAPE_TEST_UNAVAILABLE_${name.toUpperCase()}`];
      if (unavailable) {
        console.log(`\n${name}: skipped (${unavailable})`);
        report[name] = { skipped: unavailable };
        continue;
      }
      const { results, ratios, growth } = await runSuiteInChild(name, quick, join(scratch, `${name}.json`));
      allRatios.push(...ratios);
      if (growth) allRatios.push({ name: `${name}-heap-growth-mb-vs-50`, value: growth.growthMb / 50, target: 1, lowerIsBetter: true });
      report[name] = { results, ratios, growth };
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  console.log('');
  for (const ratio of allRatios) console.log(`ratio ${ratio.name} ${ratio.value.toFixed(3)}`);
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
    // A suite's child leaves the brokers to the parent, which started them.
    if (!argument('--suite')) await Promise.all([stopKafkaMock(), stopKafkaServer(), stopSqsEmulator()]);
    process.exit(0);
  })
  .catch(async (error: unknown) => {
    console.error(error);
    if (!argument('--suite')) await Promise.all([stopKafkaMock(), stopKafkaServer(), stopSqsEmulator()]);
    process.exit(1);
  });
