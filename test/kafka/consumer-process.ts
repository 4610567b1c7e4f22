/**
 * A member of a subscription group in a process of its own, for the SIGKILL test of
 * kafka.resilience.spec.ts: run with ts-node, it subscribes (product, topic tag and group from its
 * arguments, the brokers from KAFKA_BROKERS), prints `ready`, then `started <messageId> <attempt>`
 * when its handler begins, and never finishes a handler: the test kills it mid-handler.
 */
import 'reflect-metadata';
import { createBrokerApp } from '../support/app';
import { kafkaEnv } from '../support/kafka';

async function main(): Promise<void> {
  const [product, tag, group] = process.argv.slice(2);
  const { broker } = await createBrokerApp({ env: 'prd', product, brokers: [{ tag: 'kf', envs: [kafkaEnv('prd')] }] });
  await broker.subscribe({
    env: 'prd',
    event: `kf:${tag}`,
    product_tag: product,
    input: {
      group,
      concurrency: 6,
      callback: (_message: unknown, ctx: { messageId: string; attempt: number }) => {
        process.stdout.write(`started ${ctx.messageId} ${ctx.attempt}\n`);
        return new Promise<never>(() => undefined);
      },
    },
  });
  process.stdout.write('ready\n');
}

main().catch((error: unknown) => {
  process.stderr.write(`consumer process failed: ${String(error)}\n`);
  process.exit(1);
});
