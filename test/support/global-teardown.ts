import { stopKafkaMock, stopKafkaServer, stopSqsEmulator } from './global-setup';

/** Stops what globalSetup started (Jest runs both in its parent process: state is on globalThis). */
export default async function globalTeardown(): Promise<void> {
  await Promise.all([stopKafkaMock(), stopKafkaServer(), stopSqsEmulator()]);
}
