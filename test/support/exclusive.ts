import { mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from './wait';

/**
 * Runs the suites of one test file alone with respect to `resource`: Jest runs files in parallel
 * workers, and a test that restarts RabbitMQ or closes its connections would break another file's
 * tests on the same broker. The lock is a directory (mkdir is atomic), named per test run.
 */
export function holdExclusively(resource: string, waitMs = 240_000): void {
  const runId = process.env.DUCTAPE_TEST_RUN_ID ?? 'local';
  const lock = join(tmpdir(), `ductape-test-lock-${resource}-${runId}`);
  let held = false;
  beforeAll(async () => {
    const deadline = Date.now() + waitMs;
    for (;;) {
      try {
        mkdirSync(lock);
        held = true;
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        if (Date.now() > deadline) throw new Error(`waited ${waitMs} ms for exclusive use of ${resource} (${lock})`);
        await sleep(100);
      }
    }
  }, waitMs + 1000);
  afterAll(() => {
    if (held) rmSync(lock, { recursive: true, force: true });
  });
}
