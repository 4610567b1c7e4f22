import type { RetryPolicy } from '../interfaces/broker-options.interface';

export const DEFAULT_RETRY_POLICY: Readonly<Required<RetryPolicy>> = {
  maxAttempts: 3,
  initialDelayMs: 1000,
  multiplier: 2,
  maxDelayMs: 30_000,
};

/**
 * The first policy given, with defaults for what it leaves out. A field set to `undefined` (config
 * built as `{ maxDelayMs: settings.maxDelay }`, say) counts as left out: spread over the defaults
 * it would make every backoff NaN, which a timer takes as about 1 ms.
 */
export function resolveRetryPolicy(...policies: (RetryPolicy | undefined)[]): Required<RetryPolicy> {
  const policy = policies.find((candidate) => candidate !== undefined);
  return {
    maxAttempts: policy?.maxAttempts ?? DEFAULT_RETRY_POLICY.maxAttempts,
    initialDelayMs: policy?.initialDelayMs ?? DEFAULT_RETRY_POLICY.initialDelayMs,
    multiplier: policy?.multiplier ?? DEFAULT_RETRY_POLICY.multiplier,
    maxDelayMs: policy?.maxDelayMs ?? DEFAULT_RETRY_POLICY.maxDelayMs,
  };
}

/** Delay before the delivery that follows failed attempt `attempt` (1-based). */
export function backoffDelayMs(policy: Required<RetryPolicy>, attempt: number): number {
  const delay = policy.initialDelayMs * Math.pow(policy.multiplier, Math.max(0, attempt - 1));
  return Math.min(policy.maxDelayMs, Math.round(delay));
}
