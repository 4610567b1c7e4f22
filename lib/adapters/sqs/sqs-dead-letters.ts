import { ChangeMessageVisibilityCommand, DeleteMessageCommand, ReceiveMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';
import type { InboundMessage } from '../broker-adapter';
import { readMessage } from './sqs-attributes';
import type { SqsRequests } from './sqs-requests';

/**
 * Visits, oldest first, at most `limit` of the messages a dead-letter queue had when the call
 * started, deleting each only after `visit` resolved for it.
 */
export async function drainSqsDeadLetters(
  client: SQSClient,
  requests: SqsRequests,
  url: string,
  visibilityTimeoutSeconds: number,
  limit: number,
  visit: (record: InboundMessage) => Promise<void>,
): Promise<number> {
  // What was there when the call started: a dead letter sent after that (one that failed again,
  // or any new one) is passed over, held until the end so the drain does not meet it again, then
  // shown again. SentTimestamp is SQS's clock; ours is assumed in step.
  const startedAt = Date.now();
  const passedOver: { ReceiptHandle?: string }[] = [];
  let moved = 0;
  try {
    while (moved < limit) {
      const output = await requests.request('ReceiveMessage', url, () =>
        client.send(
          new ReceiveMessageCommand({
            QueueUrl: url,
            MaxNumberOfMessages: Math.min(10, limit - moved),
            // A short long poll: it asks every SQS server, where a receive without wait samples a few.
            WaitTimeSeconds: 1,
            VisibilityTimeout: visibilityTimeoutSeconds,
            MessageAttributeNames: ['All'],
            MessageSystemAttributeNames: ['SentTimestamp', 'MessageGroupId'],
          }),
        ),
      );
      const messages = output.Messages ?? [];
      const old = messages.filter((record) => !(Number(record.Attributes?.SentTimestamp) > startedAt));
      passedOver.push(...messages.filter((record) => !old.includes(record)));
      // Nothing left, or only newer ones: done.
      if (old.length === 0) break;
      for (let i = 0; i < old.length; i++) {
        const record = old[i];
        try {
          await visit({ body: record.Body ?? '', ...readMessage(record), raw: record });
          await requests.request('DeleteMessage', url, () => client.send(new DeleteMessageCommand({ QueueUrl: url, ReceiptHandle: record.ReceiptHandle })));
        } catch (error) {
          // The rest of this batch shows again at once, not after the visibility timeout.
          await makeVisible(client, url, old.slice(i));
          throw error;
        }
        moved++;
      }
    }
  } finally {
    await makeVisible(client, url, passedOver);
  }
  return moved;
}

async function makeVisible(client: SQSClient, url: string, messages: { ReceiptHandle?: string }[]): Promise<void> {
  await Promise.all(
    messages.map((message) =>
      client.send(new ChangeMessageVisibilityCommand({ QueueUrl: url, ReceiptHandle: message.ReceiptHandle, VisibilityTimeout: 0 })).catch(() => undefined),
    ),
  );
}
