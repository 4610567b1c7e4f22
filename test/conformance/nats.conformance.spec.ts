import { NATS_CAPABILITIES } from '../../lib/adapters/nats';
import { deleteCreatedNatsResourcesAfterAll, NATS_SERVER_MISSING, natsEnv, rawPublish, rawTopicReader, startPrivateNats } from '../support/nats';
import { runConformanceSuite } from './conformance.suite';
import { FEATURES } from './declarations';

// Every test names its topics with a fresh random tag; the file deletes exactly the consumers it
// made, and each stream it made once no consumer is left on it.
deleteCreatedNatsResourcesAfterAll();

runConformanceSuite({
  broker: 'nats',
  capabilities: NATS_CAPABILITIES,
  features: FEATURES.nats,
  restart: NATS_SERVER_MISSING
    ? { notApplicable: NATS_SERVER_MISSING }
    : {
        what: "a nats-server of the test's own (JetStream, file store), stopped with SIGTERM and started again after 1 s on the same port and store directory",
        open: async () => {
          const server = await startPrivateNats();
          return {
            // Publishes wait for the reconnect (bounded by publishTimeoutMs).
            envConfig: (slug: string) => natsEnv(slug, { servers: [server.url], publishTimeoutMs: 30_000 }),
            restart: () => server.restart(1000),
            close: () => server.close(),
          };
        },
      },
  batchFailure: {
    notApplicable: 'the NATS adapter does not batch: each publish is its own JetStream request, settled by its own acknowledgement',
  },
  envConfig: (slug) => natsEnv(slug),
  // A foreign producer: the plain nats client, JetStream publish straight to the topic's subject.
  publishRaw: (topicName, body, headers) => rawPublish(topicName, body, headers),
  // A foreign consumer: a plain core subscription on the topic's subject; its id is the ce-id header.
  rawReader: (topicName) => rawTopicReader(topicName),
  deliveryTimeoutMs: 10_000,
});
