import { sqsCapabilities } from '../../lib/adapters/sqs';
import { SQS_ENDPOINT, rawPublishToSnsTopic, rawSendToTopicQueue, sqsEnv, sqsFanoutRawReader, sqsQueueRawReader } from '../support/sqs';
import { startTcpProxy } from '../support/tcp-proxy';
import { sleep } from '../support/wait';
import type { ConformanceTarget } from './conformance-target';
import { FEATURES } from './declarations';

/**
 * The SQS adapter in one of its two modes: 'queue' (a topic is one SQS queue, which is the group)
 * or 'sns' (an SNS topic per topic, one SQS queue per group subscribed to it).
 */
export function sqsConformanceTarget(fanout: 'queue' | 'sns'): ConformanceTarget {
  const request = fanout === 'sns' ? 'SNS Publish' : 'SendMessage';
  return {
    broker: 'sqs',
    capabilities: sqsCapabilities({ fanout }),
    features: FEATURES[fanout === 'sns' ? 'sqs (fan-out)' : 'sqs (queue mode)'],
    restart: {
      // fauxqs keeps every queue in its own memory: restarting it would lose them by design.
      what: 'every link to the endpoint cut and new ones refused for 2.5 s, through a TCP proxy; the emulator itself is not restarted',
      open: async () => {
        const proxy = await startTcpProxy(Number(new URL(SQS_ENDPOINT).port), new URL(SQS_ENDPOINT).hostname);
        return {
          // Short visibility: a message whose delete was lost in the outage comes back in seconds.
          envConfig: (slug: string) => sqsEnv(slug, { fanout, endpoint: `http://127.0.0.1:${proxy.port}`, visibilityTimeoutSeconds: 2 }),
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
      notApplicable: `the SQS adapter sends each publish on its own (${request}), never SendMessageBatch: no producer batch to fail (deletes are batched on the consumer side)`,
    },
    concurrentTests: true,
    envConfig: (slug) => sqsEnv(slug, { fanout }),
    ...(fanout === 'sns'
      ? {
          // A foreign producer: the plain AWS SDK, publishing to the topic's SNS topic, headers as String attributes.
          publishRaw: (topicName: string, body: Buffer, headers?: Record<string, string>) => rawPublishToSnsTopic(topicName, body, headers),
          // A foreign consumer: a queue of its own subscribed to the SNS topic with raw message delivery.
          rawReader: (topicName: string) => sqsFanoutRawReader(topicName),
        }
      : {
          // A foreign producer: the plain AWS SDK, straight to the topic's queue, headers as String attributes.
          publishRaw: (topicName: string, body: Buffer, headers?: Record<string, string>) => rawSendToTopicQueue(topicName, body, headers),
          // The queue is the group: a plain consumer of it reads it while none of ours runs.
          rawReader: (topicName: string) => sqsQueueRawReader(topicName),
        }),
    // Delays and retry backoffs are whole seconds on SQS.
    deliveryTimeoutMs: 8000,
    // Closing waits for an open long poll to end (1 s in tests) rather than cut it.
    closeWithinMs: 2500,
  };
}
