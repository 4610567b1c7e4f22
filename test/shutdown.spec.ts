import { spawn } from 'node:child_process';
import { join } from 'node:path';

interface Line {
  event: string;
  handler?: string;
  stats?: { published: number; delivered: number; acked: number; requeued: number };
  message?: string;
}

/**
 * SIGTERM with enableShutdownHooks, in a real child process: intake stops, the handler that can
 * finish within shutdownTimeoutMs finishes and is acked, the one that cannot is never acked.
 */
describe('SIGTERM with enableShutdownHooks (real child process)', () => {
  it('drains in-flight handlers up to shutdownTimeoutMs, acks the finished, never the unfinished', async () => {
    const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', join(__dirname, 'fixtures', 'shutdown-child.ts')], {
      cwd: join(__dirname, '..'),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: (Line & { at: number })[] = [];
    let stderr = '';
    let buffered = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      let newline: number;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const text = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (text.startsWith('{')) lines.push({ ...(JSON.parse(text) as Line), at: Date.now() });
        if (text.includes('"ready"')) child.kill('SIGTERM');
      }
    });
    const exited = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on('exit', (code, signal) => resolve({ code, signal })),
    );
    const sequence = lines.map((line) => (line.handler ? `${line.event}:${line.handler}` : line.event));
    expect({ sequence, stderr: stderr.includes('Error') ? stderr : '' }).toMatchObject({ stderr: '' });
    expect(sequence).toContain('ready');
    expect(sequence).toContain('finished:quick');
    expect(sequence).not.toContain('finished:stuck');
    expect(sequence[sequence.length - 1]).toBe('exit');
    // The quick handler finished before the process went away, and only its message was acked.
    const exit = lines[lines.length - 1];
    expect(exit.stats).toMatchObject({ published: 1, delivered: 2, acked: 1, requeued: 1 });
    // It waited for the quick handler, and gave up on the stuck one at shutdownTimeoutMs (1 s), not 60 s.
    const ready = lines.find((line) => line.event === 'ready')!;
    expect(exit.at - ready.at).toBeGreaterThanOrEqual(900);
    expect(exit.at - ready.at).toBeLessThan(5000);
    // Nest re-raises the signal once the application is closed.
    expect(exited.signal === 'SIGTERM' || exited.code === 0).toBe(true);
  }, 20000);
});
