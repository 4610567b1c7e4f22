import 'reflect-metadata';
import type { INestApplication, LoggerService, ModuleMetadata } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { BrokerError, DuctapeBrokerModule, MessageBrokerService, type BrokerModuleOptions } from '../../lib';

export const silentLogger = { log() {}, error() {}, warn() {}, debug() {}, verbose() {}, fatal() {} };

/** Creates and initialises a Nest application with the broker module and optional extra metadata. */
export async function createBrokerApp(
  options: BrokerModuleOptions,
  metadata: ModuleMetadata = {},
  logger: LoggerService = silentLogger,
): Promise<{ app: INestApplication; broker: MessageBrokerService }> {
  const moduleRef = await Test.createTestingModule({
    ...metadata,
    imports: [DuctapeBrokerModule.forRoot(options), ...(metadata.imports ?? [])],
  })
    .setLogger(logger)
    .compile();
  const app = moduleRef.createNestApplication({ logger: logger === silentLogger ? false : logger });
  await app.init();
  return { app, broker: app.get(MessageBrokerService) };
}

/** Starts an application that must fail to start, closes it if it did not, and returns the BrokerError it failed with. */
export async function startupError(options: unknown, metadata: ModuleMetadata = {}): Promise<BrokerError> {
  const error = await createBrokerApp(options as BrokerModuleOptions, metadata).then(
    async ({ app }) => {
      await app.close();
      return undefined;
    },
    (thrown: unknown) => thrown,
  );
  expect(error).toBeInstanceOf(BrokerError);
  return error as BrokerError;
}

export interface LogEntry {
  level: 'log' | 'error' | 'warn' | 'debug' | 'verbose' | 'fatal';
  /** Nest's Logger passes its context as the last parameter. */
  context: string | undefined;
  message: string;
  /** The message and every parameter, errors with their stacks: for checks of what never reaches a log. */
  text: string;
  /** When it came, in ms after the logger was made. */
  afterMs: number;
}

/** Keeps every log line of an application (and keeps them off the console). */
export class CapturingLogger implements LoggerService {
  readonly startedAt = Date.now();
  readonly entries: LogEntry[] = [];
  log = (message: unknown, ...params: unknown[]) => this.add('log', message, params);
  error = (message: unknown, ...params: unknown[]) => this.add('error', message, params);
  warn = (message: unknown, ...params: unknown[]) => this.add('warn', message, params);
  debug = (message: unknown, ...params: unknown[]) => this.add('debug', message, params);
  verbose = (message: unknown, ...params: unknown[]) => this.add('verbose', message, params);
  fatal = (message: unknown, ...params: unknown[]) => this.add('fatal', message, params);

  /** The full text of every entry. */
  get texts(): string[] {
    return this.entries.map((entry) => entry.text);
  }

  /** The first entry whose full text mentions `text`. */
  first(text: string): LogEntry | undefined {
    return this.entries.find((entry) => entry.text.includes(text));
  }

  /** Messages logged under `context` that mention `text`. */
  lines(context: string, text: string): string[] {
    return this.entries.filter((entry) => entry.context === context && entry.message.includes(text)).map((entry) => entry.message);
  }

  private add(level: LogEntry['level'], message: unknown, params: unknown[]): void {
    const last = params[params.length - 1];
    this.entries.push({
      level,
      context: typeof last === 'string' ? last : undefined,
      message: typeof message === 'string' ? message : JSON.stringify(message),
      text: [message, ...params].map(logText).join(' '),
      afterMs: Date.now() - this.startedAt,
    });
  }
}

function logText(part: unknown): string {
  if (typeof part === 'string') return part;
  if (part instanceof Error) return `${part.message} ${part.stack ?? ''}`;
  return String(JSON.stringify(part));
}
