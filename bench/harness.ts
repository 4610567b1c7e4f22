import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { DuctapeBrokerModule, MessageBrokerService, type BrokerEnvConfig } from '../lib';

/* eslint-disable no-console -- a benchmark reports on the console */

/** The module as a service would run it, on one broker env (slug 'prd', product 'bench'), without logs. */
export async function benchApp(brokerTag: string, env: BrokerEnvConfig, service?: string): Promise<{ app: INestApplication; broker: MessageBrokerService }> {
  const moduleRef = await Test.createTestingModule({
    imports: [DuctapeBrokerModule.forRoot({ env: 'prd', product: 'bench', ...(service ? { service } : {}), brokers: [{ tag: brokerTag, envs: [env] }] })],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  return { app, broker: app.get(MessageBrokerService) };
}

/** One contender of a scenario: ours or a baseline. `run` measures one round and returns its figure. */
export interface Contender {
  name: string;
  run(): Promise<number>;
}

export interface ScenarioResult {
  scenario: string;
  unit: string;
  /** Every round's figure, per contender. */
  samples: Record<string, number[]>;
  medians: Record<string, number>;
}

/**
 * Runs contenders alternately for `rounds` rounds, so drift of the machine (another process, the
 * broker's own housekeeping) reaches all of them alike; reports medians. Each round starts one
 * contender later (A B C, B C A, C A B, …): whatever the previous round left the broker doing
 * (cleaning up purged messages, say) does not always fall on the same contender.
 */
export async function alternate(scenario: string, unit: string, rounds: number, contenders: Contender[]): Promise<ScenarioResult> {
  const samples: Record<string, number[]> = Object.fromEntries(contenders.map((c) => [c.name, []]));
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < contenders.length; i++) {
      const contender = contenders[(round + i) % contenders.length];
      samples[contender.name].push(await contender.run());
    }
  }
  const medians = Object.fromEntries(Object.entries(samples).map(([name, values]) => [name, median(values)]));
  return { scenario, unit, samples, medians };
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** The p-th percentile (0..100) of `values`, nearest rank. */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** Throughput of `count` items done since `start` (process.hrtime.bigint()). */
export function perSecond(count: number, start: bigint): number {
  return count / (Number(process.hrtime.bigint() - start) / 1e9);
}

/** A promise that resolves once `count` calls of the returned `tick` were made. */
export function countdown(count: number): { done: Promise<void>; tick: () => void } {
  let left = count;
  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  if (count === 0) resolve();
  return { done, tick: () => void (--left === 0 && resolve()) };
}

/**
 * Counts `count` handled messages and measures from the first to the last, so each consumer's
 * startup (queue lookups, declarations, joining a group) is left out of its throughput.
 */
export function consumeClock(count: number) {
  const handled = countdown(count);
  let first = 0n;
  let last = 0n;
  return {
    handled: () => {
      last = process.hrtime.bigint();
      if (first === 0n) first = last;
      handled.tick();
    },
    done: handled.done,
    rate: () => (count - 1) / (Number(last - first) / 1e9),
  };
}

/** Fails after `ms` with `what`, so a stuck round does not hang the run. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`bench: ${what} did not finish within ${ms} ms`)), ms))),
  ]);
}

/** Heap used after a full GC, in MB (needs node --expose-gc). */
export function heapAfterGcMb(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run with node --expose-gc');
  gc();
  gc();
  return process.memoryUsage().heapUsed / 2 ** 20;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A ratio of ours to a baseline, with its target: higher is better unless `lowerIsBetter`. */
export interface Ratio {
  name: string;
  value: number;
  target?: number;
  lowerIsBetter?: boolean;
}

export function met(ratio: Ratio): boolean | undefined {
  if (ratio.target === undefined) return undefined;
  return ratio.lowerIsBetter ? ratio.value <= ratio.target : ratio.value >= ratio.target;
}

export function printTable(title: string, rows: Record<string, string | number>[]): void {
  console.log(`\n${title}`);
  console.table(rows);
}

/** A 200-byte JSON message, as issue 6 specifies. */
export const MESSAGE = {
  orderId: 'ord-000000001',
  status: 'pending',
  amount: 1234.5,
  currency: 'EUR',
  customer: { id: 'cus-42', email: 'john@example.com' },
  items: [{ sku: 'sku-1', qty: 2 }],
  note: 'x'.repeat(23),
};

/** `alternate` after one untimed run of every contender (cold JIT, queues or consumers not yet made). */
export async function warmedUp(scenario: string, unit: string, rounds: number, contenders: Contender[]): Promise<ScenarioResult> {
  for (const contender of contenders) await contender.run();
  return alternate(scenario, unit, rounds, contenders);
}

/** Runs `one` `count` times, `window` at a time, each window awaited whole before the next. */
export async function inWindows(count: number, window: number, one: () => Promise<unknown>): Promise<void> {
  for (let sent = 0; sent < count; sent += window) {
    const running: Promise<unknown>[] = [];
    for (let i = 0; i < window && sent + i < count; i++) running.push(one());
    await Promise.all(running);
  }
}

