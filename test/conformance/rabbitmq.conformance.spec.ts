import { RABBITMQ_CAPABILITIES } from '../../lib/adapters/rabbitmq';
import { holdExclusively } from '../support/exclusive';
import { rabbitEnv, rabbitmqctl, rawPublish, rawTopicReader, recordDeclarations } from '../support/rabbitmq';
import { sleep } from '../support/wait';
import { runConformanceSuite } from './conformance.suite';
import { FEATURES } from './declarations';

// Every test names its topics with a fresh random tag (conformance.prd.t-3f9c2a1b), and the file
// deletes, through AMQP, exactly the queues and exchanges it declared.
const declared = recordDeclarations();

/** Set once the restart test stopped the broker's app: the cleanup makes sure it runs again. */
let stoppedApp = false;

// Other RabbitMQ files restart the broker or close its connections: never alongside this one
// (and this file's restart test runs under the same lock).
holdExclusively('rabbitmq', {
  cleanup: async () => {
    if (stoppedApp) {
      await rabbitmqctl('start_app').catch(() => undefined);
      await rabbitmqctl('await_startup').catch(() => undefined);
    }
    await declared.deleteAll();
  },
});

runConformanceSuite({
  broker: 'rabbitmq',
  capabilities: RABBITMQ_CAPABILITIES,
  features: FEATURES.rabbitmq,
  restart: {
    what: 'rabbitmqctl stop_app, 1 s, start_app',
    controlsServer: "stops the RabbitMQ server's app (rabbitmqctl stop_app/start_app)",
    tool: 'rabbitmqctl',
    open: () =>
      Promise.resolve({
        // Publishes wait for the reconnect (bounded by publishTimeoutMs).
        envConfig: (slug: string) => rabbitEnv(slug, { publishTimeoutMs: 30_000 }),
        restart: async () => {
          stoppedApp = true;
          await rabbitmqctl('stop_app');
          await sleep(1000);
          await rabbitmqctl('start_app');
        },
        close: async () => {
          if (stoppedApp) await rabbitmqctl('await_startup');
        },
      }),
  },
  batchFailure: {
    notApplicable:
      'the RabbitMQ publisher does not batch: each publish goes out on the confirm channel as it comes and is settled by its own confirm, return or nack (pipelined, one message each)',
  },
  envConfig: (slug) => rabbitEnv(slug),
  // A foreign producer: plain amqplib, straight to the topic's exchange, with no message-id
  // property (test/rabbitmq/rabbitmq.adapter.spec.ts also sends one with it).
  publishRaw: (topicName, body, headers) => rawPublish(topicName, '', body, headers),
  // A foreign consumer: a queue of its own bound to the topic's exchange; its id is the AMQP message-id.
  rawReader: async (topicName) => {
    const reader = await rawTopicReader(topicName);
    return {
      next: async (timeoutMs) => {
        const { body, id, headers } = await reader.next(timeoutMs);
        return { body, id, headers };
      },
      close: () => reader.close(),
    };
  },
});
