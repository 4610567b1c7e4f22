import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKafkaServer, type KafkaServer } from './kafka-server';

/**
 * Probes each real broker the integration suites use, once per run, and tells the workers which
 * are unreachable (see broker-availability.ts). Each adapter's suite adds its broker here.
 */
const PROBES: Record<string, { host: string; port: number }> = {
  rabbitmq: endpointOf(process.env.RABBITMQ_URL ?? 'amqp://127.0.0.1:5672', 5672),
  redis: endpointOf(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', 6379),
  // NATS_URL may list several servers (comma-separated): the first is probed.
  nats: endpointOf((process.env.NATS_URL ?? 'nats://127.0.0.1:4222').split(',')[0].trim(), 4222),
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
    (async () => unavailable('kafka', await setUpKafka()))(),
    (async () => unavailable('sqs', await setUpSqs()))(),
    ...Object.entries(PROBES).map(async ([broker, { host, port }]) => unavailable(broker, await probe(host, port))),
    ...Object.entries(TOOL_PROBES).map(async ([tool, command]) => unavailable(tool, await probeCommand(command))),
  ]);
}

/**
 * Kafka: the cluster in KAFKA_BROKERS (comma-separated host:port) when set; else a real Apache
 * Kafka node started here (test/support/kafka-server.ts; the workers get KAFKA_BROKERS and
 * DUCTAPE_TEST_KAFKA_SERVER=real); else, with DUCTAPE_TEST_KAFKA=mock, librdkafka's mock cluster
 * (the workers get DUCTAPE_TEST_KAFKA_MOCK=1 and its control FIFO in DUCTAPE_TEST_KAFKA_MOCK_CONTROL).
 *
 * Whichever cluster the suites share, the mock's binary (test/kafka/mock-cluster.c, built here
 * once per change of its source and cached under node_modules/.cache/ductape) is offered to the
 * tests that need faults on demand, on a mock cluster of their own (DUCTAPE_TEST_KAFKA_MOCK_BINARY;
 * when it cannot be built, DUCTAPE_TEST_UNAVAILABLE_KAFKA_MOCK says why). A shared mock reads our
 * end of a pipe as its standard input: it ends when global-teardown.ts closes it, or when this
 * process dies, however it dies.
 */
const MOCK_SOURCE = join(__dirname, '..', 'kafka', 'mock-cluster.c');
const MOCK_BROKERS = 3;

interface KafkaMock {
  child: ChildProcess;
  control?: string;
}

const state = globalThis as typeof globalThis & { __ductapeKafkaMock?: KafkaMock; __ductapeKafkaServer?: KafkaServer; __ductapeSqsEmulator?: ChildProcess };

async function setUpKafka(): Promise<string | undefined> {
  const binary = buildKafkaMock().then(
    (built) => {
      process.env.DUCTAPE_TEST_KAFKA_MOCK_BINARY = built;
      return built;
    },
    (error: Error) => {
      process.env.DUCTAPE_TEST_UNAVAILABLE_KAFKA_MOCK = `librdkafka's mock cluster could not be built: ${error.message}`;
      return undefined;
    },
  );
  const external = process.env.KAFKA_BROKERS?.trim();
  if (external) {
    await binary;
    const first = external.split(',')[0].trim();
    const colon = first.lastIndexOf(':');
    const host = colon > 0 ? first.slice(0, colon).replace(/^\[|\]$/g, '') : first;
    const reason = await probe(host, colon > 0 ? Number(first.slice(colon + 1)) : 9092);
    return reason && `KAFKA_BROKERS=${external}: ${reason}`;
  }
  const kind = process.env.DUCTAPE_TEST_KAFKA?.trim() || 'real';
  if (kind === 'real') {
    const [reason] = await Promise.all([setUpRealKafka(), binary]);
    return reason;
  }
  if (kind !== 'mock') return `no Kafka: DUCTAPE_TEST_KAFKA=${kind} is neither 'real' (the default) nor 'mock'`;
  const built = await binary;
  if (!built) return `no Kafka: DUCTAPE_TEST_KAFKA=mock, but ${process.env.DUCTAPE_TEST_UNAVAILABLE_KAFKA_MOCK}`;
  try {
    const control = await makeFifo();
    const { child, bootstrap } = await startKafkaMock(built, control);
    state.__ductapeKafkaMock = { child, control };
    process.env.KAFKA_BROKERS = bootstrap;
    process.env.DUCTAPE_TEST_KAFKA_MOCK = '1';
    if (control) process.env.DUCTAPE_TEST_KAFKA_MOCK_CONTROL = control;
    return undefined;
  } catch (error) {
    return `no Kafka: DUCTAPE_TEST_KAFKA=mock, but librdkafka's mock cluster could not start: ${(error as Error).message}`;
  }
}

/** A real Kafka node for the run (the default): undefined when it answers, else why not. */
async function setUpRealKafka(): Promise<string | undefined> {
  try {
    const server = await startKafkaServer();
    state.__ductapeKafkaServer = server;
    process.env.KAFKA_BROKERS = server.bootstrap;
    process.env.DUCTAPE_TEST_KAFKA_SERVER = 'real';
    return undefined;
  } catch (error) {
    return `no Kafka: KAFKA_BROKERS is not set and the Kafka server could not start (it needs java 17 and, the first time, mvn with Maven Central; DUCTAPE_TEST_KAFKA=mock runs the suites on librdkafka's mock cluster instead): ${(error as Error).message}`;
  }
}

/** Stops the real Kafka node started by globalSetup (global-teardown.ts); a no-op without one. */
export async function stopKafkaServer(): Promise<void> {
  const server = state.__ductapeKafkaServer;
  state.__ductapeKafkaServer = undefined;
  if (server) await server.stop();
}

/** The launcher's path, compiled when no binary of this source is cached. */
async function buildKafkaMock(): Promise<string> {
  const source = readFileSync(MOCK_SOURCE);
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const dir = join(__dirname, '..', '..', 'node_modules', '.cache', 'ductape');
  const binary = join(dir, `kafka-mock-cluster-${hash}`);
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true });
  const partial = `${binary}.${process.pid}.tmp`; // runs in parallel each build their own, then rename
  await new Promise<void>((resolve, reject) => {
    execFile('gcc', ['-O2', '-o', partial, MOCK_SOURCE, '-lrdkafka'], { timeout: 120_000 }, (error, _stdout, stderr) => {
      if (!error) return resolve();
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return reject(new Error('gcc is not installed (apt-get install gcc)'));
      if (/rdkafka(_mock)?\.h|-lrdkafka/.test(stderr)) {
        return reject(new Error('librdkafka-dev is not installed (apt-get install librdkafka-dev)'));
      }
      reject(new Error(`gcc failed: ${stderr.trim() || error.message}`));
    });
  }).catch((error: unknown) => {
    rmSync(partial, { force: true });
    throw error;
  });
  renameSync(partial, binary);
  return binary;
}

/** A FIFO the mock reads commands from (any worker may write it), or undefined without mkfifo. */
function makeFifo(): Promise<string | undefined> {
  const path = join(tmpdir(), `ductape-kafka-mock-${process.pid}.ctl`);
  rmSync(path, { force: true });
  return new Promise((resolve) => execFile('mkfifo', ['-m', '600', path], (error) => resolve(error ? undefined : path)));
}

function startKafkaMock(binary: string, control: string | undefined): Promise<{ child: ChildProcess; bootstrap: string }> {
  const args = [...(control ? ['-c', control] : []), String(MOCK_BROKERS)];
  return spawnServer(binary, args, (line) => /^[^,\s]+:\d+(,[^,\s]+:\d+)*$/.test(line), 'a broker list').then(({ child, line }) => ({ child, bootstrap: line }));
}

/**
 * Starts a test server that prints its address as the first line on stdout and stops when its
 * standard input ends (this process keeps the other end: it never outlives the run, however the
 * run ends). None of the handles holds this process open.
 */
function spawnServer(file: string, args: string[], valid: (line: string) => boolean, what: string, timeoutMs = 10_000): Promise<{ child: ChildProcess; line: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${file}: ${why}${stderr.trim() ? ` (${stderr.trim().slice(0, 2000)})` : ''}`));
    };
    const timer = setTimeout(() => fail(`no address line within ${timeoutMs} ms`), timeoutMs);
    child.once('error', (error) => fail(error.message));
    child.once('exit', (code, signal) => fail(`exited (${signal ?? code}) before printing its address`));
    child.stderr.on('data', (chunk: Buffer) => void (stderr += chunk.toString()));
    child.stdout.on('data', function firstLine(chunk: Buffer) {
      stdout += chunk.toString();
      const newline = stdout.indexOf('\n');
      if (newline < 0) return;
      clearTimeout(timer);
      child.removeAllListeners('exit');
      child.removeAllListeners('error');
      child.stdout.off('data', firstLine);
      // Keep draining its replies and log lines.
      child.stdout.resume();
      child.stderr.removeAllListeners('data');
      child.stderr.resume();
      child.on('error', () => undefined);
      child.unref();
      for (const stream of [child.stdin, child.stdout, child.stderr]) (stream as unknown as { unref?: () => void }).unref?.();
      const line = stdout.slice(0, newline).trim();
      if (!valid(line)) return fail(`printed ${JSON.stringify(line)}, not ${what}`);
      resolve({ child, line });
    });
  });
}

/** Ends a server spawnServer started: EOF on its stdin, then SIGKILL if it lingers. */
async function stopServer(child: ChildProcess, timeoutMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.stdin?.end();
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(timer);
}

/**
 * SQS and SNS: the endpoint in SQS_ENDPOINT when set (LocalStack, say; real AWS needs credentials
 * of its own), else fauxqs 1.9.2 from npm (test/sqs/fauxqs-server.mjs). The workers get
 * SQS_ENDPOINT, plus DUCTAPE_TEST_SQS_EMULATOR=fauxqs on the emulator.
 */
async function setUpSqs(): Promise<string | undefined> {
  const external = process.env.SQS_ENDPOINT?.trim();
  if (external) {
    const { host, port } = endpointOf(external, external.startsWith('https:') ? 443 : 80);
    const reason = await probe(host, port);
    return reason && `SQS_ENDPOINT=${external}: ${reason}`;
  }
  try {
    const { child, line } = await spawnServer(process.execPath, [join(__dirname, '..', 'sqs', 'fauxqs-server.mjs')], (text) => /^https?:\/\/\S+$/.test(text), 'a URL');
    state.__ductapeSqsEmulator = child;
    process.env.SQS_ENDPOINT = line;
    process.env.DUCTAPE_TEST_SQS_EMULATOR = 'fauxqs';
    return undefined;
  } catch (error) {
    return `no SQS: SQS_ENDPOINT is not set and the fauxqs emulator could not start (npm install?): ${(error as Error).message}`;
  }
}

/** Stops the SQS emulator started by globalSetup (global-teardown.ts); a no-op without one. */
export async function stopSqsEmulator(): Promise<void> {
  const child = state.__ductapeSqsEmulator;
  state.__ductapeSqsEmulator = undefined;
  if (child) await stopServer(child);
}

/** Stops the mock started by globalSetup (global-teardown.ts); a no-op without one. */
export async function stopKafkaMock(timeoutMs = 5000): Promise<void> {
  const mock = state.__ductapeKafkaMock;
  if (!mock) return;
  state.__ductapeKafkaMock = undefined;
  const { child, control } = mock;
  await stopServer(child, timeoutMs); // EOF: it destroys the cluster and exits
  if (control) rmSync(control, { force: true });
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
