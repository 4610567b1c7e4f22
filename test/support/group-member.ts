import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { GroupMemberSpec } from './group-member-process';
import { waitFor } from './wait';

export type { GroupMemberSpec } from './group-member-process';

/** A group member in a process of its own (group-member-process.ts), for a test to kill mid-handler. */
export interface GroupMemberProcess {
  child: ChildProcess;
  /** Everything it printed so far, stdout and stderr. */
  output(): string;
  /** The first `started <messageId> <attempt>` it printed, if any. */
  started(): { messageId: string; attempt: number } | undefined;
}

/** Starts the member and waits until it has subscribed (or fails with what it printed). */
export async function startGroupMemberProcess(spec: GroupMemberSpec, readyWithinMs = 30_000): Promise<GroupMemberProcess> {
  const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', join(__dirname, 'group-member-process.ts'), JSON.stringify(spec)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const member: GroupMemberProcess = {
    child,
    output: () => output,
    started: () => {
      const match = /started (\S+) (\d+)/.exec(output);
      return match ? { messageId: match[1], attempt: Number(match[2]) } : undefined;
    },
  };
  try {
    await waitFor(() => output.includes('ready') || output.includes('failed') || child.exitCode !== null, 'the consumer process to subscribe', readyWithinMs);
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
  if (!output.includes('ready')) {
    child.kill('SIGKILL');
    throw new Error(`the consumer process did not subscribe: ${output.trim().slice(-2000)}`);
  }
  return member;
}
