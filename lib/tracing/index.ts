// What the public barrel may export: names only, from a file without any @opentelemetry/api import
// (an optional peer), so the main entry's declarations never reach broker-tracing.ts.
export { TRACE_ATTRIBUTES, TRACE_HEADERS, TRACER_NAME } from './names';
