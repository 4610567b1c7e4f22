// What the public barrel may export: names only, no type of @opentelemetry/api (an optional peer).
export { TRACE_ATTRIBUTES, TRACE_HEADERS, TRACER_NAME } from './broker-tracing';
