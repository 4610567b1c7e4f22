import { CreateQueueCommand, SendMessageCommand, SQSClient, type MessageAttributeValue } from '@aws-sdk/client-sqs';
import { CreateTopicCommand, PublishCommand, SNSClient } from '@aws-sdk/client-sns';
import type { SqsEnvConfig } from '../../lib';
import { snsTopicName, topicQueueName } from '../../lib/adapters/sqs';

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

/** A foreign message straight into a queue-mode topic's queue, with a plain SDK client. */
export async function rawSendToTopicQueue(topicName: string, body: Buffer, attributes?: Record<string, MessageAttributeValue>): Promise<void> {
  const url = await queueUrl(topicQueueName(topicName, false));
  await sqsClient().send(new SendMessageCommand({ QueueUrl: url, MessageBody: body.toString('utf8'), MessageAttributes: attributes }));
}

/** A foreign message published to a fan-out topic's SNS topic, with a plain SDK client. */
export async function rawPublishToSnsTopic(topicName: string, body: Buffer): Promise<void> {
  const { TopicArn } = await snsClient().send(new CreateTopicCommand({ Name: snsTopicName(topicName, false) }));
  await snsClient().send(new PublishCommand({ TopicArn, Message: body.toString('utf8') }));
}
