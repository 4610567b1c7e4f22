// Names only, and no import of @opentelemetry/api (an optional peer): the main entry's declarations
// re-export these, and a project without the API must still compile them with skipLibCheck: false.

/** The instrumentation scope of this module's spans. */
export const TRACER_NAME = '@ductape/nestjs-broker';

/** The W3C Trace Context headers a message carries, as plain native headers (CloudEvents' distributed-tracing extension names them alike). */
export const TRACE_HEADERS = { traceparent: 'traceparent', tracestate: 'tracestate' } as const;

/**
 * Span attribute names: OpenTelemetry's messaging semantic conventions (1.x, development status),
 * and this module's own under `ductape.`.
 */
export const TRACE_ATTRIBUTES = {
  /** Kept beside messaging.system.name, which replaces it, while backends still read it. */
  system: 'messaging.system',
  systemName: 'messaging.system.name',
  destination: 'messaging.destination.name',
  operationType: 'messaging.operation.type',
  operationName: 'messaging.operation.name',
  messageId: 'messaging.message.id',
  conversationId: 'messaging.message.conversation_id',
  bodySize: 'messaging.message.body.size',
  consumerGroup: 'messaging.consumer.group.name',
  kafkaKey: 'messaging.kafka.message.key',
  errorType: 'error.type',
  /** `brokerTag:topicTag`: the destination name is the physical topic. */
  event: 'ductape.event',
  /** The delivery attempt the handler runs for, 1-based. */
  attempt: 'ductape.message.attempt',
  /** True on the span of a dead-letter subscription's handler. */
  deadLetter: 'ductape.dead_letter',
  /** True on a CONSUMER span ended at shutdown while its handler still ran (the drain gave up on it after shutdownTimeoutMs). */
  abandoned: 'ductape.abandoned',
} as const;
