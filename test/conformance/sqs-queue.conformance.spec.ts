import { sqsCapabilities } from '../../lib/adapters/sqs';
import { SQS_ENDPOINT, deleteCreatedSqsResourcesAfterAll, rawSendToTopicQueue, sqsEnv, sqsQueueRawReader } from '../support/sqs';
import { runConformanceSuite } from './conformance.suite';
import { FEATURES } from './declarations';
import { startTcpProxy } from '../support/tcp-proxy';
import { sleep } from '../support/wait';

// Queue mode (Ductape's shape): a topic is one SQS queue, so there is no fan-out across groups.
// Every test names its topics with a fresh random tag; the file deletes exactly the queues,
// topics and subscriptions it created.
deleteCreatedSqsResourcesAfterAll();

runConformanceSuite({
  broker: 'sqs',
  capabilities: sqsCapabilities({ fanout: 'queue' }),
  features: FEATURES['sqs (queue mode)'],
  restart: {
    // fauxqs keeps every queue in its own memory: restarting it would lose them by design.
    what: 'every link to the endpoint cut and new ones refused for 2.5 s, through a TCP proxy; the emulator itself is not restarted',
    open: async () => {
      const proxy = await startTcpProxy(Number(new URL(SQS_ENDPOINT).port), new URL(SQS_ENDPOINT).hostname);
      return {
        // Short visibility: a message whose delete was lost in the outage comes back in seconds.
        envConfig: (slug: string) => sqsEnv(slug, { fanout: 'queue', endpoint: `http://127.0.0.1:${proxy.port}`, visibilityTimeoutSeconds: 2 }),
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
      'the SQS adapter sends each publish on its own (SendMessage), never SendMessageBatch: no producer batch to fail (deletes are batched on the consumer side)',
  },
  concurrentTests: true,
  envConfig: (slug) => sqsEnv(slug, { fanout: 'queue' }),
  // A foreign producer: the plain AWS SDK, straight to the topic's queue, headers as String attributes.
  publishRaw: (topicName, body, headers) => rawSendToTopicQueue(topicName, body, headers),
  // The queue is the group: a plain consumer of it reads it while none of ours runs.
  rawReader: (topicName) => sqsQueueRawReader(topicName),
  // Delays and retry backoffs are whole seconds on SQS.
  deliveryTimeoutMs: 8000,
  // Closing waits for an open long poll to end (1 s in tests) rather than cut it.
  closeWithinMs: 2500,
});
