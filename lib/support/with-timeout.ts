/**
 * Waiting for a promise, but not forever. The timer is cleared as soon as the promise settles,
 * so nothing stays scheduled after the wait.
 *
 *   await withTimeout(declared, 5000, () => new Error('declaring timed out'));   // rejects on timeout
 *   const settled = await waitAtMost(channel.close(), 1000);                      // false on timeout
 *
 * The promise itself keeps running after a timeout; callers that give up on it must make sure
 * its later rejection is handled (both helpers attach a handler of their own).
 */

/**
 * The promise's outcome if it settles within `ms`; otherwise rejects with `onTimeout()`.
 * `ms <= 0` times out at once (on the next turn), unless the promise is already settled by then.
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), Math.max(0, ms));
  });
  promise.catch(() => undefined);
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Resolves true once the promise fulfils within `ms`, false when `ms` passes first. Rejects if
 * the promise rejects first. For "wait a moment for this, then go on anyway".
 */
export async function waitAtMost(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), Math.max(0, ms));
  });
  promise.catch(() => undefined);
  try {
    return await Promise.race([promise.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
