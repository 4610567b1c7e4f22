import type { Attributes, Span, SpanContext, TextMapGetter, Tracer, TracerProvider } from '@opentelemetry/api';
import { BrokerError } from '../errors';
import type { BrokerContext, BrokerMessageHandler, PublishInput } from '../interfaces/message-broker.interface';
import type { Route } from '../routing/route-resolver';
import { TRACE_ATTRIBUTES, TRACE_HEADERS, TRACER_NAME } from './names';
import { openTelemetryApi, type OpenTelemetry } from './opentelemetry';

/** Where @opentelemetry/api 1.x keeps what is registered (`trace`, `propagation`, `context`, ...). */
const OPENTELEMETRY_REGISTRY = Symbol.for('opentelemetry.js.api.1');

interface OpenTelemetryRegistry {
  trace?: unknown;
  propagation?: unknown;
}

/**
 * `messaging.system` and `messaging.system.name` of each broker type, where they are the
 * conventions' well-known values or differ; any other type (redis, nats, memory, a registered
 * one) is named as it is.
 */
const SYSTEMS: Readonly<Record<string, readonly [system: string, systemName: string]>> = {
  sqs: ['aws_sqs', 'aws.sqs'],
};

/**
 * The rest of a publish, given the user's input, its producer span, and the headers to send: the
 * user's with the trace context in place of theirs. Apart, because only the user's own headers
 * count against maxMessageBytes: the trace context's size depends on the propagator and the
 * caller's baggage (up to 8 KB), and must not make a publish fail that passes with tracing off.
 */
export type PublishStep<R> = (
  route: Route,
  input: PublishInput<unknown>,
  messageId: string,
  span: Span | undefined,
  headers: Readonly<Record<string, string>> | undefined,
) => Promise<R>;

/** A handler wrapped in CONSUMER spans, and the spans of its calls still running. */
export interface TracedConsumer {
  readonly handler: BrokerMessageHandler;
  /**
   * Ends the spans of the calls still running, as abandoned: the subscription's drain gave up on
   * them after `timeoutMs`. Their handlers' later settlement changes nothing. A span that was not
   * ended would never be exported.
   */
  abandon(timeoutMs: number): void;
}

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
 * under its binding's prefix, which the adapters leave among the headers. Names are matched
 * ignoring case (a gateway's `Traceparent`), as HTTP header names are: exactly first, which is
 * what this module writes, so a scan of the names only for a message without trace context.
 */
const HEADER_GETTER: TextMapGetter<Readonly<Record<string, string>>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) =>
    carrier[key] ?? carrier[`ce_${key}`] ?? carrier[`ce-${key}`] ?? carrier[`cloudEvents:${key}`] ?? carrier[`cloudEvents_${key}`] ?? headerInAnyCase(carrier, key),
};

function headerInAnyCase(carrier: Readonly<Record<string, string>>, key: string): string | undefined {
  const plain = key.toLowerCase();
  let prefixed: string | undefined;
  for (const name in carrier) {
    if (name.length < plain.length) continue;
    const lower = name.toLowerCase();
    if (lower === plain) return carrier[name];
    if (prefixed === undefined && (lower === `ce_${plain}` || lower === `ce-${plain}` || lower === `cloudevents:${plain}` || lower === `cloudevents_${plain}`)) {
      prefixed = carrier[name];
    }
  }
  return prefixed;
}

/**
 * Producer and consumer spans after OpenTelemetry's messaging conventions, and the W3C trace
 * context carried in each message's headers. Made only when tracing is on and
 * `@opentelemetry/api` is there: with tracing off, the service never calls into this.
 */
export class BrokerTracing {
  /**
   * The global provider this module's tracer came from. Asked again per message: after
   * trace.disable() and a new registration, or a registration through another copy of the API,
   * the global provider is another object, and a tracer kept from the first never records.
   */
  private provider: TracerProvider;
  private tracer: Tracer;
  private readonly routes = new WeakMap<Route, RouteTrace>();
  /** The API's no-op provider: what an unregistered global provider delegates to. */
  private readonly noopProvider: TracerProvider;
  /** The context of a span that has none: what the no-op tracer gives without a parent. */
  private readonly noContext: SpanContext;

  constructor(private readonly api: OpenTelemetry) {
    // The global provider's tracer: a no-op until an SDK registers one, which it then follows.
    this.provider = api.trace.getTracerProvider();
    this.tracer = this.provider.getTracer(TRACER_NAME);
    this.noopProvider = new api.ProxyTracerProvider().getDelegate();
    this.noContext = api.INVALID_SPAN_CONTEXT;
  }

  /**
   * Whether anything would come of a span now: an SDK is registered, or at least a propagator
   * (which carries a context through unrecorded). Asked per message, so that an application with
   * the API but no SDK pays two lookups, not a span, its attributes and a context each time
   * (measured on the memory broker: a quarter to a third of its throughput). The tracer of the
   * global provider when it is; undefined when not.
   */
  private liveTracer(): Tracer | undefined {
    // First the API's own registry, shared by every 1.x copy: with no provider and no propagator
    // registered there, nothing can come of a span (one property read, not the two lookups below).
    const registry = (globalThis as Record<symbol, OpenTelemetryRegistry | undefined>)[OPENTELEMETRY_REGISTRY];
    if (registry === undefined || (registry.trace === undefined && registry.propagation === undefined)) return undefined;
    const api = this.api;
    const provider = api.trace.getTracerProvider();
    if (provider !== this.provider) {
      this.provider = provider;
      this.tracer = provider.getTracer(TRACER_NAME);
    }
    // A provider of another copy of the API is not recognised: it counts as live, the safe side.
    if (provider instanceof api.ProxyTracerProvider && provider.getDelegate() === this.noopProvider && api.propagation.fields().length === 0) return undefined;
    return this.tracer;
  }

  /**
   * The names, in the user's headers, of trace context headers: `traceparent`, `tracestate` and
   * the registered propagator's fields (`baggage`, say), in any case. Undefined when none.
   */
  private traceHeadersIn(headers: Readonly<Record<string, string>>): string[] | undefined {
    let fields: string[] | undefined;
    let names: string[] | undefined;
    for (const name in headers) {
      const lower = name.toLowerCase();
      if (lower === TRACE_HEADERS.traceparent || lower === TRACE_HEADERS.tracestate || (fields ??= this.api.propagation.fields().map((field) => field.toLowerCase())).includes(lower)) {
        (names ??= []).push(name);
      }
    }
    return names;
  }

  /**
   * Runs `publish` within a PRODUCER span (`send <topic>`) and gives it the headers to send: the
   * user's, with the span's context injected. The span's parent is the active span; with none,
   * a trace context the user put in the headers (a message forwarded by hand). The message always
   * carries the producer span's own context, so its consumer spans are that span's children: the
   * user's trace headers (in any case: `Traceparent` too) give way to it. The span ends when the
   * broker accepted the message, in error when it did not.
   */
  send<R>(route: Route, input: PublishInput<unknown>, messageId: string, publish: PublishStep<R>): Promise<R> {
    const tracer = this.liveTracer();
    if (tracer === undefined) return publish(route, input, messageId, undefined, input.headers);
    const api = this.api;
    const given = input.headers;
    const own = given === undefined ? undefined : this.traceHeadersIn(given);
    let parent = api.context.active();
    if (own !== undefined && given !== undefined && api.trace.getSpanContext(parent) === undefined) {
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
    const span = tracer.startSpan(names.sendName, { kind: api.SpanKind.PRODUCER, attributes }, parent);
    let headers = given;
    // A span without a context (a no-op tracer, no parent) has none to carry: the headers stay the user's object.
    if (span.spanContext() !== this.noContext) {
      const carried: Record<string, string> = { ...given };
      // The user's own trace context was the parent (or is replaced by the active one): the message carries the producer span's.
      if (own !== undefined) for (const name of own) delete carried[name];
      api.propagation.inject(api.trace.setSpan(parent, span), carried);
      headers = carried;
    }
    let sent: Promise<R>;
    try {
      sent = publish(route, input, messageId, span, headers);
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
   * ended when it settles, or when the subscription's drain gives up on it (`abandon`).
   * A dead-letter subscription's span names the topic too (with `ductape.dead_letter`): each
   * adapter names its dead-letter queue its own way, and the route does not carry that name.
   */
  consumer(handler: BrokerMessageHandler, route: Route, group: string, deadLetter: boolean): TracedConsumer {
    const api = this.api;
    const names = this.routeTrace(route);
    // The spans of calls still running whose handler returned a promise (a synchronous one has ended its span on return).
    const open = new Set<Span>();
    const traced = (message: unknown, ctx: BrokerContext): unknown => {
      const tracer = this.liveTracer();
      if (tracer === undefined) return handler(message, ctx);
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
      const span = tracer.startSpan(names.processName, { kind: api.SpanKind.CONSUMER, attributes }, parent);
      // A span without a context (no SDK) has nothing to make active: the handler runs as it is.
      if (span.spanContext() === this.noContext) return this.handle(handler, message, ctx, span, open);
      return api.context.with(api.trace.setSpan(parent, span), () => this.handle(handler, message, ctx, span, open));
    };
    return {
      handler: traced,
      abandon: (timeoutMs) => {
        for (const span of open) {
          span.setAttribute(TRACE_ATTRIBUTES.abandoned, true);
          span.setStatus({
            code: api.SpanStatusCode.ERROR,
            message: `abandoned at shutdown: still running after ${timeoutMs} ms (shutdownTimeoutMs); its message is not acked and will be delivered again`,
          });
          span.end();
        }
        open.clear();
      },
    };
  }

  private handle(handler: BrokerMessageHandler, message: unknown, ctx: BrokerContext, span: Span, open: Set<Span>): unknown {
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
    open.add(span);
    // Not in `open` any more: abandoned at shutdown and already ended; its settlement is not recorded.
    return Promise.resolve(result).then(
      (value) => {
        if (open.delete(span)) span.end();
        return value;
      },
      (error: unknown) => {
        if (open.delete(span)) this.fail(span, error);
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
