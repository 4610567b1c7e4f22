import type * as OpenTelemetryApi from '@opentelemetry/api';

/** The `@opentelemetry/api` module, typed only: its types are erased, so nothing loads it but openTelemetryApi(). */
export type OpenTelemetry = typeof OpenTelemetryApi;

/** undefined: not tried yet; null: tried, not there. */
let loaded: OpenTelemetry | null | undefined;

/**
 * `@opentelemetry/api` when it can be loaded, else undefined. It is an optional peer dependency:
 * an application without it runs the same, without tracing. Tried once per process.
 */
export function openTelemetryApi(): OpenTelemetry | undefined {
  if (loaded === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      loaded = require('@opentelemetry/api') as OpenTelemetry;
    } catch {
      // Not installed, or a copy that does not load: either way, no tracing (never a failed startup).
      loaded = null;
    }
  }
  return loaded ?? undefined;
}
