import { execFile } from 'node:child_process';
import { createConnection } from 'node:net';

/**
 * Probes each real broker the integration suites use, once per run, and tells the workers which
 * are unreachable (see broker-availability.ts). Each adapter's suite adds its broker here.
 */
const PROBES: Record<string, { host: string; port: number }> = {
  rabbitmq: endpointOf(process.env.RABBITMQ_URL ?? 'amqp://127.0.0.1:5672', 5672),
};

/**
 * Server-side tools some suites drive (closing connections, restarting the broker): they need the
 * tool on this machine and a node it can reach, which a broker in a container does not give.
 */
const TOOL_PROBES: Record<string, string[]> = {
  rabbitmqctl: ['rabbitmqctl', '-q', 'status'],
};

export default async function globalSetup(): Promise<void> {
  const unavailable = (name: string, reason: string | undefined) => {
    if (reason) process.env[`DUCTAPE_TEST_UNAVAILABLE_${name.toUpperCase()}`] = reason;
  };
  await Promise.all([
    ...Object.entries(PROBES).map(async ([broker, { host, port }]) => unavailable(broker, await probe(host, port))),
    ...Object.entries(TOOL_PROBES).map(async ([tool, command]) => unavailable(tool, await probeCommand(command))),
  ]);
}

/** undefined when the command runs and exits 0 within the timeout, else why not. */
function probeCommand([file, ...args]: string[], timeoutMs = 15_000): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs }, (error) => {
      if (!error) return resolve(undefined);
      const code = (error as NodeJS.ErrnoException).code;
      resolve(code === 'ENOENT' ? `${file} is not installed on this machine` : `\`${[file, ...args].join(' ')}\` failed (${error.message.split('\n')[0]})`);
    });
  });
}

/** undefined when something accepts TCP connections on host:port, else why not. */
export function probe(host: string, port: number, timeoutMs = 1000): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = createConnection({ host, port });
    const done = (reason?: string) => {
      socket.destroy();
      resolve(reason);
    };
    socket.setTimeout(timeoutMs, () => done(`no answer from ${host}:${port} within ${timeoutMs} ms`));
    socket.once('connect', () => done());
    socket.once('error', (error) => done(`${host}:${port} unreachable (${error.message})`));
  });
}

function endpointOf(url: string, defaultPort: number): { host: string; port: number } {
  const parsed = new URL(url);
  return { host: parsed.hostname, port: Number(parsed.port || defaultPort) };
}
