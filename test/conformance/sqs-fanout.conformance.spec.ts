import { sqsCapabilities } from '../../lib/adapters/sqs';
import { deleteCreatedSqsResourcesAfterAll, rawPublishToSnsTopic, sqsEnv, sqsFanoutRawReader } from '../support/sqs';
import { runConformanceSuite } from './conformance.suite';

// Fan-out mode: an SNS topic per topic, and one SQS queue per group subscribed to it.
// Every test names its topics with a fresh random tag; the file deletes exactly the queues,
// topics and subscriptions it created.
deleteCreatedSqsResourcesAfterAll();

runConformanceSuite({
  broker: 'sqs',
  capabilities: sqsCapabilities({ fanout: 'sns' }),
  envConfig: (slug) => sqsEnv(slug, { fanout: 'sns' }),
  // A foreign producer: the plain AWS SDK, publishing to the topic's SNS topic, headers as String attributes.
  publishRaw: (topicName, body, headers) => rawPublishToSnsTopic(topicName, body, headers),
  // A foreign consumer: a queue of its own subscribed to the SNS topic with raw message delivery.
  rawReader: (topicName) => sqsFanoutRawReader(topicName),
  // Delays and retry backoffs are whole seconds on SQS.
  deliveryTimeoutMs: 8000,
  // Closing waits for an open long poll to end (1 s in tests) rather than cut it.
  closeWithinMs: 2500,
});
