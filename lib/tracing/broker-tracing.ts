import type { Attributes, Span, SpanContext, TextMapGetter, Tracer, TracerProvider } from '@opentelemetry/api';
import { BrokerError } from '../errors';
import type { BrokerContext, BrokerMessageHandler, PublishInput } from '../interfaces/message-broker.interface';
import type { Route } from '../routing/route-resolver';
import { TRACE_ATTRIBUTES, TRACE_HEADERS, TRACER_NAME } from './names';
import { openTelemetryApi, type OpenTelemetry } from './opentelemetry';

/**
 * `messaging.system` and `messaging.system.name` of each broker type, where they are the
 * conventions' well-known values or differ; any other type (redis, nats, memory, a registered
 * one) is named as it is.
 */
const SYSTEMS: Readonly<Record<string, readonly [system: string, systemName: string]>> = {
  sqs: ['aws_sqs', 'aws.sqs'],
};

/** The rest of a publish, given the input to send (its headers carrying the trace context) and its producer span. */
export type PublishStep<R> = (route: Route, input: PublishInput<unknown>, messageId: string, span: Span | undefined) => Promise<R>;

/** What a producer or consumer span of one route says whatever the message. */
interface RouteTrace {
  readonly sendName: string;
  readonly processName: string;
  readonly system: string;
  readonly systemName: string;
  readonly kafka: boolean;
}

/**
 * Carrier reads for `propagation.extract` over a delivery's headers. A plain `traceparent` header
 * first (what this module and OpenTelemetry's client instrumentations write); else the CloudEvents
 * distributed-tracing extension as another producer's CloudEvents SDK writes it in binary mode,
 * under its binding's prefix, which the adapters leave among the headers.
 */
const HEADER_GETTER: TextMapGetter<Readonly<Record<string, string>>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => carrier[key] ?? carrier[`ce_${key}`] ?? carrier[`ce-${key}`] ?? carrier[`cloudEvents:${key}`] ?? carrier[`cloudEvents_${key}`],
};

/**
 * Producer and consumer spans after OpenTelemetry's messaging conventions, and the W3C trace
 * context carried in each message's headers. Made only when tracing is on and
 * `@opentelemetry/api` is there: with tracing off, the service never calls into this.
 */
export class BrokerTracing {
  private readonly tracer: Tracer;
  private readonly routes = new WeakMap<Route, RouteTrace>();
  /** The API's no-op provider: what an unregistered global provider delegates to. */
  private readonly noopProvider: TracerProvider;
  /** The context of a span that has none: what the no-op tracer gives without a parent. */
  private readonly noContext: SpanContext;

  constructor(private readonly api: OpenTelemetry) {
    // The global provider's tracer: a no-op until an SDK registers one, which it then follows.
    this.tracer = api.trace.getTracer(TRACER_NAME);
    this.noopProvider = new api.ProxyTracerProvider().getDelegate();
    this.noContext = api.INVALID_SPAN_CONTEXT;
  }

  /**
   * Whether anything would come of a span now: an SDK is registered, or at least a propagator
   * (which carries a context through unrecorded). Asked per message, so that an application with
   * the API but no SDK pays two lookups, not a span, its attributes and a context each time
   * (measured on the memory broker: a quarter to a third of its throughput).
   */
  private live(): boolean {
    const api = this.api;
    const provider = api.trace.getTracerProvider();
    // A provider of another copy of the API is not recognised: it counts as live, the safe side.
    if (!(provider instanceof api.ProxyTracerProvider) || provider.getDelegate() !== this.noopProvider) return true;
    return api.propagation.fields().length > 0;
  }

  /**
   * Runs `publish` within a PRODUCER span (`send <topic>`) and gives it the headers to send: the
   * user's, with the span's context injected. The span's parent is the active span; with none,
   * a `traceparent` the user put in the headers (a message forwarded by hand). The message always
   * carries the producer span's own context, so its consumer spans are that span's children. The
   * span ends when the broker accepted the message, in error when it did not.
   */
  send<R>(route: Route, input: PublishInput<unknown>, messageId: string, publish: PublishStep<R>): Promise<R> {
    if (!this.live()) return publish(route, input, messageId, undefined);
    const api = this.api;
    const given = input.headers;
    let parent = api.context.active();
    if (given !== undefined && given[TRACE_HEADERS.traceparent] !== undefined && api.trace.getSpanContext(parent) === undefined) {
      parent = api.propagation.extract(parent, given, HEADER_GETTER);
    }
    const names = this.routeTrace(route);
    const attributes: Attributes = {
      [TRACE_ATTRIBUTES.system]: names.system,
      [TRACE_ATTRIBUTES.systemName]: names.systemName,
      [TRACE_ATTRIBUTES.destination]: route.topic.name,
      [TRACE_ATTRIBUTES.operationType]: 'send',
      [TRACE_ATTRIBUTES.operationName]: 'send',
      [TRACE_ATTRIBUTES.messageId]: messageId,
      [TRACE_ATTRIBUTES.event]: route.event,
    };
    if (input.correlationId !== undefined) attributes[TRACE_ATTRIBUTES.conversationId] = input.correlationId;
    if (names.kafka && input.key !== undefined) attributes[TRACE_ATTRIBUTES.kafkaKey] = input.key;
    const span = this.tracer.startSpan(names.sendName, { kind: api.SpanKind.PRODUCER, attributes }, parent);
    let traced = input;
    // A span without a context (a no-op tracer, no parent) has none to carry: the input stays the user's object.
    if (span.spanContext() !== this.noContext) {
      const carried: Record<string, string> = { ...given };
      // The user's own trace context was the parent (or is replaced by the active one): the message carries the producer span's.
      delete carried[TRACE_HEADERS.traceparent];
      delete carried[TRACE_HEADERS.tracestate];
      api.propagation.inject(api.trace.setSpan(parent, span), carried);
      traced = { ...input, headers: carried };
    }
    let sent: Promise<R>;
    try {
      sent = publish(route, traced, messageId, span);
    } catch (error) {
      sent = Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    // Nothing to end or record on a span that is not recorded (no SDK, or sampled out).
    if (!span.isRecording()) return sent;
    return sent.then(
      (result) => {
        span.end();
        return result;
      },
      (error: unknown) => {
        this.fail(span, error);
        return Promise.reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  }

  /** Records the encoded body's size on a producer span, when the span is recorded at all. */
  encoded(span: Span, body: string | Buffer): void {
    if (span.isRecording()) span.setAttribute(TRACE_ATTRIBUTES.bodySize, typeof body === 'string' ? Buffer.byteLength(body) : body.length);
  }

  /**
   * The handler wrapped in a CONSUMER span (`process <topic>`) per delivery, the child of the
   * context its message carries (a root span when it carries none), and active while the handler
   * runs: spans the handler makes are its children. In error when the handler throws or rejects;
   * ended when it settles.
   */
  consumer(handler: BrokerMessageHandler, route: Route, group: string, deadLetter: boolean): BrokerMessageHandler {
    const api = this.api;
    const names = this.routeTrace(route);
    return (message: unknown, ctx: BrokerContext): unknown => {
      if (!this.live()) return handler(message, ctx);
      // From the root, not the active context: that is whatever was active when the consumer started.
      const parent = api.propagation.extract(api.ROOT_CONTEXT, ctx.headers, HEADER_GETTER);
      const attributes: Attributes = {
        [TRACE_ATTRIBUTES.system]: names.system,
        [TRACE_ATTRIBUTES.systemName]: names.systemName,
        [TRACE_ATTRIBUTES.destination]: route.topic.name,
        [TRACE_ATTRIBUTES.operationType]: 'process',
        [TRACE_ATTRIBUTES.operationName]: 'process',
        [TRACE_ATTRIBUTES.consumerGroup]: group,
        [TRACE_ATTRIBUTES.messageId]: ctx.messageId,
        [TRACE_ATTRIBUTES.event]: route.event,
        [TRACE_ATTRIBUTES.attempt]: ctx.attempt,
      };
      if (ctx.correlationId !== undefined) attributes[TRACE_ATTRIBUTES.conversationId] = ctx.correlationId;
      if (names.kafka && ctx.key !== undefined) attributes[TRACE_ATTRIBUTES.kafkaKey] = ctx.key;
      if (deadLetter) attributes[TRACE_ATTRIBUTES.deadLetter] = true;
      const span = this.tracer.startSpan(names.processName, { kind: api.SpanKind.CONSUMER, attributes }, parent);
      // A span without a context (no SDK) has nothing to make active: the handler runs as it is.
      if (span.spanContext() === this.noContext) return this.handle(handler, message, ctx, span);
      return api.context.with(api.trace.setSpan(parent, span), () => this.handle(handler, message, ctx, span));
    };
  }

  private handle(handler: BrokerMessageHandler, message: unknown, ctx: BrokerContext, span: Span): unknown {
    if (!span.isRecording()) return handler(message, ctx);
    let result: unknown;
    try {
      result = handler(message, ctx);
    } catch (error) {
      this.fail(span, error);
      throw error;
    }
    if (!isThenable(result)) {
      span.end();
      return result;
    }
    return Promise.resolve(result).then(
      (value) => {
        span.end();
        return value;
      },
      (error: unknown) => {
        this.fail(span, error);
        throw error;
      },
    );
  }

  /** Error status, the exception as an event, `error.type`; then ends the span. */
  private fail(span: Span, error: unknown): void {
    if (span.isRecording()) {
      const type = error instanceof BrokerError ? error.code : error instanceof Error ? error.name : typeof error;
      span.setAttribute(TRACE_ATTRIBUTES.errorType, type);
      span.recordException(error instanceof Error ? error : String(error));
      span.setStatus({ code: this.api.SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
    }
    span.end();
  }

  private routeTrace(route: Route): RouteTrace {
    let names = this.routes.get(route);
    if (names === undefined) {
      const type = route.brokerEnv.type;
      const [system, systemName] = SYSTEMS[type] ?? [type, type];
      names = { sendName: `send ${route.topic.name}`, processName: `process ${route.topic.name}`, system, systemName, kafka: type === 'kafka' };
      this.routes.set(route, names);
    }
    return names;
  }
}

/**
 * The module's tracing: undefined when `tracing` is false, or when `@opentelemetry/api` cannot be
 * loaded (the validator refuses `tracing: true` then).
 */
export function createBrokerTracing(tracing: boolean | undefined): BrokerTracing | undefined {
  if (tracing === false) return undefined;
  const api = openTelemetryApi();
  return api === undefined ? undefined : new BrokerTracing(api);
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
}
