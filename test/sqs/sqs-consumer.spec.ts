import type { Message, SQSClient } from '@aws-sdk/client-sqs';
import type { InboundDelivery } from '../../lib';
import { SqsConsumer } from '../../lib/adapters/sqs/sqs-consumer';
import { waitFor } from '../support/wait';

/**
 * A stand-in SQS client, on purpose: real SQS may return several messages of one FIFO group in a
 * single receive, which fauxqs never does (one per group per receive), so the in-batch order rule
 * cannot be shown on the emulator. Only the requests SqsConsumer makes are answered.
 */
function fakeClient(batch: Message[]) {
  const visibility: { handle: string; seconds: number }[] = [];
  const deleted: string[] = [];
  let served = false;
  const client = {
    send(command: { constructor: { name: string }; input: Record<string, unknown> }): Promise<unknown> {
      const input = command.input;
      switch (command.constructor.name) {
        case 'ReceiveMessageCommand':
          if (!served) {
            served = true;
            return Promise.resolve({ Messages: batch });
          }
          return new Promise((resolve) => setTimeout(() => resolve({ Messages: [] }), 20));
        case 'ChangeMessageVisibilityCommand':
          visibility.push({ handle: input.ReceiptHandle as string, seconds: input.VisibilityTimeout as number });
          return Promise.resolve({});
        case 'ChangeMessageVisibilityBatchCommand':
          for (const entry of input.Entries as { ReceiptHandle: string; VisibilityTimeout: number }[]) visibility.push({ handle: entry.ReceiptHandle, seconds: entry.VisibilityTimeout });
          return Promise.resolve({});
        case 'DeleteMessageCommand':
          deleted.push(input.ReceiptHandle as string);
          return Promise.resolve({});
        case 'DeleteMessageBatchCommand':
          for (const entry of input.Entries as { ReceiptHandle: string }[]) deleted.push(entry.ReceiptHandle);
          return Promise.resolve({});
        default:
          return Promise.reject(new Error(`unexpected ${command.constructor.name}`));
      }
    },
  };
  return { client: client as unknown as SQSClient, visibility, deleted };
}

function message(id: string, group: string): Message {
  return { MessageId: id, ReceiptHandle: `rh-${id}`, Body: id, Attributes: { MessageGroupId: group, ApproximateReceiveCount: '1' } };
}

describe('SqsConsumer on a FIFO queue', () => {
  it('gives back the rest of a group’s batch when one of it is not deleted, so nothing overtakes it', async () => {
    const { client, visibility, deleted } = fakeClient([message('A1', 'A'), message('A2', 'A'), message('B1', 'B')]);
    const handed: string[] = [];
    const consumer = new SqsConsumer(
      client,
      { queueUrl: 'https://sqs.test/1/q.fifo', queueName: 'q.fifo', concurrency: 10, waitTimeSeconds: 1, visibilityTimeoutSeconds: 30, fifo: true, retryThroughVisibility: true },
      async (delivery: InboundDelivery) => {
        const body = String(delivery.body);
        handed.push(body);
        // A1 fails: its retry waits a second; A2 must not be handled before it.
        if (body === 'A1') await delivery.retryLater!(1000);
        else await delivery.ack();
      },
      { log() {}, warn() {}, error() {}, debug() {} },
    );
    consumer.start();
    await waitFor(() => deleted.includes('rh-B1') && visibility.some((change) => change.handle === 'rh-A2'), 'B1 deleted and A2 given back');
    await consumer.close();
    expect(handed.sort()).toEqual(['A1', 'B1']);
    expect(visibility).toEqual(expect.arrayContaining([{ handle: 'rh-A1', seconds: 1 }, { handle: 'rh-A2', seconds: 0 }]));
    expect(deleted).toEqual(['rh-B1']);
  });

  it('hands a group’s batch over in order when each is deleted', async () => {
    const { client, deleted } = fakeClient([message('A1', 'A'), message('A2', 'A'), message('A3', 'A')]);
    const handed: string[] = [];
    const consumer = new SqsConsumer(
      client,
      { queueUrl: 'https://sqs.test/1/q.fifo', queueName: 'q.fifo', concurrency: 10, waitTimeSeconds: 1, visibilityTimeoutSeconds: 30, fifo: true, retryThroughVisibility: true },
      async (delivery: InboundDelivery) => {
        handed.push(String(delivery.body));
        await delivery.ack();
      },
      { log() {}, warn() {}, error() {}, debug() {} },
    );
    consumer.start();
    await waitFor(() => deleted.length === 3, 'all three deleted');
    await consumer.close();
    expect(handed).toEqual(['A1', 'A2', 'A3']);
  });
});
