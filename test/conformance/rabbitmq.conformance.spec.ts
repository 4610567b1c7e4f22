import { RABBITMQ_CAPABILITIES } from '../../lib/adapters/rabbitmq';
import { holdExclusively } from '../support/exclusive';
import { deleteTopology, rabbitEnv, rawPublish } from '../support/rabbitmq';
import { runConformanceSuite } from './conformance.suite';

// Other RabbitMQ files restart the broker or close its connections: never alongside this one.
holdExclusively('rabbitmq', { cleanup: () => deleteTopology(['conformance.', 'shop.', 'blog.']) });

runConformanceSuite({
  broker: 'rabbitmq',
  capabilities: RABBITMQ_CAPABILITIES,
  envConfig: (slug) => rabbitEnv(slug),
  // A foreign producer: plain amqplib, straight to the topic's exchange.
  publishRaw: (topicName, body) => rawPublish(topicName, '', body),
});
