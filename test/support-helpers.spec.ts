import { singleFlight } from '../lib/support/single-flight';
import { sleep } from '../lib/support/sleep';
import { waitAtMost, withTimeout } from '../lib/support/with-timeout';

function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (error: Error) => void } {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

describe('singleFlight', () => {
  it('shares one running promise among callers of the same key, and forgets it once settled', async () => {
    const flights = singleFlight<string, number>();
    const work = jest.fn(() => Promise.resolve(1));
    const [a, b] = [flights.run('k', work), flights.run('k', work)];
    expect(a).toBe(b);
    await expect(a).resolves.toBe(1);
    expect(flights.size).toBe(0);
    await flights.run('k', work);
    expect(work).toHaveBeenCalledTimes(2);
  });

  it('runs different keys separately', async () => {
    const flights = singleFlight<string, string>();
    await expect(Promise.all([flights.run('a', async () => 'A'), flights.run('b', async () => 'B')])).resolves.toEqual(['A', 'B']);
  });

  it('with keepResolved, keeps a fulfilled promise and forgets a rejected one', async () => {
    const flights = singleFlight<string, number>({ keepResolved: true });
    let calls = 0;
    const failOnce = (): Promise<number> => (++calls === 1 ? Promise.reject(new Error('down')) : Promise.resolve(calls));
    await expect(flights.run('k', failOnce)).rejects.toThrow('down');
    await expect(flights.run('k', failOnce)).resolves.toBe(2);
    await expect(flights.run('k', failOnce)).resolves.toBe(2);
    expect(calls).toBe(2);
    expect(flights.values()).toHaveLength(1);
  });

  it('turns a synchronous throw of the work into a rejection, not kept', async () => {
    const flights = singleFlight<string, number>({ keepResolved: true });
    await expect(
      flights.run('k', () => {
        throw new Error('sync');
      }),
    ).rejects.toThrow('sync');
    expect(flights.size).toBe(0);
  });

  it('leaves a newer promise in place when an older, forgotten one settles', async () => {
    const flights = singleFlight<string, number>();
    const first = deferred<number>();
    const old = flights.run('k', () => first.promise);
    flights.forget('k');
    const second = deferred<number>();
    const current = flights.run('k', () => second.promise);
    first.reject(new Error('old'));
    await expect(old).rejects.toThrow('old');
    expect(flights.get('k')).toBe(current);
    second.resolve(2);
    await expect(current).resolves.toBe(2);
  });

  it('handles a rejection nobody waits for (no unhandled rejection)', async () => {
    const flights = singleFlight<string, number>();
    const gate = deferred<number>();
    void flights.run('k', () => gate.promise).catch(() => undefined);
    gate.reject(new Error('late'));
    await sleep(5);
    expect(flights.size).toBe(0);
  });
});

describe('withTimeout', () => {
  it('passes the outcome of a promise that settles in time', async () => {
    await expect(withTimeout(Promise.resolve('ok'), 1000, () => new Error('slow'))).resolves.toBe('ok');
    await expect(withTimeout(Promise.reject(new Error('bad')), 1000, () => new Error('slow'))).rejects.toThrow('bad');
  });

  it('rejects with the timeout error when the promise is too slow', async () => {
    const never = new Promise<void>(() => undefined);
    await expect(withTimeout(never, 10, () => new Error('slow'))).rejects.toThrow('slow');
  });

  it('times out at once for a deadline already passed', async () => {
    const started = Date.now();
    await expect(withTimeout(new Promise<void>(() => undefined), -5, () => new Error('late'))).rejects.toThrow('late');
    expect(Date.now() - started).toBeLessThan(100);
  });

  it('clears its timer when the promise settles first (no timer left to hold the process)', async () => {
    const clear = jest.spyOn(global, 'clearTimeout');
    await withTimeout(Promise.resolve(1), 60_000, () => new Error('slow'));
    expect(clear).toHaveBeenCalled();
    clear.mockRestore();
  });
});

describe('waitAtMost', () => {
  it('resolves true for a promise fulfilled in time and false when time runs out', async () => {
    await expect(waitAtMost(Promise.resolve(), 1000)).resolves.toBe(true);
    await expect(waitAtMost(new Promise<void>(() => undefined), 10)).resolves.toBe(false);
  });

  it('rejects when the promise rejects first', async () => {
    await expect(waitAtMost(Promise.reject(new Error('crashed')), 1000)).rejects.toThrow('crashed');
  });

  it('does not complain when the promise rejects after the wait ended', async () => {
    const gate = deferred<void>();
    await expect(waitAtMost(gate.promise, 5)).resolves.toBe(false);
    gate.reject(new Error('late'));
    await sleep(5);
  });
});

describe('sleep', () => {
  it('resolves after about the given time', async () => {
    const started = Date.now();
    await sleep(30);
    expect(Date.now() - started).toBeGreaterThanOrEqual(25);
  });

  it('can leave the process free to exit meanwhile', async () => {
    const timers: NodeJS.Timeout[] = [];
    const real = global.setTimeout;
    const spy = jest.spyOn(global, 'setTimeout').mockImplementation(((...args: Parameters<typeof setTimeout>) => {
      const timer = real(...args);
      timers.push(timer);
      return timer;
    }));
    const slept = sleep(1, { unref: true });
    spy.mockRestore();
    expect(timers[0].hasRef()).toBe(false);
    await slept;
  });
});
