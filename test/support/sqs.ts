import {
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SetQueueAttributesCommand,
  SQSClient,
  type Message,
  type MessageAttributeValue,
} from '@aws-sdk/client-sqs';
import { CreateTopicCommand, DeleteTopicCommand, ListTopicsCommand, PublishCommand, SNSClient, SubscribeCommand, UnsubscribeCommand } from '@aws-sdk/client-sns';
import { randomUUID } from 'node:crypto';
import type { SqsEnvConfig } from '../../lib';
import { snsTopicName, topicQueueName } from '../../lib/adapters/sqs';
import type { RawReader, RawRecord } from '../conformance/conformance-target';

/**
 * The SQS (and SNS) endpoint the integration suites use: SQS_ENDPOINT, which
 * test/support/global-setup.ts sets to fauxqs, an emulator from npm, when it was not set.
 */
export const SQS_ENDPOINT = process.env.SQS_ENDPOINT ?? '';
export const SQS_REGION = process.env.SQS_REGION ?? 'us-east-1';

/** True on fauxqs: it checks no credentials, and keeps everything in memory. */
export function isSqsEmulator(): boolean {
  return process.env.DUCTAPE_TEST_SQS_EMULATOR === 'fauxqs';
}

const CREDENTIALS = { accessKeyId: 'test', secretAccessKey: 'test-secret-key' };

/**
 * An env config for tests: long polls of 1 s, so that closing (which waits for an open poll
 * rather than cut it) takes about a second.
 */
export function sqsEnv(slug: string, config: Partial<SqsEnvConfig['config']> = {}): SqsEnvConfig {
  return {
    slug,
    type: 'sqs',
    config: { region: SQS_REGION, endpoint: SQS_ENDPOINT, ...CREDENTIALS, waitTimeSeconds: 1, ...config },
  };
}

let sqs: SQSClient | undefined;
let sns: SNSClient | undefined;

/** A plain SDK client on the test endpoint, as a foreign producer or an operator would use. */
export function sqsClient(): SQSClient {
  sqs ??= new SQSClient({ region: SQS_REGION, endpoint: SQS_ENDPOINT, credentials: CREDENTIALS });
  return sqs;
}

export function snsClient(): SNSClient {
  sns ??= new SNSClient({ region: SQS_REGION, endpoint: SQS_ENDPOINT, credentials: CREDENTIALS });
  return sns;
}

export async function queueUrl(name: string, attributes?: Record<string, string>): Promise<string> {
  const output = await sqsClient().send(new CreateQueueCommand({ QueueName: name, Attributes: attributes }));
  return output.QueueUrl!;
}

/** Application headers as a plain SDK user writes them: one String attribute each. */
export function plainAttributes(headers: Record<string, string> = {}): Record<string, MessageAttributeValue> | undefined {
  const entries = Object.entries(headers);
  if (entries.length === 0) return undefined;
  return Object.fromEntries(entries.map(([name, value]) => [name, { DataType: 'String', StringValue: value }]));
}

/** A foreign message straight into a queue-mode topic's queue, with a plain SDK client. */
export async function rawSendToTopicQueue(topicName: string, body: Buffer, headers?: Record<string, string>): Promise<void> {
  const url = await queueUrl(topicQueueName(topicName, false));
  await sqsClient().send(new SendMessageCommand({ QueueUrl: url, MessageBody: body.toString('utf8'), MessageAttributes: plainAttributes(headers) }));
}

/** A foreign message published to a fan-out topic's SNS topic, with a plain SDK client. */
export async function rawPublishToSnsTopic(topicName: string, body: Buffer, headers?: Record<string, string>): Promise<void> {
  const { TopicArn } = await snsClient().send(new CreateTopicCommand({ Name: snsTopicName(topicName, false) }));
  await snsClient().send(new PublishCommand({ TopicArn, Message: body.toString('utf8'), MessageAttributes: plainAttributes(headers) }));
}

/** A received message as a plain SDK user sees it: the body, the `ce-id` attribute, every string attribute. */
export function plainRecord(message: Message): RawRecord {
  const headers: Record<string, string> = {};
  for (const [name, attribute] of Object.entries(message.MessageAttributes ?? {})) if (attribute.StringValue !== undefined) headers[name] = attribute.StringValue;
  return { body: Buffer.from(message.Body ?? '', 'utf8'), id: headers['ce-id'], headers };
}

/**
 * Queue mode's plain consumer: the topic's one queue is the group, so a plain reader of it is a
 * consumer of that group. Read while no consumer of ours runs (the tests that use it start none),
 * it receives and deletes what is there. It deletes the queue on close if it made it.
 */
export async function sqsQueueRawReader(topicName: string): Promise<RawReader> {
  const name = topicQueueName(topicName, false);
  let url: string;
  let created = false;
  try {
    url = (await sqsClient().send(new GetQueueUrlCommand({ QueueName: name }))).QueueUrl!;
  } catch (error) {
    if ((error as Error).name !== 'QueueDoesNotExist') throw error;
    url = await queueUrl(name);
    created = true;
  }
  return queueReader(url, async () => {
    if (created) await sqsClient().send(new DeleteQueueCommand({ QueueUrl: url }));
  });
}

/**
 * Fan-out mode's plain consumer: a queue of its own, subscribed to the topic's SNS topic with raw
 * message delivery, as another team's service would. On close it unsubscribes, deletes its queue,
 * and deletes the SNS topic if it made it.
 */
export async function sqsFanoutRawReader(topicName: string): Promise<RawReader> {
  const topic = snsTopicName(topicName, false);
  const existed = await snsTopicExists(topic);
  const { TopicArn } = await snsClient().send(new CreateTopicCommand({ Name: topic }));
  const url = await queueUrl(`raw-reader-${randomUUID().slice(0, 8)}`);
  const { Attributes } = await sqsClient().send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['QueueArn'] }));
  const queueArn = Attributes!.QueueArn!;
  // What real SNS needs to write to the queue (fauxqs checks no policy).
  const policy = {
    Version: '2012-10-17',
    Statement: [{ Effect: 'Allow', Principal: { Service: 'sns.amazonaws.com' }, Action: 'sqs:SendMessage', Resource: queueArn, Condition: { ArnEquals: { 'aws:SourceArn': TopicArn } } }],
  };
  await sqsClient().send(new SetQueueAttributesCommand({ QueueUrl: url, Attributes: { Policy: JSON.stringify(policy) } }));
  const { SubscriptionArn } = await snsClient().send(
    new SubscribeCommand({ TopicArn, Protocol: 'sqs', Endpoint: queueArn, Attributes: { RawMessageDelivery: 'true' }, ReturnSubscriptionArn: true }),
  );
  return queueReader(url, async () => {
    await snsClient().send(new UnsubscribeCommand({ SubscriptionArn }));
    await sqsClient().send(new DeleteQueueCommand({ QueueUrl: url }));
    if (!existed) await snsClient().send(new DeleteTopicCommand({ TopicArn }));
  });
}

async function snsTopicExists(name: string): Promise<boolean> {
  let token: string | undefined;
  do {
    const output = await snsClient().send(new ListTopicsCommand({ NextToken: token }));
    if ((output.Topics ?? []).some((topic) => topic.TopicArn?.endsWith(`:${name}`))) return true;
    token = output.NextToken;
  } while (token);
  return false;
}

/** Receives (long polls of 1 s) and deletes, one record at a time from what it has received. */
function queueReader(url: string, cleanUp: () => Promise<void>): RawReader {
  const received: RawRecord[] = [];
  return {
    async next(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (received.length === 0) {
        if (Date.now() >= deadline) throw new Error(`no message on ${url} within ${timeoutMs} ms`);
        const { Messages = [] } = await sqsClient().send(
          new ReceiveMessageCommand({ QueueUrl: url, MaxNumberOfMessages: 10, WaitTimeSeconds: 1, MessageAttributeNames: ['All'] }),
        );
        if (Messages.length === 0) continue;
        received.push(...Messages.map(plainRecord));
        await sqsClient().send(new DeleteMessageBatchCommand({ QueueUrl: url, Entries: Messages.map((message, i) => ({ Id: String(i), ReceiptHandle: message.ReceiptHandle })) }));
      }
      return received.shift()!;
    },
    close: cleanUp,
  };
}

/**
 * Records every SQS queue, SNS topic and SNS subscription this test file creates (the module under
 * test and plain SDK clients alike), at SQSClient's and SNSClient's send(), and deletes exactly
 * those in an afterAll of the file, through the SDK: no listing, no prefix. Queues are recorded
 * by name (their URL may name a proxy that is gone by then). Jest gives every test file its own
 * SDK modules, so the recording is per file; call it at the top of the file, outside any describe,
 * so it runs after the suites' own afterAll hooks (which close their applications).
 */
export function deleteCreatedSqsResourcesAfterAll(): { queues: ReadonlySet<string>; topics: ReadonlySet<string> } {
  const queues = new Set<string>();
  const topics = new Set<string>();
  const subscriptions = new Set<string>();
  type Send = (this: unknown, command: { constructor: { name: string }; input: Record<string, unknown> }, ...rest: unknown[]) => Promise<Record<string, unknown>>;
  const patch = (proto: { send: unknown }) => {
    const send = proto.send as Send;
    proto.send = function (this: unknown, command: Parameters<Send>[0], ...rest: unknown[]) {
      const name = command.constructor.name;
      if (name === 'CreateQueueCommand' && typeof command.input.QueueName === 'string') queues.add(command.input.QueueName);
      const result = send.call(this, command, ...rest);
      if (name === 'CreateTopicCommand' || name === 'SubscribeCommand') {
        void result.then((output) => {
          if (typeof output.TopicArn === 'string') topics.add(output.TopicArn);
          if (typeof output.SubscriptionArn === 'string' && output.SubscriptionArn.startsWith('arn:')) subscriptions.add(output.SubscriptionArn);
        }, () => undefined);
      }
      return result;
    };
    return () => void (proto.send = send);
  };
  const restores = [patch(SQSClient.prototype), patch(SNSClient.prototype)];
  afterAll(async () => {
    for (const restore of restores) restore();
    const failures: string[] = [];
    const attempt = async (what: string, work: () => Promise<unknown>, gone: string[]) => {
      try {
        await work();
      } catch (error) {
        if (!gone.includes((error as Error).name)) failures.push(`${what}: ${(error as Error).message}`);
      }
    };
    for (const arn of subscriptions) await attempt(`subscription ${arn}`, () => snsClient().send(new UnsubscribeCommand({ SubscriptionArn: arn })), ['NotFoundException', 'NotFound']);
    for (const arn of topics) await attempt(`topic ${arn}`, () => snsClient().send(new DeleteTopicCommand({ TopicArn: arn })), ['NotFoundException', 'NotFound']);
    for (const name of queues) {
      await attempt(
        `queue ${name}`,
        async () => {
          const { QueueUrl } = await sqsClient().send(new GetQueueUrlCommand({ QueueName: name }));
          await sqsClient().send(new DeleteQueueCommand({ QueueUrl }));
        },
        ['QueueDoesNotExist', 'AWS.SimpleQueueService.NonExistentQueue'],
      );
    }
    subscriptions.clear();
    topics.clear();
    queues.clear();
    if (failures.length > 0) throw new Error(`could not delete what the test created:\n${failures.join('\n')}`);
  });
  return { queues, topics };
}
