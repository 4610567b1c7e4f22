import { RABBITMQ_CAPABILITIES } from '../../lib/adapters/rabbitmq';
import { holdExclusively } from '../support/exclusive';
import { rabbitEnv, rawPublish, rawTopicReader, recordDeclarations } from '../support/rabbitmq';
import { runConformanceSuite } from './conformance.suite';

// Every test names its topics with a fresh random tag (conformance.prd.t-3f9c2a1b), and the file
// deletes, through AMQP, exactly the queues and exchanges it declared.
const declared = recordDeclarations();

// Other RabbitMQ files restart the broker or close its connections: never alongside this one.
holdExclusively('rabbitmq', { cleanup: () => declared.deleteAll() });

runConformanceSuite({
  broker: 'rabbitmq',
  capabilities: RABBITMQ_CAPABILITIES,
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
