/**
 * `npm run kafka:local [-- --port 9092]`: the tests' real Kafka broker (kafka-server.ts) in the
 * foreground, for a developer or the sample app. Prints one line, `kafka ready at 127.0.0.1:PORT`,
 * once a client can use it; stops it (and removes its data) on SIGINT or SIGTERM. Its log is
 * `server.log` in its temporary folder; DUCTAPE_KAFKA_LOG=info makes it say more.
 */
import { startKafkaServer } from './kafka-server';

async function main(): Promise<number> {
  const portFlag = process.argv.indexOf('--port');
  const port = portFlag >= 0 ? Number(process.argv[portFlag + 1]) : undefined;
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) {
    process.stderr.write(`kafka:local: --port needs a port number, not ${process.argv[portFlag + 1]}\n`);
    return 2;
  }
  const level = process.env.DUCTAPE_KAFKA_LOG as 'error' | 'warn' | 'info' | 'debug' | undefined;
  let stopRequested = false;
  const early = () => void (stopRequested = true);
  process.on('SIGINT', early);
  process.on('SIGTERM', early);
  const server = await startKafkaServer({ port, logLevel: level });
  process.off('SIGINT', early);
  process.off('SIGTERM', early);
  if (stopRequested) {
    await server.stop();
    return 0;
  }
  process.stdout.write(`kafka ready at ${server.bootstrap}\n`);
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  const ended = await Promise.race([signalled, server.exited.then((status) => ({ status }))]);
  if (typeof ended === 'object') {
    process.stderr.write(`kafka:local: the server exited on its own (${ended.status}); its log was ${server.dir}/server.log\n`);
    await server.stop();
    return 1;
  }
  await server.stop();
  return 0;
}

main().then(
  (code) => (process.exitCode = code),
  (error: Error) => {
    process.stderr.write(`kafka:local: ${error.message}\n`);
    process.exitCode = 1;
  },
);
