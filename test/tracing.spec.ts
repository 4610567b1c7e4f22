import 'reflect-metadata';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { INestApplication } from '@nestjs/common';
import * as api from '@opentelemetry/api';
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import * as ts from 'typescript';
import { BrokerError, MemoryBrokerServer, type BrokerContext, type BrokerEnvConfig, type BrokerModuleOptions, type MessageBrokerService } from '../lib';
import type * as ServiceModule from '../lib/message-broker.service';
import type * as ValidatorModule from '../lib/broker-options.validator';
import type { Route } from '../lib/routing/route-resolver';
import { BrokerTracing } from '../lib/tracing/broker-tracing';
import { createBrokerApp, startupError } from './support/app';
import { describeWithBroker } from './support/broker-availability';
import { holdExclusively } from './support/exclusive';
import { rabbitEnv, rawPublish, recordDeclarations } from './support/rabbitmq';
import { runUnique } from './support/names';
import { waitFor } from './support/wait';

/**
 * Tracing through @opentelemetry/api, recorded by the SDK's in-memory exporter: the trace context
 * travels in the message's headers, the consumer span is the producer span's child, spans follow
 * the messaging semantic conventions. Run on the memory broker and on a real RabbitMQ.
 */

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const testTracer = () => trace.getTracer('tracing.spec');
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/;

beforeAll(() => {
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
});

afterAll(async () => {
  trace.disable();
  context.disable();
  propagation.disable();
  await provider.shutdown();
});

afterEach(() => exporter.reset());

interface Handled {
  message: unknown;
  ctx: BrokerContext;
  /** The span active while the handler ran. */
  active: Span | undefined;
}

function spansNamed(name: string): ReadableSpan[] {
  return exporter.getFinishedSpans().filter((span) => span.name === name);
}

async function oneSpan(name: string): Promise<ReadableSpan> {
  await waitFor(() => spansNamed(name).length > 0, `a finished span '${name}'`);
  const spans = spansNamed(name);
  expect(spans).toHaveLength(1);
  return spans[0];
}

/** The tests every broker passes; `foreignPublish` sends raw bytes with these headers as another producer would. */
function tracingSuite(
  type: string,
  system: string,
  envOf: (slug: string) => BrokerEnvConfig,
  foreignPublish: (topic: string, body: string, headers: Record<string, string>) => Promise<void>,
  /** The name this broker's CloudEvents binding gives the distributed-tracing extension's traceparent. */
  cloudEventsTraceparent: string,
): void {
  const apps: INestApplication[] = [];
  const product = runUnique(`trace-${type}`);

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
  });

  async function start(overrides: Partial<BrokerModuleOptions> = {}): Promise<MessageBrokerService> {
    const options: BrokerModuleOptions = {
      env: 'prd',
      product,
      brokers: [{ tag: 'bus', envs: [envOf('prd')] }],
      retry: { maxAttempts: 2, initialDelayMs: 20 },
      shutdownTimeoutMs: 2000,
      ...overrides,
    };
    const { app, broker } = await createBrokerApp(options);
    apps.push(app);
    return broker;
  }

  /** Subscribes a handler that records each call (and the span active in it); a topic of the test's own. */
  async function subscribed(broker: MessageBrokerService, topicTag: string, body?: (ctx: BrokerContext) => unknown) {
    const handled: Handled[] = [];
    await broker.subscribe({
      env: 'prd',
      event: `bus:${topicTag}`,
      product_tag: product,
      input: {
        group: 'traced',
        callback: async (message, ctx) => {
          handled.push({ message, ctx, active: trace.getActiveSpan() });
          await body?.(ctx);
        },
      },
    });
    return { handled, topic: `${product}.prd.${topicTag}`, event: `bus:${topicTag}` };
  }

  it('publishes in a PRODUCER span whose context the message carries; the CONSUMER span is its child, named and attributed after the messaging conventions', async () => {
    const broker = await start();
    const { handled, topic, event } = await subscribed(broker, 'parent');
    const message = { orderId: 'o-1', note: 'é' };
    // Published within a span of the caller's (an HTTP request, say): the producer span is its child.
    const { result, request } = await testTracer().startActiveSpan('incoming request', async (span) => {
      const published = await broker.publish({ env: 'prd', event, product_tag: product, input: { message, correlationId: 'conv-7' } });
      span.end();
      return { result: published, request: span };
    });
    await waitFor(() => handled.length === 1, 'the handler');
    const producer = await oneSpan(`send ${topic}`);
    const consumer = await oneSpan(`process ${topic}`);

    expect(producer.kind).toBe(SpanKind.PRODUCER);
    expect(producer.instrumentationScope.name).toBe('@ductape/nestjs-broker');
    expect(producer.parentSpanContext?.spanId).toBe(request.spanContext().spanId);
    expect(producer.spanContext().traceId).toBe(request.spanContext().traceId);
    expect(producer.status.code).toBe(SpanStatusCode.UNSET);
    expect(producer.attributes).toEqual({
      'messaging.system': system,
      'messaging.system.name': system,
      'messaging.destination.name': topic,
      'messaging.operation.type': 'send',
      'messaging.operation.name': 'send',
      'messaging.message.id': result.messageId,
      'messaging.message.conversation_id': 'conv-7',
      'messaging.message.body.size': Buffer.byteLength(JSON.stringify(message)),
      'ductape.event': event,
    });

    // The trace context travelled as a plain `traceparent` header: the producer span's own.
    const [{ ctx, active }] = handled;
    const [, traceId, spanId] = TRACEPARENT.exec(ctx.headers.traceparent) ?? [];
    expect(traceId).toBe(producer.spanContext().traceId);
    expect(spanId).toBe(producer.spanContext().spanId);

    expect(consumer.kind).toBe(SpanKind.CONSUMER);
    expect(consumer.parentSpanContext?.spanId).toBe(producer.spanContext().spanId);
    expect(consumer.spanContext().traceId).toBe(producer.spanContext().traceId);
    expect(consumer.parentSpanContext?.isRemote).toBe(true);
    expect(consumer.status.code).toBe(SpanStatusCode.UNSET);
    expect(consumer.attributes).toEqual({
      'messaging.system': system,
      'messaging.system.name': system,
      'messaging.destination.name': topic,
      'messaging.operation.type': 'process',
      'messaging.operation.name': 'process',
      'messaging.consumer.group.name': 'traced',
      'messaging.message.id': result.messageId,
      'messaging.message.conversation_id': 'conv-7',
      'ductape.event': event,
      'ductape.message.attempt': 1,
    });
    // The consumer span is the active one while the handler runs.
    expect(active?.spanContext().spanId).toBe(consumer.spanContext().spanId);
  });

  it('makes the CONSUMER span active in the handler: a span the handler starts, after an await too, is its child', async () => {
    const broker = await start();
    let consumerOpenAfterWork: boolean | undefined;
    const { handled, topic, event } = await subscribed(broker, 'inner', async () => {
      await new Promise((resolve) => setTimeout(resolve, 5));
      testTracer().startSpan('handler work').end();
      // Not ended before the handler settles (an SDK span records until it ends).
      consumerOpenAfterWork = trace.getActiveSpan()?.isRecording();
    });
    await broker.publish({ env: 'prd', event, product_tag: product, input: { message: { n: 1 } } });
    await waitFor(() => handled.length === 1, 'the handler');
    const consumer = await oneSpan(`process ${topic}`);
    const inner = await oneSpan('handler work');
    expect(inner.parentSpanContext?.spanId).toBe(consumer.spanContext().spanId);
    expect(inner.spanContext().traceId).toBe(consumer.spanContext().traceId);
    expect(consumerOpenAfterWork).toBe(true);
  });

  it('marks the CONSUMER span of a failed handler call as an error; each retry has its own span, a child of the same producer span', async () => {
    const broker = await start();
    const { handled, topic, event } = await subscribed(broker, 'failing', (ctx) => {
      throw new TypeError(`attempt ${ctx.attempt} failed`);
    });
    await broker.publish({ env: 'prd', event, product_tag: product, input: { message: { n: 2 } } });
    await waitFor(() => handled.length === 2 && spansNamed(`process ${topic}`).length === 2, 'two attempts (maxAttempts 2) and their spans');
    const producer = await oneSpan(`send ${topic}`);
    const consumers = spansNamed(`process ${topic}`).sort((a, b) => Number(a.attributes['ductape.message.attempt']) - Number(b.attributes['ductape.message.attempt']));
    expect(consumers.map((span) => span.attributes['ductape.message.attempt'])).toEqual([1, 2]);
    for (const [i, consumer] of consumers.entries()) {
      expect(consumer.parentSpanContext?.spanId).toBe(producer.spanContext().spanId);
      expect(consumer.status).toEqual({ code: SpanStatusCode.ERROR, message: `attempt ${i + 1} failed` });
      expect(consumer.attributes['error.type']).toBe('TypeError');
      expect(consumer.events.map((e) => [e.name, e.attributes?.['exception.message']])).toEqual([['exception', `attempt ${i + 1} failed`]]);
    }
    expect(producer.status.code).toBe(SpanStatusCode.UNSET);
  });

  it("continues the trace of another producer's message: its native traceparent header is the CONSUMER span's parent", async () => {
    const broker = await start();
    const { handled, topic } = await subscribed(broker, 'foreign');
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const spanId = '00f067aa0ba902b7';
    await foreignPublish(topic, '{"from":"billing"}', { traceparent: `00-${traceId}-${spanId}-01`, tracestate: 'vendor=abc' });
    await waitFor(() => handled.length === 1, 'the handler');
    expect(handled[0].message).toEqual({ from: 'billing' });
    expect(handled[0].ctx.headers.traceparent).toBe(`00-${traceId}-${spanId}-01`);
    const consumer = await oneSpan(`process ${topic}`);
    expect(consumer.spanContext().traceId).toBe(traceId);
    expect(consumer.parentSpanContext?.spanId).toBe(spanId);
    expect(consumer.spanContext().traceState?.get('vendor')).toBe('abc');
    expect(spansNamed(`send ${topic}`)).toEqual([]);
  });

  it('starts a trace of its own for a message without trace context, whatever span was active when the consumer started or the message was sent', async () => {
    // Spans active around subscribe and around another producer's send in this process (the memory
    // broker delivers within the sender's async context): neither is the message's creation context.
    const subscription = await testTracer().startActiveSpan('bootstrap', async (span) => {
      const started = await start();
      const sub = await subscribed(started, 'no-context');
      span.end();
      return sub;
    });
    await testTracer().startActiveSpan('unrelated', async (span) => {
      await foreignPublish(subscription.topic, '{"plain":true}', {});
      span.end();
    });
    await waitFor(() => subscription.handled.length === 1, 'the handler');
    const consumer = await oneSpan(`process ${subscription.topic}`);
    expect(consumer.parentSpanContext).toBeUndefined();
    const others = exporter.getFinishedSpans().filter((span) => span !== consumer).map((span) => span.spanContext().traceId);
    expect(others).not.toContain(consumer.spanContext().traceId);
  });

  it('reads the trace context of a message whose headers are named in another case (TraceParent, TraceState)', async () => {
    const broker = await start();
    const { handled, topic } = await subscribed(broker, 'foreign-case');
    const traceId = '5bf92f3577b34da6a3ce929d0e0e4736';
    const spanId = '10f067aa0ba902b7';
    await foreignPublish(topic, '{"from":"gateway"}', { TraceParent: `00-${traceId}-${spanId}-01`, TraceState: 'vendor=def' });
    await waitFor(() => handled.length === 1, 'the handler');
    const consumer = await oneSpan(`process ${topic}`);
    expect(consumer.spanContext().traceId).toBe(traceId);
    expect(consumer.parentSpanContext?.spanId).toBe(spanId);
    expect(consumer.spanContext().traceState?.get('vendor')).toBe('def');
  });

  it("continues the trace of a CloudEvents SDK's message: the distributed-tracing extension under the binding's name", async () => {
    const broker = await start();
    const { handled, topic } = await subscribed(broker, 'foreign-ce');
    const traceId = '0af7651916cd43dd8448eb211c80319c';
    const spanId = 'b7ad6b7169203331';
    await foreignPublish(topic, '{"from":"ce-sdk"}', { [cloudEventsTraceparent]: `00-${traceId}-${spanId}-01` });
    await waitFor(() => handled.length === 1, 'the handler');
    const consumer = await oneSpan(`process ${topic}`);
    expect(consumer.spanContext().traceId).toBe(traceId);
    expect(consumer.parentSpanContext?.spanId).toBe(spanId);
  });

  it('with tracing: false, injects nothing and records nothing (a traceparent the user set is sent as it is)', async () => {
    const broker = await start({ tracing: false });
    const { handled, topic, event } = await subscribed(broker, 'off', () => {
      testTracer().startSpan('handler work').end();
    });
    const given = '00-11111111111111111111111111111111-2222222222222222-01';
    await testTracer().startActiveSpan('incoming request', async (span) => {
      await broker.publish({ env: 'prd', event, product_tag: product, input: { message: { n: 3 } } });
      await broker.publish({ env: 'prd', event, product_tag: product, input: { message: { n: 4 }, headers: { traceparent: given } } });
      span.end();
    });
    await waitFor(() => handled.length === 2, 'the handler');
    const byN = (n: number) => handled.find((h) => (h.message as { n: number }).n === n)!;
    expect(byN(3).ctx.headers.traceparent).toBeUndefined();
    expect(byN(4).ctx.headers.traceparent).toBe(given);
    const names = exporter.getFinishedSpans().map((span) => span.name);
    expect(names).not.toContain(`send ${topic}`);
    expect(names).not.toContain(`process ${topic}`);
    expect(names.filter((name) => name === 'handler work')).toHaveLength(2);
  });
}

describe('tracing on the memory broker', () => {
  const server = runUnique('trace-memory');
  afterAll(() => MemoryBrokerServer.deleteShared(server));
  tracingSuite(
    'memory',
    'memory',
    (slug) => ({ slug, type: 'memory', config: { server } }),
    (topic, body, headers) => {
      MemoryBrokerServer.shared(server).publishRaw(topic, body, headers);
      return Promise.resolve();
    },
    'ce_traceparent',
  );

  const product = runUnique('trace-memory-only');
  const options = (overrides: Partial<BrokerModuleOptions> = {}): BrokerModuleOptions => ({
    env: 'prd',
    product,
    brokers: [{ tag: 'bus', envs: [{ slug: 'prd', type: 'memory' }] }],
    ...overrides,
  });

  it("continues a traceparent the user put in the headers when no span is active, and sends the PRODUCER span's context in its place", async () => {
    const { app, broker } = await createBrokerApp(options());
    try {
      const handled: BrokerContext[] = [];
      await broker.subscribe({ env: 'prd', event: 'bus:forwarded', product_tag: product, input: { callback: (_m, ctx) => void handled.push(ctx) } });
      const traceId = 'aaaabbbbccccddddeeeeffff00001111';
      const upstream = '1234567890abcdef';
      // Outside any span: a message forwarded by hand with the context it came with.
      await context.with(ROOT_CONTEXT, () =>
        broker.publish({ env: 'prd', event: 'bus:forwarded', product_tag: product, input: { message: 1, headers: { traceparent: `00-${traceId}-${upstream}-01`, tracestate: 'up=1', 'x-app': 'kept' } } }),
      );
      await waitFor(() => handled.length === 1, 'the handler');
      const topic = `${product}.prd.forwarded`;
      const producer = await oneSpan(`send ${topic}`);
      expect(producer.spanContext().traceId).toBe(traceId);
      expect(producer.parentSpanContext?.spanId).toBe(upstream);
      expect(handled[0].headers).toEqual({ traceparent: `00-${traceId}-${producer.spanContext().spanId}-01`, tracestate: 'up=1', 'x-app': 'kept' });
      const consumer = await oneSpan(`process ${topic}`);
      expect(consumer.parentSpanContext?.spanId).toBe(producer.spanContext().spanId);

      // Within a span, the active one is the parent: the user's trace context is replaced whole, tracestate included.
      exporter.reset();
      await testTracer().startActiveSpan('incoming request', async (span) => {
        await broker.publish({ env: 'prd', event: 'bus:forwarded', product_tag: product, input: { message: 2, headers: { traceparent: `00-${traceId}-${upstream}-01`, tracestate: 'up=1' } } });
        span.end();
      });
      await waitFor(() => handled.length === 2, 'the handler');
      const second = await oneSpan(`send ${topic}`);
      const request = await oneSpan('incoming request');
      expect(second.parentSpanContext?.spanId).toBe(request.spanContext().spanId);
      expect(handled[1].headers).toEqual({ traceparent: `00-${request.spanContext().traceId}-${second.spanContext().spanId}-01` });
    } finally {
      await app.close();
    }
  });

  it('counts only the headers the user gave against maxMessageBytes, not the trace context it adds: what passes with tracing: false passes with it', async () => {
    // 100 bytes: a 70-byte body fits, with or without the 66 bytes of traceparent the module adds (and more with tracestate, baggage).
    const message = 'm'.repeat(68);
    for (const tracing of [false, undefined]) {
      const { app, broker } = await createBrokerApp(options({ maxMessageBytes: 100, tracing }));
      try {
        const handled: BrokerContext[] = [];
        await broker.subscribe({ env: 'prd', event: 'bus:sized', product_tag: product, input: { callback: (_m, ctx) => void handled.push(ctx) } });
        await testTracer().startActiveSpan('incoming request', async (span) => {
          await broker.publish({ env: 'prd', event: 'bus:sized', product_tag: product, input: { message, headers: { tracestate: 'vendor=1' } } });
          // The user's own headers still count: 35 + 70 > 100.
          const refused = await broker
            .publish({ env: 'prd', event: 'bus:sized', product_tag: product, input: { message, headers: { 'x-app': 'y'.repeat(30) } } })
            .catch((error: unknown) => error);
          expect(refused).toBeInstanceOf(BrokerError);
          expect((refused as BrokerError).code).toBe('INVALID_MESSAGE');
          span.end();
        });
        await waitFor(() => handled.length === 1, 'the handler');
        expect(handled[0].headers.traceparent === undefined).toBe(tracing === false);
      } finally {
        await app.close();
      }
    }
  });

  it('replaces a trace context the user gave in another case (Traceparent, TraceState): one traceparent on the wire, the producer span the child of the given one', async () => {
    const { app, broker } = await createBrokerApp(options());
    try {
      const handled: BrokerContext[] = [];
      await broker.subscribe({ env: 'prd', event: 'bus:forwarded-case', product_tag: product, input: { callback: (_m, ctx) => void handled.push(ctx) } });
      const traceId = 'aaaabbbbccccddddeeeeffff00002222';
      const upstream = '234567890abcdef1';
      await context.with(ROOT_CONTEXT, () =>
        broker.publish({
          env: 'prd',
          event: 'bus:forwarded-case',
          product_tag: product,
          input: { message: 1, headers: { Traceparent: `00-${traceId}-${upstream}-01`, TraceState: 'up=2', 'x-app': 'kept' } },
        }),
      );
      await waitFor(() => handled.length === 1, 'the handler');
      const producer = await oneSpan(`send ${product}.prd.forwarded-case`);
      expect(producer.parentSpanContext?.spanId).toBe(upstream);
      expect(handled[0].headers).toEqual({ traceparent: `00-${traceId}-${producer.spanContext().spanId}-01`, tracestate: 'up=2', 'x-app': 'kept' });

      // The registered propagator's own fields too: a user's Baggage gives way to the active context's baggage.
      propagation.disable();
      propagation.setGlobalPropagator(new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }));
      exporter.reset();
      const withBaggage = propagation.setBaggage(context.active(), propagation.createBaggage({ tenant: { value: 'acme' } }));
      await context.with(withBaggage, () =>
        testTracer().startActiveSpan('incoming request', async (span) => {
          await broker.publish({ env: 'prd', event: 'bus:forwarded-case', product_tag: product, input: { message: 2, headers: { Baggage: 'tenant=stale', 'x-app': 'kept' } } });
          span.end();
        }),
      );
      await waitFor(() => handled.length === 2, 'the handler');
      const second = await oneSpan(`send ${product}.prd.forwarded-case`);
      expect(handled[1].headers).toEqual({ traceparent: `00-${second.spanContext().traceId}-${second.spanContext().spanId}-01`, baggage: 'tenant=acme', 'x-app': 'kept' });
    } finally {
      propagation.disable();
      propagation.setGlobalPropagator(new W3CTraceContextPropagator());
      await app.close();
    }
  });

  /** Subscribes a handler that waits until released; resolves with the release and the count of calls. */
  async function stuckHandler(broker: MessageBrokerService, event: string) {
    let calls = 0;
    let release!: (outcome: 'resolve' | 'reject') => void;
    const released = new Promise<'resolve' | 'reject'>((resolve) => (release = resolve));
    const subscription = await broker.subscribe({
      env: 'prd',
      event,
      product_tag: product,
      input: {
        callback: async () => {
          calls++;
          if ((await released) === 'reject') throw new Error('settled after shutdown');
        },
      },
    });
    return { subscription, release, calls: () => calls };
  }

  /** Captures OpenTelemetry's diagnostic warnings (an operation on an ended span is one). */
  function diagnostics(): { warnings: string[]; stop: () => void } {
    const warnings: string[] = [];
    const record = (...args: unknown[]) => void warnings.push(args.map(String).join(' '));
    api.diag.setLogger({ error: record, warn: record, info: () => undefined, debug: () => undefined, verbose: () => undefined }, api.DiagLogLevel.WARN);
    return { warnings, stop: () => api.diag.disable() };
  }

  function expectAbandoned(span: ReadableSpan): void {
    expect(span.status.code).toBe(SpanStatusCode.ERROR);
    expect(span.status.message).toMatch(/^abandoned at shutdown: still running after 150 ms \(shutdownTimeoutMs\)/);
    expect(span.attributes['ductape.abandoned']).toBe(true);
  }

  it("ends the CONSUMER span of a handler the shutdown gave up on, as an error saying so; the handler's later settlement changes nothing", async () => {
    const { app, broker } = await createBrokerApp(options({ shutdownTimeoutMs: 150 }));
    const logged = diagnostics();
    try {
      const stuck = await stuckHandler(broker, 'bus:stuck-close');
      await broker.publish({ env: 'prd', event: 'bus:stuck-close', product_tag: product, input: { message: 1 } });
      await waitFor(() => stuck.calls() === 1, 'the handler');
      await app.close();
      const consumer = await oneSpan(`process ${product}.prd.stuck-close`);
      expectAbandoned(consumer);
      stuck.release('reject');
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(spansNamed(`process ${product}.prd.stuck-close`)).toEqual([consumer]);
      expectAbandoned(consumer);
      expect(consumer.events).toEqual([]);
      expect(logged.warnings).toEqual([]);
    } finally {
      logged.stop();
      await app.close();
    }
  });

  it('ends the CONSUMER span of a handler an unsubscribe gave up on; spans of handlers that finished in time are not touched', async () => {
    const { app, broker } = await createBrokerApp(options({ shutdownTimeoutMs: 150 }));
    const logged = diagnostics();
    try {
      const stuck = await stuckHandler(broker, 'bus:stuck-unsubscribe');
      let quick = 0;
      const done = await broker.subscribe({ env: 'prd', event: 'bus:quick', product_tag: product, input: { callback: async () => void (await Promise.resolve(quick++)) } });
      await broker.publish({ env: 'prd', event: 'bus:stuck-unsubscribe', product_tag: product, input: { message: 1 } });
      await broker.publish({ env: 'prd', event: 'bus:quick', product_tag: product, input: { message: 1 } });
      await waitFor(() => stuck.calls() === 1 && quick === 1, 'both handlers');
      await Promise.all([stuck.subscription.unsubscribe(), done.unsubscribe()]);
      expectAbandoned(await oneSpan(`process ${product}.prd.stuck-unsubscribe`));
      expect((await oneSpan(`process ${product}.prd.quick`)).status.code).toBe(SpanStatusCode.UNSET);
      stuck.release('resolve');
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(spansNamed(`process ${product}.prd.stuck-unsubscribe`)).toHaveLength(1);
      expect(logged.warnings).toEqual([]);
    } finally {
      logged.stop();
      await app.close();
    }
  });

  it('follows an SDK registered after the module was created: trace.disable() and a new provider', async () => {
    const { app, broker } = await createBrokerApp(options());
    const later = new InMemorySpanExporter();
    const laterProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(later)] });
    try {
      trace.disable();
      trace.setGlobalTracerProvider(laterProvider);
      let handled = 0;
      await broker.subscribe({ env: 'prd', event: 'bus:re-registered', product_tag: product, input: { callback: () => void handled++ } });
      await broker.publish({ env: 'prd', event: 'bus:re-registered', product_tag: product, input: { message: 1 } });
      await waitFor(() => handled === 1 && later.getFinishedSpans().length === 2, 'the handler and both spans, recorded by the new provider');
      expect(later.getFinishedSpans().map((span) => span.name).sort()).toEqual([`process ${product}.prd.re-registered`, `send ${product}.prd.re-registered`]);
      expect(exporter.getFinishedSpans()).toEqual([]);
    } finally {
      await app.close();
      trace.disable();
      trace.setGlobalTracerProvider(provider);
      await laterProvider.shutdown();
    }
  });

  it('follows an SDK registered, after the module was created, through another copy of @opentelemetry/api', async () => {
    // A module registry of its own stands for a second copy of the API (one in the library's node_modules, one in the application's).
    // Made within the isolation: the service loads the API when it is created, and a later require would get this file's copy.
    trace.disable();
    let service!: ServiceModule.MessageBrokerService;
    let otherCopy: unknown;
    jest.isolateModules(() => {
      otherCopy = jest.requireActual('@opentelemetry/api');
      const { MessageBrokerService: IsolatedService } = jest.requireActual<typeof ServiceModule>('../lib/message-broker.service');
      const { validateBrokerOptions } = jest.requireActual<typeof ValidatorModule>('../lib/broker-options.validator');
      service = new IsolatedService(validateBrokerOptions(options()));
    });
    expect(otherCopy).not.toBe(api);
    try {
      trace.setGlobalTracerProvider(provider);
      let handled = 0;
      await service.subscribe({ env: 'prd', event: 'bus:other-copy', product_tag: product, input: { callback: () => void handled++ } });
      await service.publish({ env: 'prd', event: 'bus:other-copy', product_tag: product, input: { message: 1 } });
      await waitFor(() => handled === 1, 'the handler');
      await oneSpan(`send ${product}.prd.other-copy`);
      await oneSpan(`process ${product}.prd.other-copy`);
    } finally {
      await service.onApplicationShutdown();
      trace.setGlobalTracerProvider(provider);
    }
  });

  it('marks the PRODUCER span of a refused publish as an error and ends it', async () => {
    const { app, broker } = await createBrokerApp(options({ maxMessageBytes: 64 }));
    try {
      const refused = await broker.publish({ env: 'prd', event: 'bus:big', product_tag: product, input: { message: 'x'.repeat(200) } }).catch((error: unknown) => error);
      expect(refused).toBeInstanceOf(BrokerError);
      const producer = await oneSpan(`send ${product}.prd.big`);
      expect(producer.status.code).toBe(SpanStatusCode.ERROR);
      expect(producer.attributes['error.type']).toBe('INVALID_MESSAGE');
      expect(producer.events.map((event) => event.name)).toEqual(['exception']);
    } finally {
      await app.close();
    }
  });

  it('marks the CONSUMER span of a handler that throws synchronously as an error', async () => {
    const { app, broker } = await createBrokerApp(options({ retry: { maxAttempts: 1, initialDelayMs: 0 } }));
    try {
      let calls = 0;
      await broker.subscribe({
        env: 'prd',
        event: 'bus:sync-throw',
        product_tag: product,
        input: {
          callback: () => {
            calls++;
            throw new RangeError('not a promise');
          },
        },
      });
      await broker.publish({ env: 'prd', event: 'bus:sync-throw', product_tag: product, input: { message: 1 } });
      await waitFor(() => calls === 1, 'the handler');
      const consumer = await oneSpan(`process ${product}.prd.sync-throw`);
      expect(consumer.status).toEqual({ code: SpanStatusCode.ERROR, message: 'not a promise' });
      expect(consumer.attributes['error.type']).toBe('RangeError');
    } finally {
      await app.close();
    }
  });

  it('names the messaging system after the conventions (aws_sqs / aws.sqs for SQS) and gives a Kafka key as messaging.kafka.message.key', async () => {
    const tracing = new BrokerTracing(api);
    const route = (type: string): Route => ({ event: 'bus:t', env: 'prd', product, brokerTag: 'bus', topicTag: 't', source: '/p', brokerEnv: { slug: 'prd', type }, topic: { name: `topic-${type}`, tag: 't' } });
    for (const [type, system, systemName] of [['sqs', 'aws_sqs', 'aws.sqs'], ['kafka', 'kafka', 'kafka'], ['nats', 'nats', 'nats']]) {
      await tracing.send(route(type), { message: 1, key: 'k-1' }, `id-${type}`, () => Promise.resolve());
      const ctx = { messageId: `id-${type}`, event: 'bus:t', env: 'prd', product, attempt: 3, headers: {}, key: 'k-1', publishedAt: new Date(), raw: undefined };
      await tracing.consumer(() => undefined, route(type), 'g', true).handler(1, ctx);
      const producer = await oneSpan(`send topic-${type}`);
      const consumer = await oneSpan(`process topic-${type}`);
      for (const span of [producer, consumer]) {
        expect(span.attributes).toMatchObject({ 'messaging.system': system, 'messaging.system.name': systemName });
        expect(span.attributes['messaging.kafka.message.key']).toBe(type === 'kafka' ? 'k-1' : undefined);
      }
      expect(consumer.attributes).toMatchObject({ 'ductape.message.attempt': 3, 'ductape.dead_letter': true });
      exporter.reset();
    }
  });

  it('with a propagator but no SDK, carries a received trace context on to what the handler publishes, unrecorded', async () => {
    trace.disable();
    const { app, broker } = await createBrokerApp(options());
    try {
      const seen: BrokerContext[] = [];
      await broker.subscribe({
        env: 'prd',
        event: 'bus:relay-in',
        product_tag: product,
        input: { callback: (message) => broker.publish({ env: 'prd', event: 'bus:relay-out', product_tag: product, input: { message } }).then(() => undefined) },
      });
      await broker.subscribe({ env: 'prd', event: 'bus:relay-out', product_tag: product, input: { callback: (_m, ctx) => void seen.push(ctx) } });
      const traceId = 'cccccccccccccccccccccccccccccccc';
      const spanId = 'dddddddddddddddd';
      await broker.publish({ env: 'prd', event: 'bus:relay-in', product_tag: product, input: { message: 1, headers: { traceparent: `00-${traceId}-${spanId}-01` } } });
      await waitFor(() => seen.length === 1, 'the relayed message');
      // No span was made (no SDK): the context goes through as it came, the same trace and parent.
      expect(seen[0].headers.traceparent).toBe(`00-${traceId}-${spanId}-01`);
      expect(exporter.getFinishedSpans()).toEqual([]);
    } finally {
      await app.close();
      trace.setGlobalTracerProvider(provider);
    }
  });

  it('refuses a tracing option that is not a boolean', async () => {
    const error = await startupError(options({ tracing: 'yes' as unknown as boolean }));
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.problems).toEqual(['tracing: must be true or false']);
  });

  it('runs without tracing when @opentelemetry/api cannot be loaded, and refuses tracing: true then', async () => {
    // This machine has @opentelemetry/api installed: a module factory that throws stands for an
    // application without it (or with a copy that does not load), in a module registry of its own.
    let isolated!: { service: typeof ServiceModule; validator: typeof ValidatorModule };
    jest.isolateModules(() => {
      jest.doMock('@opentelemetry/api', () => {
        throw new Error("Cannot find module '@opentelemetry/api'");
      });
      isolated = {
        service: jest.requireActual<typeof ServiceModule>('../lib/message-broker.service'),
        validator: jest.requireActual<typeof ValidatorModule>('../lib/broker-options.validator'),
      };
    });
    // The isolated modules try to load the API when they first need it: the mock stays until the test ends.
    try {
      const { MessageBrokerService: IsolatedService } = isolated.service;
      const { validateBrokerOptions } = isolated.validator;
      expect(() => validateBrokerOptions(options({ tracing: true }))).toThrow(/tracing: true needs the package '@opentelemetry\/api'/);

      // The SDK registered by this file is global (every copy of the API shares it): without the
      // API, the service still must not inject or record anything, and must publish and consume.
      const service = new IsolatedService(validateBrokerOptions(options()));
      try {
        const handled: BrokerContext[] = [];
        await service.subscribe({ env: 'prd', event: 'bus:no-api', product_tag: product, input: { callback: (_m, ctx) => void handled.push(ctx) } });
        await testTracer().startActiveSpan('incoming request', async (span) => {
          await service.publish({ env: 'prd', event: 'bus:no-api', product_tag: product, input: { message: { n: 5 }, headers: { 'x-app': 'kept' } } });
          span.end();
        });
        await waitFor(() => handled.length === 1, 'the handler');
        expect(handled[0].headers).toEqual({ 'x-app': 'kept' });
        expect(exporter.getFinishedSpans().map((span) => span.name)).toEqual(['incoming request']);
      } finally {
        await service.onApplicationShutdown();
      }
    } finally {
      jest.dontMock('@opentelemetry/api');
    }
  });
});

describeWithBroker('rabbitmq', 'tracing on RabbitMQ', () => {
  // What the suite declared is deleted at its end, by name; other RabbitMQ files restart the broker: never alongside.
  const declared = recordDeclarations();
  holdExclusively('rabbitmq', { cleanup: () => declared.deleteAll() });
  tracingSuite('rabbitmq', 'rabbitmq', (slug) => rabbitEnv(slug), (topic, body, headers) => rawPublish(topic, '', Buffer.from(body), headers), 'cloudEvents:traceparent');
});

/**
 * The declaration files reachable from `entry`'s own, each with the packages they import (by
 * import, export-from or an `import("...")` type). Each file's declarations come from
 * ts.transpileDeclaration, one file at a time (well under a second for the whole library, where a
 * declaration emit of the program takes 15 s): that keeps every import and re-export a
 * declaration needs, and drops those of implementations and private members, as tsc does. It
 * cannot see a type tsc would infer and print as an inline import("..."), which no file here relies on.
 */
function declarationImports(entry: string): Map<string, string[]> {
  const found = new Map<string, string[]>();
  const pending = [entry];
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (found.has(file)) continue;
    const declarations = ts.transpileDeclaration(fs.readFileSync(file, 'utf8'), { fileName: file, compilerOptions: { strict: true, experimentalDecorators: true } }).outputText;
    const specifiers: string[] = [];
    const visit = (node: ts.Node): void => {
      if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) specifiers.push(node.moduleSpecifier.text);
      if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) specifiers.push(node.argument.literal.text);
      ts.forEachChild(node, visit);
    };
    visit(ts.createSourceFile(`${file}.d.ts`, declarations, ts.ScriptTarget.ES2022));
    found.set(file, specifiers.filter((specifier) => !specifier.startsWith('.')));
    for (const specifier of specifiers.filter((s) => s.startsWith('.'))) {
      const base = path.resolve(path.dirname(file), specifier);
      const resolved = [`${base}.ts`, path.join(base, 'index.ts')].find((candidate) => fs.existsSync(candidate));
      if (resolved === undefined) throw new Error(`${specifier} from ${file} does not resolve`);
      pending.push(resolved);
    }
  }
  return found;
}

describe("the main entry's declarations", () => {
  it('import nothing of @opentelemetry/api, an optional peer: a project without it compiles with skipLibCheck: false', () => {
    const root = path.resolve(__dirname, '..');
    const reachable = declarationImports(path.join(root, 'lib', 'index.ts'));
    // The walk went through the library and into the tracing names the entry exports (a broken walk would find nothing to complain about).
    expect(reachable.size).toBeGreaterThan(10);
    expect([...reachable.keys()]).toContain(path.join(root, 'lib', 'tracing', 'index.ts'));
    const withOpenTelemetry = [...reachable].filter(([, packages]) => packages.some((name) => name.startsWith('@opentelemetry/'))).map(([file]) => path.relative(root, file));
    expect(withOpenTelemetry).toEqual([]);
  });
});
