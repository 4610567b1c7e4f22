import 'reflect-metadata';
import type { INestApplication, ModuleMetadata } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { BrokerError, DuctapeBrokerModule, MessageBrokerService, type BrokerModuleOptions } from '../../lib';

export const silentLogger = { log() {}, error() {}, warn() {}, debug() {}, verbose() {}, fatal() {} };

/** Creates and initialises a Nest application with the broker module and optional extra metadata. */
export async function createBrokerApp(
  options: BrokerModuleOptions,
  metadata: ModuleMetadata = {},
): Promise<{ app: INestApplication; broker: MessageBrokerService }> {
  const moduleRef = await Test.createTestingModule({
    ...metadata,
    imports: [DuctapeBrokerModule.forRoot(options), ...(metadata.imports ?? [])],
  })
    .setLogger(silentLogger)
    .compile();
  const app = moduleRef.createNestApplication({ logger: false });
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
