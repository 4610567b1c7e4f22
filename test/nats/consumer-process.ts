/**
 * A member of a subscription group in a process of its own, for the SIGKILL test of
 * nats.resilience.spec.ts: run with ts-node, it subscribes (product, topic tag, group and server
 * from its arguments), prints `ready`, then `started <messageId> <attempt>` when its handler begins,
 * and never finishes a handler: the test kills it mid-handler.
 */
import 'reflect-metadata';
import { createBrokerApp } from '../support/app';
import { natsEnv } from '../support/nats';

async function main(): Promise<void> {
  const [product, tag, group, server] = process.argv.slice(2);
  const { broker } = await createBrokerApp({
    env: 'prd',
    product,
    brokers: [{ tag: 'nats', envs: [natsEnv('prd', { servers: [server], ackWaitMs: 2000 })] }],
  });
  await broker.subscribe({
    env: 'prd',
    event: `nats:${tag}`,
    product_tag: product,
    input: {
      group,
      concurrency: 1,
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
