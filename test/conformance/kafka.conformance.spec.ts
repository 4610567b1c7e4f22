import { KAFKA_CAPABILITIES } from '../../lib/adapters/kafka';
import { deleteCreatedKafkaResourcesAfterAll, isKafkaMock, kafkaEnv, kafkaRawReader, privateKafkaMockUnavailable, rawProduce, startPrivateKafkaMock, startPrivateKafkaServer } from '../support/kafka';
import { sleep } from '../support/wait';
import { runConformanceSuite } from './conformance.suite';
import { FEATURES } from './declarations';

// Every test names its topics with a fresh random tag; on a Kafka of the user's (KAFKA_BROKERS),
// the file deletes exactly the topics and consumer groups it created.
deleteCreatedKafkaResourcesAfterAll();

runConformanceSuite({
  broker: 'kafka',
  capabilities: KAFKA_CAPABILITIES,
  features: FEATURES.kafka,
  restart: isKafkaMock()
    ? {
        // The mock keeps its logs in its own memory: ending its process would lose them by design.
        what: "a mock cluster of the test's own: every broker down (links cut, new ones refused) for 1 s, then up; its process and logs stay",
        open: async () => {
          const mock = await startPrivateKafkaMock();
          return {
            envConfig: (slug: string) => kafkaEnv(slug, { brokers: mock.brokers }),
            restart: async () => {
              mock.control('down -1');
              await sleep(1000);
              mock.control('up -1');
            },
            close: () => mock.stop(),
          };
        },
      }
    : {
        what: "a real Kafka node of the test's own: its process stopped (SIGTERM), then started again on the same store and port",
        volume: 5000,
        open: async () => {
          const server = await startPrivateKafkaServer();
          return {
            envConfig: (slug: string) => kafkaEnv(slug, { brokers: [server.bootstrap] }),
            restart: () => server.restart(),
            close: () => server.stop(),
          };
        },
      },
  batchFailure: privateKafkaMockUnavailable()
    ? { notApplicable: `failing a real broker's requests on demand needs a mock cluster of the test's own, and ${privateKafkaMockUnavailable()}` }
    : {
        what: "the batching producer on a mock cluster of the test's own, its next Produce requests failing with INVALID_RECORD (87, not retriable)",
        open: async () => {
          const mock = await startPrivateKafkaMock();
          return {
            envConfig: (slug: string) => kafkaEnv(slug, { brokers: mock.brokers }),
            failNextRequests: (count: number) => mock.control(`errors 0 ${count} 87`),
            close: () => mock.stop(),
          };
        },
      },
  // Every new consumer group's first join takes 3 s on the mock: run the tests side by side.
  concurrentTests: true,
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
