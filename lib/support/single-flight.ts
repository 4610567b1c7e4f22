/**
 * Single-flight promises per key: callers that ask for the same key while its work is running
 * share one promise instead of starting the work again.
 *
 *   const queues = singleFlight<string, string>({ keepResolved: true });
 *   const url = await queues.run(name, () => createQueue(name));
 *
 * - `keepResolved: false` (default): the key is forgotten once its promise settles, so only
 *   overlapping callers share (one declaration at a time per name).
 * - `keepResolved: true`: a fulfilled promise is kept and returned to every later caller (a cache
 *   of things created once); a rejected one is forgotten, so the next call tries again.
 *
 * The shared promise always has a rejection handler: every caller may have stopped waiting (a
 * deadline passed) and its failure must not surface as an unhandled rejection.
 */
export interface SingleFlightOptions {
  /** Keep a fulfilled promise for later callers. Default false. */
  readonly keepResolved?: boolean;
}

export class SingleFlight<K, V> {
  private readonly promises = new Map<K, Promise<V>>();
  private readonly keepResolved: boolean;

  constructor(options: SingleFlightOptions = {}) {
    this.keepResolved = options.keepResolved ?? false;
  }

  /** The key's running (or kept) promise, else the promise of `work()`, started now. */
  run(key: K, work: () => Promise<V>): Promise<V> {
    const existing = this.promises.get(key);
    if (existing) return existing;
    let promise: Promise<V>;
    try {
      promise = work();
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    this.promises.set(key, promise);
    const forget = (): void => {
      // A newer promise may have taken the key after forget()/clear(): leave that one alone.
      if (this.promises.get(key) === promise) this.promises.delete(key);
    };
    promise.then(this.keepResolved ? undefined : forget, forget);
    return promise;
  }

  /** The key's promise if one is running or kept. */
  get(key: K): Promise<V> | undefined {
    return this.promises.get(key);
  }

  /** Forgets the key; its next `run` starts the work again. Callers already waiting keep their promise. */
  forget(key: K): void {
    this.promises.delete(key);
  }

  /** Forgets every key. */
  clear(): void {
    this.promises.clear();
  }

  /** The promises running or kept now. */
  values(): Promise<V>[] {
    return [...this.promises.values()];
  }

  get size(): number {
    return this.promises.size;
  }
}

/** A new SingleFlight. */
export function singleFlight<K, V>(options?: SingleFlightOptions): SingleFlight<K, V> {
  return new SingleFlight<K, V>(options);
}
