import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from './wait';

/**
 * Runs the tests of one file alone with respect to `resource`, across every Jest process on this
 * machine: a test that restarts RabbitMQ or closes its connections would break any other test on
 * the same broker. The lock is a directory (mkdir is atomic) holding its owner's pid, so a lock
 * left by a killed process is taken over. `cleanup` runs before the lock is given up.
 */
export function holdExclusively(resource: string, options: { cleanup?: () => Promise<void>; waitMs?: number } = {}): void {
  const waitMs = options.waitMs ?? 240_000;
  const lock = join(tmpdir(), `ductape-test-lock-${resource}`);
  const owner = join(lock, 'owner');
  let held = false;
  beforeAll(async () => {
    const deadline = Date.now() + waitMs;
    for (;;) {
      try {
        mkdirSync(lock);
        writeFileSync(owner, String(process.pid));
        held = true;
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        if (isStale(lock, owner)) {
          rmSync(lock, { recursive: true, force: true });
          continue;
        }
        if (Date.now() > deadline) throw new Error(`waited ${waitMs} ms for exclusive use of ${resource} (${lock})`);
        await sleep(100);
      }
    }
  }, waitMs + 1000);
  // The file's own cleanup runs here, while the lock is still held (Jest runs afterAll hooks in order).
  afterAll(async () => {
    try {
      await options.cleanup?.();
    } finally {
      if (held) rmSync(lock, { recursive: true, force: true });
    }
  });
}

/** The owner is gone, or never wrote its pid (killed between mkdir and write) a while ago. */
function isStale(lock: string, owner: string): boolean {
  let pid: number;
  try {
    pid = Number(readFileSync(owner, 'utf8'));
  } catch {
    try {
      return Date.now() - statSync(lock).mtimeMs > 5000;
    } catch {
      return false;
    }
  }
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
