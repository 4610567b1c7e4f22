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

/** Keeps every log line, to prove what reached the logs and what never did. */
export class CapturingLogger implements LoggerService {
  readonly lines: string[] = [];
  log = (message: unknown, ...rest: unknown[]) => this.add(message, rest);
  error = (message: unknown, ...rest: unknown[]) => this.add(message, rest);
  warn = (message: unknown, ...rest: unknown[]) => this.add(message, rest);
  debug = (message: unknown, ...rest: unknown[]) => this.add(message, rest);
  verbose = (message: unknown, ...rest: unknown[]) => this.add(message, rest);
  fatal = (message: unknown, ...rest: unknown[]) => this.add(message, rest);
  private add(message: unknown, rest: unknown[]): void {
    this.lines.push([message, ...rest].map((part) => (part instanceof Error ? `${part.message} ${part.stack}` : String(part))).join(' '));
  }
}
