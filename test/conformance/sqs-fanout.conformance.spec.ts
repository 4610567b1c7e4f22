import { sqsCapabilities } from '../../lib/adapters/sqs';
import { SQS_ENDPOINT, deleteCreatedSqsResourcesAfterAll, rawPublishToSnsTopic, sqsEnv, sqsFanoutRawReader } from '../support/sqs';
import { runConformanceSuite } from './conformance.suite';
import { FEATURES } from './declarations';
import { startTcpProxy } from '../support/tcp-proxy';
import { sleep } from '../support/wait';

// Fan-out mode: an SNS topic per topic, and one SQS queue per group subscribed to it.
// Every test names its topics with a fresh random tag; the file deletes exactly the queues,
// topics and subscriptions it created.
deleteCreatedSqsResourcesAfterAll();

runConformanceSuite({
  broker: 'sqs',
  capabilities: sqsCapabilities({ fanout: 'sns' }),
  features: FEATURES['sqs (fan-out)'],
  restart: {
    // fauxqs keeps every queue in its own memory: restarting it would lose them by design.
    what: 'every link to the endpoint cut and new ones refused for 2.5 s, through a TCP proxy; the emulator itself is not restarted',
    open: async () => {
      const proxy = await startTcpProxy(Number(new URL(SQS_ENDPOINT).port), new URL(SQS_ENDPOINT).hostname);
      return {
        // Short visibility: a message whose delete was lost in the outage comes back in seconds.
        envConfig: (slug: string) => sqsEnv(slug, { fanout: 'sns', endpoint: `http://127.0.0.1:${proxy.port}`, visibilityTimeoutSeconds: 2 }),
        restart: async () => {
          proxy.refuse(true);
          proxy.cutAll();
          await sleep(2500);
          proxy.refuse(false);
        },
        close: () => Promise.resolve(proxy.close()),
      };
    },
  },
  batchFailure: {
    notApplicable:
      'the SQS adapter sends each publish on its own (SNS Publish), never SendMessageBatch: no producer batch to fail (deletes are batched on the consumer side)',
  },
  concurrentTests: true,
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
