import { sqsCapabilities } from '../../lib/adapters/sqs';
import { deleteCreatedSqsResourcesAfterAll, rawSendToTopicQueue, sqsEnv, sqsQueueRawReader } from '../support/sqs';
import { runConformanceSuite } from './conformance.suite';

// Queue mode (Ductape's shape): a topic is one SQS queue, so there is no fan-out across groups.
// Every test names its topics with a fresh random tag; the file deletes exactly the queues,
// topics and subscriptions it created.
deleteCreatedSqsResourcesAfterAll();

runConformanceSuite({
  broker: 'sqs',
  capabilities: sqsCapabilities({ fanout: 'queue' }),
  envConfig: (slug) => sqsEnv(slug, { fanout: 'queue' }),
  // A foreign producer: the plain AWS SDK, straight to the topic's queue, headers as String attributes.
  publishRaw: (topicName, body, headers) => rawSendToTopicQueue(topicName, body, headers),
  // The queue is the group: a plain consumer of it reads it while none of ours runs.
  rawReader: (topicName) => sqsQueueRawReader(topicName),
  // The queue is the group: it keeps what is published before any consumer.
  keepsMessagesWithoutGroup: true,
  // Delays and retry backoffs are whole seconds on SQS.
  deliveryTimeoutMs: 8000,
  // Closing waits for an open long poll to end (1 s in tests) rather than cut it.
  closeWithinMs: 2500,
});
