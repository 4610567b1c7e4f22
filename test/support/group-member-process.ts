/**
 * A member of a subscription group in a process of its own, for the tests that kill a consumer
 * mid-handler (SIGKILL): run by startGroupMemberProcess (group-member.ts) with ts-node, it
 * subscribes to the event with the group, concurrency and broker env given as one JSON argument,
 * prints `ready`, then `started <messageId> <attempt>` when a handler begins, and never finishes a
 * handler.
 */
import 'reflect-metadata';
import type { BrokerEnvConfig } from '../../lib';
import { createBrokerApp } from './app';

export interface GroupMemberSpec {
  product: string;
  /** `brokerTag:topicTag`: the broker tag names the one broker, served by `env`. */
  event: string;
  group: string;
  concurrency: number;
  /** The broker's env `prd`, as plain JSON. */
  env: BrokerEnvConfig;
}

async function main(spec: GroupMemberSpec): Promise<void> {
  const [brokerTag] = spec.event.split(':');
  const { broker } = await createBrokerApp({ env: 'prd', product: spec.product, brokers: [{ tag: brokerTag, envs: [spec.env] }] });
  await broker.subscribe({
    env: 'prd',
    event: spec.event,
    product_tag: spec.product,
    input: {
      group: spec.group,
      concurrency: spec.concurrency,
      callback: (_message: unknown, ctx: { messageId: string; attempt: number }) => {
        process.stdout.write(`started ${ctx.messageId} ${ctx.attempt}\n`);
        return new Promise<never>(() => undefined);
      },
    },
  });
  process.stdout.write('ready\n');
}

if (require.main === module) {
  main(JSON.parse(process.argv[2]) as GroupMemberSpec).catch((error: unknown) => {
    process.stderr.write(`consumer process failed: ${String(error)}\n`);
    process.exit(1);
  });
}
