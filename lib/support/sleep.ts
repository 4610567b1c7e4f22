/**
 * A promise that resolves after `ms`.
 *
 *   await sleep(200);                    // keeps the process alive meanwhile
 *   await sleep(100, { unref: true });   // does not hold the process open (background retries)
 */
export interface SleepOptions {
  /** Let the process exit while sleeping. Default false. */
  readonly unref?: boolean;
}

export function sleep(ms: number, options: SleepOptions = {}): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.max(0, ms));
    if (options.unref) timer.unref();
  });
}
