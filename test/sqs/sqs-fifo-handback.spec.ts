import { Logger } from '@nestjs/common';
import type { SQSClient } from '@aws-sdk/client-sqs';
import type { AdapterConsumer, BrokerAdapter, OutboundMessage } from '../../lib';
import { SqsConsumer } from '../../lib/adapters/sqs/sqs-consumer';
import { resolveRetryPolicy } from '../../lib/delivery/retry';
import { SubscriptionRunner } from '../../lib/delivery/subscription-runner';
import { testRoute } from '../support/route';
import { waitFor } from '../support/wait';

/**
 * A stand-in for SQS, not the emulator: real SQS can return several messages of one FIFO message
 * group in one receive (in order, and then holds the group while any of them is in flight). fauxqs
 * returns one per group per receive, so the hand-back this tests never happens on it. The stand-in
 * does what the SQS documentation describes, and counts every receive in ApproximateReceiveCount,
 * as SQS does, including receives the consumer hands back at once.
 */
interface StoredMessage {
  id: string;
  body: string;
  group: string;
  visibleAt: number;
  receives: number;
  handle?: string;
  deleted?: boolean;
}

interface Command {
  constructor: { name: string };
  input: {
    MaxNumberOfMessages?: number;
    VisibilityTimeout?: number;
    ReceiptHandle?: string;
    Entries?: { ReceiptHandle: string; VisibilityTimeout?: number }[];
  };
}

function fifoStandIn(messages: StoredMessage[]): SQSClient {
  let handles = 0;
  const byHandle = (handle: string | undefined) => messages.find((message) => message.handle === handle && !message.deleted);
  const send = async (command: Command): Promise<unknown> => {
    const input = command.input;
    switch (command.constructor.name) {
      case 'ReceiveMessageCommand': {
        for (let waited = 0; waited < 1000; waited += 20) {
          const now = Date.now();
          const held = new Set(messages.filter((message) => !message.deleted && message.visibleAt > now).map((message) => message.group));
          const out = messages.filter((message) => !message.deleted && !held.has(message.group)).slice(0, input.MaxNumberOfMessages ?? 1);
          if (out.length > 0) {
            for (const message of out) {
              message.receives++;
              message.handle = `h${++handles}`;
              message.visibleAt = now + (input.VisibilityTimeout ?? 30) * 1000;
            }
            return {
              Messages: out.map((message) => ({
                MessageId: message.id,
                ReceiptHandle: message.handle,
                Body: message.body,
                Attributes: { ApproximateReceiveCount: String(message.receives), MessageGroupId: message.group },
              })),
            };
          }
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        return { Messages: [] };
      }
      case 'DeleteMessageCommand':
        (byHandle(input.ReceiptHandle) as StoredMessage).deleted = true;
        return {};
      case 'DeleteMessageBatchCommand':
        for (const entry of input.Entries ?? []) (byHandle(entry.ReceiptHandle) as StoredMessage).deleted = true;
        return { Failed: [] };
      case 'ChangeMessageVisibilityCommand':
        (byHandle(input.ReceiptHandle) as StoredMessage).visibleAt = Date.now() + (input.VisibilityTimeout ?? 0) * 1000;
        return {};
      case 'ChangeMessageVisibilityBatchCommand':
        for (const entry of input.Entries ?? []) (byHandle(entry.ReceiptHandle) as StoredMessage).visibleAt = Date.now() + (entry.VisibilityTimeout ?? 0) * 1000;
        return { Failed: [] };
      default:
        throw new Error(`the stand-in does not answer ${command.constructor.name}`);
    }
  };
  return { send } as unknown as SQSClient;
}

const route = testRoute('p.prd.t.fifo');

beforeAll(() => {
  Logger.overrideLogger(false);
});
afterAll(() => {
  Logger.overrideLogger(['log', 'warn', 'error']);
});

describe('SQS FIFO: messages handed back behind a retrying one of their group', () => {
  it('keep their attempts: each gets its own retries before the dead letters', async () => {
    // Plain JSON bodies: each one's id is its SQS MessageId.
    const messages: StoredMessage[] = ['A', 'B'].map((id) => ({ id, body: JSON.stringify(id), group: 'k', visibleAt: 0, receives: 0 }));
    const client = fifoStandIn(messages);
    const calls: string[] = [];
    const deadLetters: string[] = [];
    let consumer: SqsConsumer | undefined;
    const logger = { log: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };
    const adapter = {
      consume: (_topic, _options, listener) => {
        consumer = new SqsConsumer(
          client,
          { queueUrl: 'http://sqs/q.fifo', queueName: 'q.fifo', concurrency: 10, waitTimeSeconds: 1, visibilityTimeoutSeconds: 30, fifo: true, retryThroughVisibility: true },
          listener,
          logger,
        );
        consumer.start();
        return Promise.resolve(consumer as AdapterConsumer);
      },
      sendToDeadLetters: (_topic, _group, message: OutboundMessage) => {
        deadLetters.push(`${message.messageId} after ${message.headers['x-ductape-attempts']}`);
        return Promise.resolve();
      },
    } as Pick<BrokerAdapter, 'consume' | 'sendToDeadLetters'> as BrokerAdapter;
    let bFailures = 0;
    const runner = new SubscriptionRunner(
      {
        route,
        group: 'g',
        concurrency: 10,
        // Whole seconds: SQS visibility timeouts are.
        retry: resolveRetryPolicy({ maxAttempts: 3, initialDelayMs: 1000, multiplier: 1 }),
        source: 'messages',
        handler: (message, ctx) => {
          calls.push(`${String(message)} attempt ${ctx.attempt}`);
          if (message === 'A') throw new Error('A always fails');
          if (bFailures++ === 0) throw new Error('B fails once');
        },
      },
      adapter,
      new Logger('test'),
    );
    await runner.start();
    try {
      await waitFor(() => messages.every((message) => message.deleted), 'both messages settled', 15_000);
    } finally {
      await runner.stop(1000);
    }
    // B was handed back with each receive of A (its receive count went up each time), and still
    // got attempt 1, then its retry; it used to come at attempt 3 and go to the dead letters.
    expect(calls).toEqual(['A attempt 1', 'A attempt 2', 'A attempt 3', 'B attempt 1', 'B attempt 2']);
    expect(deadLetters).toEqual(['A after 3']);
    expect(messages[1].receives).toBe(4);
  }, 20_000);
});
