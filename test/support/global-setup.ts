import { createConnection } from 'node:net';

/**
 * Probes each real broker the integration suites use, once per run, and tells the workers which
 * are unreachable (see broker-availability.ts). Each adapter's suite adds its broker here.
 */
const PROBES: Record<string, { host: string; port: number }> = {
  rabbitmq: endpointOf(process.env.RABBITMQ_URL ?? 'amqp://127.0.0.1:5672', 5672),
};

export default async function globalSetup(): Promise<void> {
  // Names this run's locks (test/support/exclusive.ts); the workers inherit the environment.
  process.env.DUCTAPE_TEST_RUN_ID = `${process.pid}-${Date.now()}`;
  await Promise.all(
    Object.entries(PROBES).map(async ([broker, { host, port }]) => {
      const reason = await probe(host, port);
      if (reason) process.env[`DUCTAPE_TEST_UNAVAILABLE_${broker.toUpperCase()}`] = reason;
    }),
  );
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
