import { KAFKA_CAPABILITIES } from '../../lib/adapters/kafka';
import { deleteCreatedKafkaResourcesAfterAll, isKafkaMock, kafkaEnv, kafkaRawReader, rawProduce } from '../support/kafka';
import { runConformanceSuite } from './conformance.suite';

// Every test names its topics with a fresh random tag; on a Kafka of the user's (KAFKA_BROKERS),
// the file deletes exactly the topics and consumer groups it created.
deleteCreatedKafkaResourcesAfterAll();

runConformanceSuite({
  broker: 'kafka',
  capabilities: KAFKA_CAPABILITIES,
  envConfig: (slug) => kafkaEnv(slug),
  // A foreign producer: plain kafkajs, straight to the topic, with plain headers and no ce_ ones.
  publishRaw: async (topicName, body, headers) => void (await rawProduce(topicName, body, headers)),
  // A plain kafkajs consumer in a group of its own.
  rawReader: (topicName) => kafkaRawReader(topicName),
  // A new consumer group's first join takes seconds (3 s on librdkafka's mock cluster).
  deliveryTimeoutMs: 10_000,
  // Closing leaves the consumer group (kafkajs ends its fetch and sends LeaveGroup): 1.6 s was seen
  // once in CI with the other suites running beside it.
  closeWithinMs: 3000,
  knownLimitations: isKafkaMock()
    ? {
        // Another instance joining starts a rebalance; the mock refuses offset commits while it
        // gathers members (a real broker accepts them in PreparingRebalance) and drops a member
        // that has not rejoined after session.timeout.ms, so the finished message cannot be committed.
        'on shutdown, lets an in-flight handler finish and acks it: no other instance gets it again':
          "librdkafka's mock cluster refuses offset commits during a rebalance's join phase (real Kafka accepts them)",
      }
    : undefined,
});
