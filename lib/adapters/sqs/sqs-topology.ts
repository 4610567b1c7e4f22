import { createHash } from 'node:crypto';
import { CreateQueueCommand, GetQueueAttributesCommand, GetQueueUrlCommand, SetQueueAttributesCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { BrokerError } from '../../errors';
import type { SqsEnvConfig } from '../../interfaces/broker-options.interface';
import { singleFlight } from '../../support/single-flight';
import type { AdapterLogger, AdapterTopic } from '../broker-adapter';
import type { SnsFanout } from './sqs-fanout';
import { deadLetterQueueName, groupQueueName, isFifoName, parseQueueArn, queueNameOfUrl, snsTopicName, topicQueueName } from './sqs-names';
import { errorName, isMissingQueue, type SqsRequests } from './sqs-requests';

/** How long SQS keeps the dead letters of queues the adapter makes: its longest, 14 days. */
const DEAD_LETTER_RETENTION_SECONDS = 1_209_600;

export interface TopicPlan {
  mode: 'queue' | 'sns';
  fifo: boolean;
  /** Queue mode: the queue URL configured for this env, if any. */
  queueUrl?: string;
}

export type SqsTopologySettings = Required<Pick<SqsEnvConfig['config'], 'fanout' | 'fifo' | 'createMissing'>>;

/**
 * What exists on SQS and SNS for this adapter. A topic is either one queue whose consumers all
 * compete ('queue' mode: `topicQueueName`, or the queue URL configured for the env), or an SNS
 * topic with one queue per group subscribed to it with raw message delivery ('sns' mode). Each
 * work queue has a dead-letter queue: its redrive target, or `<queue>-dead-letters`. Queue URLs
 * are looked up (or made, when createMissing) once and kept.
 */
export class SqsTopology {
  private readonly queueUrls = singleFlight<string, string>({ keepResolved: true });
  private readonly deadLetterUrls = singleFlight<string, string>({ keepResolved: true });
  private readonly groupQueues = singleFlight<string, string>({ keepResolved: true });

  constructor(
    private readonly client: SQSClient,
    private readonly settings: SqsTopologySettings,
    private readonly envSlug: string,
    private readonly requests: SqsRequests,
    private readonly fanout: () => SnsFanout,
    private readonly logger: AdapterLogger,
  ) {}

  /** How a topic is laid out for this env: its mode, whether FIFO, and a configured queue URL. */
  plan(topic: AdapterTopic): TopicPlan {
    const config = topic.config;
    const queueUrl = config?.queueUrls?.find((entry) => entry.env_slug === this.envSlug)?.url;
    const mode = config?.fanout ?? this.settings.fanout;
    if (queueUrl !== undefined && mode === 'sns') {
      throw new BrokerError('CONFIG_INVALID', `topic '${topic.tag}': queueUrls name one queue (queue mode); with fanout 'sns' each group has its own queue`);
    }
    if (queueUrl !== undefined) {
      // The queue is what it is: FIFO exactly when its name ends in .fifo.
      const fifo = isFifoName(queueNameOfUrl(queueUrl));
      if (config?.fifo !== undefined && config.fifo !== fifo) {
        throw new BrokerError('CONFIG_INVALID', `topic '${topic.tag}': fifo is ${String(config.fifo)} but its queue URL for '${this.envSlug}' is ${fifo ? '' : 'not '}a FIFO queue`);
      }
      return { mode, fifo, queueUrl };
    }
    return { mode, fifo: config?.fifo ?? this.settings.fifo, queueUrl };
  }

  /** Queue mode: the configured queue URL, or the topic's own queue (created when allowed). */
  workQueueUrl(topic: AdapterTopic, plan: TopicPlan): Promise<string> {
    if (plan.queueUrl !== undefined) return Promise.resolve(plan.queueUrl);
    return this.queueUrl(topicQueueName(topic.name, plan.fifo), plan.fifo);
  }

  /** Fan-out mode: the group's queue, subscribed to the SNS topic with raw delivery (made on first use). */
  groupQueueUrl(topic: AdapterTopic, group: string, plan: TopicPlan): Promise<string> {
    const name = groupQueueName(topic.name, group, plan.fifo);
    return this.groupQueues.run(name, async () => {
      const fanout = this.fanout();
      const topicArn = await fanout.topicArn(snsTopicName(topic.name, plan.fifo), plan.fifo);
      const url = await this.queueUrl(name, plan.fifo);
      if (this.settings.createMissing) {
        const queueArn = await this.queueArn(url);
        await this.allowTopicToSend(url, queueArn, topicArn);
        await fanout.subscribeQueue(topicArn, queueArn);
      }
      return url;
    });
  }

  /** Fan-out mode: the queue of a group that has subscribed at some point; never made here. */
  async existingGroupQueueUrl(topic: AdapterTopic, group: string, plan: TopicPlan): Promise<string> {
    const name = groupQueueName(topic.name, group, plan.fifo);
    const known = this.groupQueues.get(name);
    if (known) return known;
    try {
      return await this.queueUrl(name, plan.fifo, 'existing');
    } catch (error) {
      throw new Error(`group '${group}' of topic '${topic.tag}' has no queue (it never subscribed): ${(error as Error).message}`);
    }
  }

  /**
   * SNS may write to a queue only when the queue's policy lets it (real AWS enforces this). Our
   * statement is added or updated by its Sid; the rest of the policy is kept as it is.
   */
  private async allowTopicToSend(url: string, queueArn: string, topicArn: string): Promise<void> {
    const output = await this.requests.request('GetQueueAttributes', url, () => this.client.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['Policy'] })));
    const statement = {
      Sid: `ductape-sns-${createHash('sha256').update(topicArn).digest('hex').slice(0, 16)}`,
      Effect: 'Allow',
      Principal: { Service: 'sns.amazonaws.com' },
      Action: 'sqs:SendMessage',
      Resource: queueArn,
      Condition: { ArnEquals: { 'aws:SourceArn': topicArn } },
    };
    let policy: { Version?: string; Statement?: unknown[] } = { Version: '2012-10-17', Statement: [] };
    if (output.Attributes?.Policy) {
      try {
        policy = JSON.parse(output.Attributes.Policy) as typeof policy;
      } catch {
        throw new Error(`SQS queue ${queueNameOfUrl(url)} has a policy that is not JSON; not touching it`);
      }
    }
    const statements = Array.isArray(policy.Statement) ? policy.Statement : policy.Statement ? [policy.Statement] : [];
    const existing = statements.find((candidate) => (candidate as { Sid?: unknown }).Sid === statement.Sid);
    if (existing && JSON.stringify(existing) === JSON.stringify(statement)) return;
    const updated = { ...policy, Version: policy.Version ?? '2012-10-17', Statement: [...statements.filter((candidate) => candidate !== existing), statement] };
    await this.requests.request('SetQueueAttributes', url, () => this.client.send(new SetQueueAttributesCommand({ QueueUrl: url, Attributes: { Policy: JSON.stringify(updated) } })));
  }

  /**
   * The dead-letter queue of a topic (queue mode) or of a group (fan-out): the work queue's
   * redrive target when it has a redrive policy, otherwise `<queue>-dead-letters`.
   */
  async deadLetterQueueUrl(topic: AdapterTopic, group: string, plan: TopicPlan, groupQueue: 'create' | 'existing'): Promise<string> {
    const workUrl =
      plan.mode === 'queue'
        ? await this.workQueueUrl(topic, plan)
        : groupQueue === 'create'
          ? await this.groupQueueUrl(topic, group, plan)
          : await this.existingGroupQueueUrl(topic, group, plan);
    return this.deadLetterUrls.run(workUrl, async () => {
      const output = await this.requests.request('GetQueueAttributes', workUrl, () =>
        this.client.send(new GetQueueAttributesCommand({ QueueUrl: workUrl, AttributeNames: ['RedrivePolicy'] })),
      );
      const redrive = parseRedrivePolicy(output.Attributes?.RedrivePolicy);
      if (redrive) return this.queueUrlOfArn(redrive);
      const workName = queueNameOfUrl(workUrl);
      return this.queueUrl(deadLetterQueueName(workName), isFifoName(workName), 'create', { MessageRetentionPeriod: String(DEAD_LETTER_RETENTION_SECONDS) });
    });
  }

  /** A queue's URL by name: created (idempotently) when allowed, otherwise looked up. */
  private queueUrl(name: string, fifo: boolean, mode: 'create' | 'existing' = 'create', attributes: Record<string, string> = {}): Promise<string> {
    // A lookup and a creation of one queue do not share a promise: a creation must not fail as a lookup.
    return this.queueUrls.run(`${mode}:${name}`, async () => {
      if (this.settings.createMissing && mode === 'create') {
        try {
          const output = await this.client.send(new CreateQueueCommand({ QueueName: name, Attributes: { ...attributes, ...(fifo ? { FifoQueue: 'true' } : {}) } }));
          if (output.QueueUrl) {
            // CreateQueue answers alike whether it made the queue or found it: "declared", as RabbitMQ says.
            this.logger.debug(`declared queue '${name}'`);
            return output.QueueUrl;
          }
        } catch (error) {
          // It exists with other attributes (made by someone else), or we may not create queues: use it as it is.
          if (!['QueueAlreadyExists', 'QueueNameExists', 'AccessDenied', 'AccessDeniedException'].includes(errorName(error))) {
            throw this.requests.failure(`CreateQueue '${name}' failed`, error);
          }
        }
      }
      try {
        const output = await this.client.send(new GetQueueUrlCommand({ QueueName: name }));
        if (output.QueueUrl) return output.QueueUrl;
        throw new Error('no QueueUrl in the answer');
      } catch (error) {
        if (isMissingQueue(error)) {
          const why = mode === 'existing' ? '' : this.settings.createMissing ? '' : ' (createMissing is false, so the adapter does not create it)';
          throw new Error(`SQS queue '${name}' does not exist at ${this.requests.endpoint}${why}`);
        }
        throw this.requests.failure(`GetQueueUrl '${name}' failed`, error);
      }
    });
  }

  async queueUrlOfArn(arn: string): Promise<string> {
    const parsed = parseQueueArn(arn);
    if (!parsed) throw new Error(`'${arn}' is not an SQS queue ARN`);
    return this.queueUrls.run(`arn:${arn}`, async () => {
      const output = await this.requests.request('GetQueueUrl', parsed.name, () =>
        this.client.send(new GetQueueUrlCommand({ QueueName: parsed.name, QueueOwnerAWSAccountId: parsed.account || undefined })),
      );
      if (!output.QueueUrl) throw new Error(`no URL for SQS queue ${arn}`);
      return output.QueueUrl;
    });
  }

  async queueArn(url: string): Promise<string> {
    const output = await this.requests.request('GetQueueAttributes', url, () =>
      this.client.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['QueueArn'] })),
    );
    const arn = output.Attributes?.QueueArn;
    if (!arn) throw new Error(`SQS returned no QueueArn for ${queueNameOfUrl(url)}`);
    return arn;
  }
}

function parseRedrivePolicy(text: string | undefined): string | undefined {
  if (!text) return undefined;
  try {
    const policy = JSON.parse(text) as { deadLetterTargetArn?: unknown };
    return typeof policy.deadLetterTargetArn === 'string' ? policy.deadLetterTargetArn : undefined;
  } catch {
    return undefined;
  }
}
