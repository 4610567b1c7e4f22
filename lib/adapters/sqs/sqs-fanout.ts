import {
  CreateTopicCommand,
  ListSubscriptionsByTopicCommand,
  ListTopicsCommand,
  PublishCommand,
  SNSClient,
  SubscribeCommand,
  type SNSClientConfig,
} from '@aws-sdk/client-sns';
import { singleFlight } from '../../support/single-flight';
import type { StringAttribute } from './sqs-attributes';

export interface SnsFanoutOptions {
  createMissing: boolean;
  /** Turns an SNS failure into an error that names the endpoint and hides secrets. */
  failure(context: string, error: unknown): Error;
}

/**
 * The SNS half of fan-out mode, loaded only when a topic uses it (so @aws-sdk/client-sns is
 * needed only then): one SNS topic per topic, each group's queue subscribed with raw delivery.
 */
export class SnsFanout {
  private readonly client: SNSClient;
  private readonly topicArns = singleFlight<string, string>({ keepResolved: true });
  /** Topics known to have at least one subscribed queue (a group): no need to look again. */
  private readonly subscribed = new Set<string>();

  constructor(
    config: SNSClientConfig,
    private readonly options: SnsFanoutOptions,
  ) {
    this.client = new SNSClient(config);
  }

  topicArn(name: string, fifo: boolean): Promise<string> {
    return this.topicArns.run(name, () => this.findOrCreate(name, fifo));
  }

  /** A queue is known to be subscribed to the topic (found, or subscribed from here). */
  knownSubscribed(topicArn: string): boolean {
    return this.subscribed.has(topicArn);
  }

  /** Whether any SQS queue is subscribed to the topic: known, or looked up. */
  async hasSubscriptions(topicArn: string): Promise<boolean> {
    return this.subscribed.has(topicArn) || (await this.subscribedQueueArns(topicArn)).length > 0;
  }

  /**
   * Publishes to the topic. SNS accepts a message no queue is subscribed to, and drops it: see
   * the adapter for the no-group rule.
   */
  async publish(topicArn: string, body: string, attributes: Record<string, StringAttribute>, fifo?: { MessageGroupId: string; MessageDeduplicationId: string }): Promise<void> {
    try {
      await this.client.send(new PublishCommand({ TopicArn: topicArn, Message: body, MessageAttributes: attributes, ...fifo }));
    } catch (error) {
      throw this.options.failure(`SNS Publish to ${topicArn} failed`, error);
    }
  }

  /** The SQS queues subscribed to a topic (ARNs); none when no group has subscribed yet. */
  async subscribedQueueArns(topicArn: string): Promise<string[]> {
    const arns: string[] = [];
    let token: string | undefined;
    try {
      do {
        const output = await this.client.send(new ListSubscriptionsByTopicCommand({ TopicArn: topicArn, NextToken: token }));
        for (const subscription of output.Subscriptions ?? []) {
          if (subscription.Protocol === 'sqs' && subscription.Endpoint) arns.push(subscription.Endpoint);
        }
        token = output.NextToken;
      } while (token);
    } catch (error) {
      throw this.options.failure(`SNS ListSubscriptionsByTopic of ${topicArn} failed`, error);
    }
    if (arns.length > 0) this.subscribed.add(topicArn);
    return arns;
  }

  /** Subscribes a queue with raw message delivery (SNS makes this idempotent). */
  async subscribeQueue(topicArn: string, queueArn: string): Promise<void> {
    try {
      await this.client.send(
        new SubscribeCommand({ TopicArn: topicArn, Protocol: 'sqs', Endpoint: queueArn, Attributes: { RawMessageDelivery: 'true' }, ReturnSubscriptionArn: true }),
      );
    } catch (error) {
      throw this.options.failure(`SNS Subscribe of ${queueArn} to ${topicArn} failed`, error);
    }
    this.subscribed.add(topicArn);
  }

  destroy(): void {
    this.client.destroy();
  }

  private async findOrCreate(name: string, fifo: boolean): Promise<string> {
    if (this.options.createMissing) {
      try {
        const output = await this.client.send(new CreateTopicCommand({ Name: name, Attributes: fifo ? { FifoTopic: 'true' } : undefined }));
        if (output.TopicArn) return output.TopicArn;
        throw new Error('no TopicArn in the answer');
      } catch (error) {
        throw this.options.failure(`SNS CreateTopic '${name}' failed`, error);
      }
    }
    let token: string | undefined;
    try {
      do {
        const output = await this.client.send(new ListTopicsCommand({ NextToken: token }));
        const found = (output.Topics ?? []).find((topic) => topic.TopicArn?.endsWith(`:${name}`));
        if (found?.TopicArn) return found.TopicArn;
        token = output.NextToken;
      } while (token);
    } catch (error) {
      throw this.options.failure(`SNS ListTopics failed`, error);
    }
    throw new Error(`SNS topic '${name}' does not exist (createMissing is false, so the adapter does not create it)`);
  }
}
