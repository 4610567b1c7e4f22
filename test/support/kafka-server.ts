import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createWriteStream, type WriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';

/**
 * A real Apache Kafka broker for tests and `npm run kafka:local`: one KRaft node (broker and
 * controller together) on free loopback ports, its data in a temporary folder that stop() removes.
 *
 * The server's runtime classpath comes from Maven Central through kafka-server/pom.xml, copied once
 * per version into the cache folder (DUCTAPE_KAFKA_CACHE, else $XDG_CACHE_HOME/ductape-kafka, else
 * ~/.cache/ductape-kafka), then reused without Maven. It needs `java` (17 or later) and, the first
 * time, `mvn`.
 */

/** 3.9.x: the last line before Kafka 4.0 removed old protocol versions (KIP-896; docs/kafka.md). */
export const DEFAULT_KAFKA_VERSION = '3.9.2';

const POM = join(__dirname, '..', '..', 'kafka-server', 'pom.xml');

/** Settings made for tests: one node, nothing replicated, groups that form at once. */
const TEST_SETTINGS: Record<string, string> = {
  'offsets.topic.replication.factor': '1',
  'offsets.topic.num.partitions': '1',
  'transaction.state.log.replication.factor': '1',
  'transaction.state.log.min.isr': '1',
  'transaction.state.log.num.partitions': '1',
  'group.initial.rebalance.delay.ms': '0',
  'auto.create.topics.enable': 'true',
  'num.partitions': '1',
  'default.replication.factor': '1',
  'min.insync.replicas': '1',
  'delete.topic.enable': 'true',
};

export interface KafkaServerOptions {
  /** Kafka version to resolve (default DUCTAPE_KAFKA_VERSION, else DEFAULT_KAFKA_VERSION). */
  version?: string;
  /** Port of the PLAINTEXT listener (default: a free one). */
  port?: number;
  /** How long the node may take to answer an admin listTopics (default 60 s). */
  startTimeoutMs?: number;
  /** Extra server.properties entries, over the test settings. */
  settings?: Record<string, string>;
  /** The server's own log level on its stderr, kept in `<dir>/server.log` (default 'warn'). */
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
}

export interface KafkaServer {
  /** host:port of the PLAINTEXT listener. */
  bootstrap: string;
  port: number;
  version: string;
  /** The temporary folder: server.properties, data/, server.log. */
  dir: string;
  /** The node's process now (a restart starts another). */
  readonly child: ChildProcess;
  /** Resolves when the node now running exits (by stop() or on its own), to its exit code or signal. */
  readonly exited: Promise<number | string | null>;
  /** SIGTERM, SIGKILL after `timeoutMs` (default 15 s), then removes the folder. Idempotent. */
  stop(timeoutMs?: number): Promise<void>;
  /**
   * Stops the node (SIGTERM, or SIGKILL with `kill`), waits `downMs`, and starts it again on the
   * same store and port; resolves once it answers again.
   */
  restart(options?: { kill?: boolean; downMs?: number }): Promise<void>;
}

/** The folder the classpaths of each version are cached in. */
export function kafkaCacheDir(): string {
  if (process.env.DUCTAPE_KAFKA_CACHE) return process.env.DUCTAPE_KAFKA_CACHE;
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'ductape-kafka');
}

/**
 * The folder of jars of Kafka `version`: copied by Maven the first time (into a folder of this
 * process, then renamed, so parallel runs do not see half a copy), from the cache afterwards.
 */
export async function resolveKafkaClasspath(version: string): Promise<string> {
  const lib = join(kafkaCacheDir(), version, 'lib');
  if (existsSync(join(lib, '.complete'))) return lib;
  mkdirSync(join(kafkaCacheDir(), version), { recursive: true });
  const partial = `${lib}.${process.pid}.tmp`;
  rmSync(partial, { recursive: true, force: true });
  try {
    await run('mvn', ['-q', '-B', '-f', POM, 'dependency:copy-dependencies', `-Dkafka.version=${version}`, `-Dkafka.lib=${partial}`], 600_000, 'Maven');
    writeFileSync(join(partial, '.complete'), `${version}\n`);
    rmSync(lib, { recursive: true, force: true });
    try {
      renameSync(partial, lib);
    } catch (error) {
      if (!existsSync(join(lib, '.complete'))) throw error; // another run got there first: fine
    }
  } finally {
    rmSync(partial, { recursive: true, force: true });
  }
  return lib;
}

/**
 * Resolves Kafka, formats a KRaft store in a new temporary folder, starts the node and waits until
 * a kafkajs admin client can list its topics. Rejects with the reason (the server's last log lines
 * included) when it cannot, having stopped what it started.
 */
export async function startKafkaServer(options: KafkaServerOptions = {}): Promise<KafkaServer> {
  const version = options.version ?? process.env.DUCTAPE_KAFKA_VERSION ?? DEFAULT_KAFKA_VERSION;
  const lib = await resolveKafkaClasspath(version);
  const classpath = join(lib, '*');
  const [port, controllerPort] = await freePorts(options.port ? [options.port] : [], 2);
  const dir = mkdtempSync(join(tmpdir(), 'ductape-kafka-'));
  const properties = join(dir, 'server.properties');
  const settings: Record<string, string> = {
    'process.roles': 'broker,controller',
    'node.id': '1',
    'controller.quorum.voters': `1@127.0.0.1:${controllerPort}`,
    listeners: `PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}`,
    'advertised.listeners': `PLAINTEXT://127.0.0.1:${port}`,
    'listener.security.protocol.map': 'PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT',
    'controller.listener.names': 'CONTROLLER',
    'inter.broker.listener.name': 'PLAINTEXT',
    'log.dirs': join(dir, 'data'),
    ...TEST_SETTINGS,
    ...options.settings,
  };
  writeFileSync(properties, Object.entries(settings).map(([key, value]) => `${key}=${value}\n`).join(''));
  const jvm = ['-Xmx512m', '-Xms128m', '-XX:+UseSerialGC', `-Dorg.slf4j.simpleLogger.defaultLogLevel=${options.logLevel ?? 'warn'}`, '-cp', classpath];
  try {
    await run('java', [...jvm, 'kafka.tools.StorageTool', 'format', '-t', clusterId(), '-c', properties, '--ignore-formatted'], 60_000, 'kafka.tools.StorageTool format');
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }

  const bootstrap = `127.0.0.1:${port}`;
  const log = join(dir, 'server.log');
  const out = createWriteStream(log);
  const launch = async (): Promise<RunningNode> => {
    const node = spawnNode(jvm, properties, out);
    try {
      await waitUntilAnswers(bootstrap, options.startTimeoutMs ?? 60_000, node.failed);
    } catch (error) {
      await node.stop(5000).catch(() => undefined);
      const tail = readTail(log);
      throw new Error(`Kafka ${version} did not start: ${(error as Error).message}${tail ? `\n${tail}` : ''}`);
    }
    return node;
  };

  let node: RunningNode;
  try {
    node = await launch();
  } catch (error) {
    await new Promise<void>((resolve) => out.end(resolve));
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  let stopping: Promise<void> | undefined;
  const server: KafkaServer = {
    bootstrap,
    port,
    version,
    dir,
    get child() {
      return node.child;
    },
    get exited() {
      return node.exited;
    },
    stop: (timeoutMs = 15_000) =>
      (stopping ??= (async () => {
        await node.stop(timeoutMs);
        await new Promise<void>((resolve) => out.end(resolve));
        rmSync(dir, { recursive: true, force: true });
      })()),
    restart: async ({ kill = false, downMs = 0 } = {}) => {
      if (stopping) throw new Error('the Kafka server was stopped');
      await (kill ? node.kill() : node.stop(15_000));
      if (downMs > 0) await new Promise((resolve) => setTimeout(resolve, downMs));
      node = await launch();
    },
  };
  return server;
}

interface RunningNode {
  child: ChildProcess;
  exited: Promise<number | string | null>;
  /** Why the node cannot answer (it exited, java is missing), or undefined while it may yet. */
  failed(): string | undefined;
  /** SIGTERM (a clean shutdown, its logs flushed), SIGKILL after `timeoutMs`. */
  stop(timeoutMs: number): Promise<void>;
  /** SIGKILL: a crash, with whatever the store had not flushed. */
  kill(): Promise<void>;
}

/** Starts the node on `properties` (a store already formatted), its output appended to `out`. */
function spawnNode(jvm: string[], properties: string, out: WriteStream): RunningNode {
  // In this process's group: a Ctrl-C in the terminal stops it too (Kafka shuts down on SIGINT).
  const child = spawn('java', [...jvm, 'kafka.Kafka', properties], { stdio: ['ignore', 'pipe', 'pipe'] });
  // A launcher that exits without stopping it (an uncaught error, process.exit) takes it along; one
  // killed with SIGKILL cannot, and leaves the node and its folder under the system's temp folder.
  const killOnExit = () => void child.kill('SIGKILL');
  process.once('exit', killOnExit);
  child.stdout.pipe(out, { end: false });
  child.stderr.pipe(out, { end: false });
  const exited = new Promise<number | string | null>((resolve) => {
    child.once('error', () => resolve('spawn error'));
    child.once('exit', (code, signal) => resolve(signal ?? code));
  });
  void exited.then(() => process.off('exit', killOnExit));
  let spawnError: Error | undefined;
  child.once('error', (error) => void (spawnError = error));
  const alive = () => child.exitCode === null && child.signalCode === null && child.pid !== undefined && !spawnError;
  const end = async (signal: NodeJS.Signals, timeoutMs: number) => {
    if (alive()) {
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      await exited;
      clearTimeout(timer);
    }
    child.stdout.unpipe(out);
    child.stderr.unpipe(out);
  };
  return {
    child,
    exited,
    failed: () => {
      if (spawnError) return (spawnError as NodeJS.ErrnoException).code === 'ENOENT' ? 'java is not installed (apt-get install openjdk-17-jre-headless)' : spawnError.message;
      if (child.exitCode !== null || child.signalCode !== null) return `the server exited (${child.signalCode ?? child.exitCode})`;
      return undefined;
    },
    stop: (timeoutMs) => end('SIGTERM', timeoutMs),
    kill: () => end('SIGKILL', 5000),
  };
}

async function waitUntilAnswers(bootstrap: string, timeoutMs: number, failed: () => string | undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer yet';
  for (;;) {
    const why = failed();
    if (why) throw new Error(why);
    if (Date.now() > deadline) throw new Error(`no answer to an admin listTopics on ${bootstrap} within ${timeoutMs} ms (last: ${last})`);
    const admin = new Kafka({ clientId: 'ductape-kafka-server', brokers: [bootstrap], logLevel: logLevel.NOTHING, connectionTimeout: 1000, requestTimeout: 5000, retry: { retries: 0 } }).admin();
    try {
      await admin.connect();
      await admin.listTopics();
      return;
    } catch (error) {
      last = (error as Error).message;
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/**
 * A random KRaft cluster id: 16 bytes, URL-safe base64 without padding. One that begins with '-'
 * (1 in 64) is drawn again: kafka-storage's parser took it for an option ("argument
 * --cluster-id/-t: expected one argument", seen once in CI).
 */
function clusterId(): string {
  for (;;) {
    const id = Buffer.from(randomUUID().replace(/-/g, ''), 'hex').toString('base64url');
    if (!id.startsWith('-')) return id;
  }
}

/** `wanted` ports first, then free loopback ports, until there are `count`. */
async function freePorts(wanted: number[], count: number): Promise<number[]> {
  const ports = [...wanted];
  while (ports.length < count) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const { port: chosen } = server.address() as { port: number };
        server.close(() => resolve(chosen));
      });
    });
    if (!ports.includes(port)) ports.push(port);
  }
  return ports;
}

function run(file: string, args: string[], timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (!error) return resolve();
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        return reject(new Error(`${file} is not installed (apt-get install ${file === 'mvn' ? 'maven' : 'openjdk-17-jre-headless'})`));
      }
      const output = `${stdout}\n${stderr}`.trim().split('\n').filter((line) => /ERROR|Exception|error:/i.test(line)).slice(0, 10).join('\n');
      reject(new Error(`${what} failed (${error.message.split('\n')[0]})${output ? `:\n${output}` : ''}`));
    });
  });
}

function readTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}
