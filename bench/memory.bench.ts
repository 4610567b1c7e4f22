import 'reflect-metadata';
import { Injectable, UseInterceptors, type CallHandler, type NestInterceptor } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { EventEmitter2, EventEmitterModule } from '@nestjs/event-emitter';
import type { Observable } from 'rxjs';
import { DuctapeBrokerModule, MessageBrokerService, OnBrokerEvent, type BrokerContext } from '../lib';
import { alternate, benchApp, countdown, heapAfterGcMb, median, MESSAGE, perSecond, type Ratio, type ScenarioResult } from './harness';

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

/** Called by the handlers of the handler-path scenario; each round sets its own. */
let onHandled: () => void = () => undefined;

/** Passes the call through: the cost of Nest's pipeline around a handler, nothing of its own. */
@Injectable()
class PassThroughInterceptor implements NestInterceptor {
  intercept(_context: unknown, next: CallHandler): Observable<unknown> {
    return next.handle();
  }
}

@Injectable()
class BenchListener {
  @OnBrokerEvent('mem:decorated', { concurrency: BATCH })
  onDecorated(_message: unknown, _ctx: BrokerContext): void {
    onHandled();
  }

  @OnBrokerEvent('mem:intercepted', { concurrency: BATCH })
  @UseInterceptors(PassThroughInterceptor)
  onIntercepted(_message: unknown, _ctx: BrokerContext): void {
    onHandled();
  }
}

/**
 * The same publish -> handler path three ways, in one application: a `subscribe()` callback, an
 * `@OnBrokerEvent` method with no enhancer bound (the explorer's direct call), and one with an
 * interceptor (through Nest's ExternalContextCreator). The figure is messages per second of the
 * process's CPU time, not of the wall clock: the first two differ by a call per message, and on a
 * shared 2-core machine identical wall-clock rounds vary by more than that. Many short rounds, and
 * the ratio is the median of each round's own (CPU time still varies ±25 % from round to round).
 */
async function handlerPaths(messages: number) {
  const moduleRef = await Test.createTestingModule({
    imports: [DuctapeBrokerModule.forRoot({ env: 'prd', product: 'bench', brokers: [{ tag: 'mem', envs: [{ slug: 'prd', type: 'memory', config: { maxQueueLength: messages + 1 } }] }] })],
    providers: [BenchListener, PassThroughInterceptor],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  const broker = app.get(MessageBrokerService);
  await broker.subscribe({ env: 'prd', event: 'mem:plain', product_tag: 'bench', input: { concurrency: BATCH, callback: (_message: unknown, _ctx: BrokerContext) => onHandled() } });
  const round = (event: string, count: number) => async () => {
    // Each round starts from a collected heap, so none pays for the garbage of the one before.
    (globalThis as { gc?: () => void }).gc?.();
    const handled = countdown(count);
    onHandled = handled.tick;
    const cpu = process.cpuUsage();
    for (let sent = 0; sent < count; sent += BATCH) {
      const batch: Promise<unknown>[] = [];
      for (let i = 0; i < BATCH; i++) batch.push(broker.publish({ env: 'prd', event, product_tag: 'bench', input: { message: MESSAGE } }));
      await Promise.all(batch);
    }
    await handled.done;
    const used = process.cpuUsage(cpu);
    return count / ((used.user + used.system) / 1e6);
  };
  return {
    plain: round('mem:plain', messages),
    decorated: round('mem:decorated', messages),
    // An order of magnitude slower (Nest's interceptor chain, see bench/README.md): fewer messages, the same rate.
    intercepted: round('mem:intercepted', messages / 10),
    close: () => app.close(),
  };
}

/**
 * Tracing's cost when @opentelemetry/api is installed (it is, here) but no SDK is registered, the
 * default for an app that has the API for another reason: two apps, one with `tracing` unset
 * (on), one with `tracing: false`, the same publish -> subscribe() path, CPU time as above.
 */
async function tracingPaths(messages: number) {
  const start = async (tracing: boolean | undefined) => {
    const moduleRef = await Test.createTestingModule({
      imports: [
        DuctapeBrokerModule.forRoot({
          env: 'prd',
          product: 'bench',
          ...(tracing === undefined ? {} : { tracing }),
          brokers: [{ tag: 'mem', envs: [{ slug: 'prd', type: 'memory', config: { maxQueueLength: messages + 1 } }] }],
        }),
      ],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    await app.init();
    const broker = app.get(MessageBrokerService);
    await broker.subscribe({ env: 'prd', event: 'mem:traced', product_tag: 'bench', input: { concurrency: BATCH, callback: () => onHandled() } });
    const round = async () => {
      (globalThis as { gc?: () => void }).gc?.();
      const handled = countdown(messages);
      onHandled = handled.tick;
      const cpu = process.cpuUsage();
      for (let sent = 0; sent < messages; sent += BATCH) {
        const batch: Promise<unknown>[] = [];
        for (let i = 0; i < BATCH; i++) batch.push(broker.publish({ env: 'prd', event: 'mem:traced', product_tag: 'bench', input: { message: MESSAGE } }));
        await Promise.all(batch);
      }
      await handled.done;
      const used = process.cpuUsage(cpu);
      return messages / ((used.user + used.system) / 1e6);
    };
    return { round, close: () => app.close() };
  };
  const on = await start(undefined);
  const off = await start(false);
  return { on: on.round, off: off.round, close: () => Promise.all([on.close(), off.close()]) };
}

/** The median over rounds of `ours / baseline` within each round. */
function pairedRatio(result: ScenarioResult, ours: string, baseline: string): number {
  return median(result.samples[ours].map((value, round) => value / result.samples[baseline][round]));
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

  // @OnBrokerEvent against subscribe(): what the explorer adds to each message.
  const pathRounds = options.quick ? 12 : 30;
  const pathMessages = options.quick ? 10_000 : 25_000;
  const paths = await handlerPaths(pathMessages);
  await paths.plain();
  await paths.decorated();
  await paths.intercepted();
  const handlers = await alternate(`memory publish -> handler: subscribe() vs @OnBrokerEvent (${pathRounds} rounds of ${pathMessages})`, 'msg/CPU-s', pathRounds, [
    { name: 'subscribe() callback', run: paths.plain },
    { name: '@OnBrokerEvent, no enhancer', run: paths.decorated },
  ]);
  // Apart: the interceptor's rounds leave work for the garbage collector that the next round would pay.
  const intercepted = await alternate(`memory publish -> handler: @OnBrokerEvent with an interceptor (${options.rounds} rounds)`, 'msg/CPU-s', options.rounds, [
    { name: 'subscribe() callback', run: paths.plain },
    { name: '@OnBrokerEvent, one interceptor', run: paths.intercepted },
  ]);
  await paths.close();

  const traced = await tracingPaths(pathMessages);
  await traced.on();
  await traced.off();
  const tracing = await alternate(`memory publish -> handler: tracing on, API without SDK vs tracing: false (${pathRounds} rounds of ${pathMessages})`, 'msg/CPU-s', pathRounds, [
    { name: 'tracing: false', run: traced.off },
    { name: 'tracing on, no SDK registered', run: traced.on },
  ]);
  await traced.close();

  const ratios: Ratio[] = [
    // Medians of each round's own ratio: rounds run back to back, so drift between rounds cancels.
    { name: 'memory-onbrokerevent-vs-subscribe', value: pairedRatio(handlers, '@OnBrokerEvent, no enhancer', 'subscribe() callback'), target: 0.95 },
    { name: 'memory-tracing-no-sdk-vs-off', value: pairedRatio(tracing, 'tracing on, no SDK registered', 'tracing: false'), target: 0.95 },
    { name: 'memory-onbrokerevent-interceptor-vs-subscribe', value: pairedRatio(intercepted, '@OnBrokerEvent, one interceptor', 'subscribe() callback') },
    { name: 'memory-vs-json-floor', value: throughput.medians['ours (memory broker)'] / throughput.medians['JSON floor: JSON.parse(JSON.stringify(message))'], target: 0.5 },
    { name: 'memory-vs-event-emitter', value: throughput.medians['ours (memory broker)'] / throughput.medians['@nestjs/event-emitter emitAsync'] },
  ];
  return { results: [throughput, handlers, intercepted, tracing], ratios, growth: { messages: total, heapBeforeMb: before, heapAfterMb: after, growthMb: after - before } };
}
