import { createHash, randomUUID } from 'node:crypto';
import { ListQueuesCommand, SendMessageCommand, SQSClient, type SQSClientConfig } from '@aws-sdk/client-sqs';
import { BrokerError, redactSecrets } from '../../errors';
import type { SqsEnvConfig } from '../../interfaces/broker-options.interface';
import type {
  AdapterCapabilities,
  AdapterConsumer,
  AdapterContext,
  AdapterLogger,
  AdapterTopic,
  CompleteBrokerAdapter,
  ConsumeOptions,
  DeliveryListener,
  InboundMessage,
  OutboundMessage,
} from '../broker-adapter';
import { JSON_CONTENT_TYPE } from '../cloudevents';
import { NoGroupWarnings } from '../no-group-warnings';
import { OpenConsumers } from '../open-consumers';
import {
  ASTRAL,
  DEAD_LETTER_HEADROOM_BYTES,
  deadLetterAttributes,
  DEFAULT_MESSAGE_GROUP,
  escapeForSqs,
  MAX_MESSAGE_BYTES,
  messageBytes,
  toAttributes,
  type StringAttribute,
} from './sqs-attributes';
import { SqsConsumer } from './sqs-consumer';
import type * as SqsFanoutModule from './sqs-fanout';
import type { SnsFanout } from './sqs-fanout';
import { drainSqsDeadLetters } from './sqs-dead-letters';
import { isFifoName, queueNameOfUrl, snsTopicName } from './sqs-names';
import { errorName, SqsRequests } from './sqs-requests';
import { SqsTopology, type TopicPlan } from './sqs-topology';

export { errorName };

type Config = SqsEnvConfig['config'];

export const SQS_DEFAULTS = {
  fanout: 'queue',
  fifo: false,
  waitTimeSeconds: 10,
  visibilityTimeoutSeconds: 30,
  createMissing: true,
  requestTimeoutMs: 10_000,
} as const;

/** Longest per-message delay SQS takes (15 minutes). */
export const MAX_DELAY_SECONDS = 900;
export { DEFAULT_MESSAGE_GROUP };
/**
 * While a fan-out topic has no known subscription, it is looked up at most this often for the
 * no-group warning (a publish does not wait for it); 'reject' looks before every publish instead.
 */
const NO_GROUP_CHECK_INTERVAL_MS = 10_000;

/** What an SQS env guarantees for its default topic mode (queue or SNS fan-out, standard or FIFO). */
export function sqsCapabilities(config: Pick<Config, 'fanout' | 'fifo'> = {}): AdapterCapabilities {
  return {
    // Queue mode: one queue, so one group; SNS gives every group's queue its own copy.
    fanOut: config.fanout === 'sns',
    // FIFO queues keep order per message group (the key); standard queues keep none.
    orderingPerKey: config.fifo === true,
    // DelaySeconds (up to 15 minutes) and visibility timeouts hold messages on SQS itself.
    nativeDelay: true,
    nativeDeadLetters: true,
    // An SNS topic tells whether any queue is subscribed. In queue mode the queue is the group:
    // it keeps what is published before any consumer, so there is never "no group".
    detectsNoGroup: config.fanout === 'sns',
  };
}

/**
 * AWS SQS through the AWS SDK v3. A topic is either one queue whose consumers all compete
 * ('queue' mode, Ductape's shape), or an SNS topic with one queue per group subscribed to it with
 * raw message delivery ('sns' mode, AWS's own fan-out). Retries wait out a visibility timeout on
 * the same message; dead letters go to the queue's redrive target, or to `<queue>-dead-letters`.
 */
export class SqsAdapter implements CompleteBrokerAdapter {
  readonly capabilities: AdapterCapabilities;
  private readonly settings: Required<Pick<Config, 'fanout' | 'fifo' | 'waitTimeSeconds' | 'visibilityTimeoutSeconds' | 'createMissing' | 'requestTimeoutMs'>>;
  private readonly client: SQSClient;
  private readonly clientConfig: SQSClientConfig;
  private fanout?: SnsFanout;
  private readonly consumers = new OpenConsumers();
  private readonly requests: SqsRequests;
  private readonly topology: SqsTopology;
  /** Queue mode: the group consuming each topic in this process, and how many consumers it has. */
  private readonly queueGroups = new Map<string, { group: string; consumers: number }>();
  private readonly noGroup: NoGroupWarnings;
  /** Fan-out topics without a known subscription: when they were last looked up. */
  private readonly noGroupCheckedAt = new Map<string, number>();
  /** The endpoint refused a body with characters outside the BMP (an emulator): JSON bodies go with them escaped. */
  private escapeAstral = false;
  private closing = false;

  constructor(
    private readonly config: Config,
    private readonly context: Pick<AdapterContext, 'envSlug'> & { logger: AdapterLogger },
  ) {
    this.settings = {
      fanout: config.fanout ?? SQS_DEFAULTS.fanout,
      fifo: config.fifo ?? SQS_DEFAULTS.fifo,
      waitTimeSeconds: config.waitTimeSeconds ?? SQS_DEFAULTS.waitTimeSeconds,
      visibilityTimeoutSeconds: config.visibilityTimeoutSeconds ?? SQS_DEFAULTS.visibilityTimeoutSeconds,
      createMissing: config.createMissing ?? SQS_DEFAULTS.createMissing,
      requestTimeoutMs: config.requestTimeoutMs ?? SQS_DEFAULTS.requestTimeoutMs,
    };
    this.capabilities = sqsCapabilities(this.settings);
    this.noGroup = new NoGroupWarnings(context.logger, context.envSlug);
    this.clientConfig = {
      region: config.region,
      endpoint: config.endpoint,
      credentials:
        config.accessKeyId !== undefined && config.secretAccessKey !== undefined
          ? { accessKeyId: config.accessKeyId, secretAccessKey: config.secretAccessKey, sessionToken: config.sessionToken }
          : undefined,
      // A dead endpoint, or a connection that went silent, fails a request in seconds instead of
      // never (the SDK sets no request timeout of its own); long polls get a longer one (see the consumer).
      requestHandler: { connectionTimeout: 5000, requestTimeout: this.settings.requestTimeoutMs, throwOnRequestTimeout: true },
    };
    this.client = new SQSClient(this.clientConfig);
    const secrets = [config.secretAccessKey, config.sessionToken].filter((secret): secret is string => typeof secret === 'string' && secret.length > 0);
    this.requests = new SqsRequests(this.endpoint, secrets);
    this.topology = new SqsTopology(this.client, this.settings, context.envSlug, this.requests, () => this.requireFanout(), context.logger);
  }

  /** Where requests go, for errors: the endpoint or AWS's regional one, never a credential. */
  get endpoint(): string {
    return redactSecrets(this.config.endpoint ?? `https://sqs.${this.config.region}.amazonaws.com`);
  }

  /**
   * One cheap request, so that a wrong endpoint or rejected credentials fail at startup with a
   * clear error. A refusal of ListQueues itself (AccessDenied) proves both and is fine.
   */
  async connect(): Promise<void> {
    try {
      await this.client.send(new ListQueuesCommand({ MaxResults: 1 }));
    } catch (error) {
      if (errorName(error) !== 'AccessDenied' && errorName(error) !== 'AccessDeniedException') throw this.requests.failure('cannot reach SQS', error);
    }
    this.context.logger.log(`connected to SQS at ${this.endpoint}`);
  }

  /**
   * Queue mode: to the topic's queue, which keeps it for the group (the queue is the group).
   * Fan-out: to the SNS topic, which drops it when no group's queue is subscribed yet (see
   * AdapterTopic.whenNoGroup); SNS has no per-message delay, so a delayed message goes straight to
   * each subscribed queue.
   */
  async publish(topic: AdapterTopic, message: OutboundMessage): Promise<void> {
    const plan = this.topology.plan(topic);
    const prepared = this.prepare(topic, message, plan, MAX_MESSAGE_BYTES - DEAD_LETTER_HEADROOM_BYTES, 'publish');
    if (plan.mode === 'queue') {
      const url = await this.topology.workQueueUrl(topic, plan);
      return this.send(url, prepared, message.messageId);
    }
    const fanout = this.requireFanout();
    const topicArn = await fanout.topicArn(snsTopicName(topic.name, plan.fifo), plan.fifo);
    if (prepared.delaySeconds === undefined) {
      if (!fanout.knownSubscribed(topicArn)) {
        if (topic.whenNoGroup === 'reject') {
          if (!(await fanout.hasSubscriptions(topicArn))) throw this.noGroup.error(topic.name);
        } else this.lookForGroups(fanout, topicArn, topic.name);
      }
      return fanout.publish(topicArn, prepared.body, prepared.attributes, plan.fifo ? fifoIds(message.key, message.messageId) : undefined);
    }
    const queueArns = await fanout.subscribedQueueArns(topicArn);
    if (queueArns.length === 0) {
      if (topic.whenNoGroup === 'reject') throw this.noGroup.error(topic.name);
      // Nothing to deliver it to, as SNS would drop it.
      return this.noGroup.warn(topic.name);
    }
    const urls = await Promise.all(queueArns.map((arn) => this.topology.queueUrlOfArn(arn)));
    await Promise.all(urls.map((url) => this.send(url, prepared, message.messageId)));
  }

  async sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    const plan = this.topology.plan(topic);
    const url = plan.mode === 'queue' ? await this.topology.workQueueUrl(topic, plan) : await this.topology.existingGroupQueueUrl(topic, group, plan);
    // A fresh deduplication id: the same message sent again (reprocessed) must not be dropped as a duplicate.
    await this.send(url, this.prepare(topic, message, plan), randomUUID());
  }

  async sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    const plan = this.topology.plan(topic);
    const url = await this.topology.deadLetterQueueUrl(topic, group, plan, 'existing');
    await this.send(url, this.prepare(topic, message, plan, Infinity, 'dead-letter'), randomUUID());
  }

  async drainDeadLetters(topic: AdapterTopic, group: string, limit: number, visit: (record: InboundMessage) => Promise<void>): Promise<number> {
    const plan = this.topology.plan(topic);
    // Only a group that exists has dead letters: a mistyped group must not create a queue.
    const url = await this.topology.deadLetterQueueUrl(topic, group, plan, 'existing');
    return drainSqsDeadLetters(this.client, this.requests, url, this.settings.visibilityTimeoutSeconds, limit, visit);
  }

  async consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> {
    if (this.closing) throw new Error('the SQS adapter is closed');
    const plan = this.topology.plan(topic);
    const release = plan.mode === 'queue' ? this.claimQueueGroup(topic, options.group) : () => undefined;
    try {
      const url =
        options.source === 'dead-letters'
          ? await this.topology.deadLetterQueueUrl(topic, options.group, plan, 'create')
          : plan.mode === 'queue'
            ? await this.topology.workQueueUrl(topic, plan)
            : await this.topology.groupQueueUrl(topic, options.group, plan);
      // A queue given by URL may not exist (or not be ours to read): say so now, not in a poller's log.
      await this.topology.queueArn(url);
      const consumer = new SqsConsumer(
        this.client,
        {
          queueUrl: url,
          queueName: queueNameOfUrl(url),
          concurrency: options.concurrency,
          waitTimeSeconds: this.settings.waitTimeSeconds,
          visibilityTimeoutSeconds: this.settings.visibilityTimeoutSeconds,
          fifo: plan.fifo,
          retryThroughVisibility: options.source === 'messages',
        },
        listener,
        this.context.logger,
      );
      consumer.start();
      const adopted = await this.consumers.adopt(consumer, 'SQS', this.context.logger, `queue ${queueNameOfUrl(url)} (group '${options.group}', concurrency ${options.concurrency})`);
      let released = false;
      return {
        stop: () => adopted.stop(),
        close: async () => {
          await adopted.close();
          if (!released) {
            released = true;
            release();
          }
        },
      };
    } catch (error) {
      release();
      throw error;
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.consumers.closeAll();
    this.client.destroy();
    this.fanout?.destroy();
  }

  /** Queue mode is point-to-point: one group per topic, or its groups would silently share messages. */
  private claimQueueGroup(topic: AdapterTopic, group: string): () => void {
    const claim = this.queueGroups.get(topic.name);
    if (claim && claim.group !== group) {
      throw new BrokerError(
        'SUBSCRIBE_FAILED',
        `topic '${topic.tag}' is one SQS queue (queue mode) and group '${claim.group}' already consumes it: group '${group}' would compete for the same messages instead of getting its own copy. ` +
          `For every group to get every message, set fanout: 'sns' on the topic (or on the SQS env config)`,
      );
    }
    if (claim) claim.consumers++;
    else this.queueGroups.set(topic.name, { group, consumers: 1 });
    return () => {
      const current = this.queueGroups.get(topic.name);
      if (current && --current.consumers === 0) this.queueGroups.delete(topic.name);
    };
  }

  /**
   * The body as it is (JSON with U+FFFE/U+FFFF escaped, which SQS refuses) and the metadata as
   * attributes; checks what SQS would refuse, before anything is sent. A dead letter is not
   * checked: its body came from SQS, and its error text is cut to fit.
   */
  private prepare(topic: AdapterTopic, message: OutboundMessage, plan: TopicPlan, maxBytes = MAX_MESSAGE_BYTES, kind: 'publish' | 'retry' | 'dead-letter' = 'retry'): PreparedMessage {
    const fifo = plan.fifo;
    const text = typeof message.body === 'string' ? message.body : message.body.toString('utf8');
    // Escaping keeps a JSON value as it is; any other body (poison, kept as it came) is left alone.
    const json = message.contentType === JSON_CONTENT_TYPE;
    const body = json ? escapeForSqs(text, this.escapeAstral) : text;
    const options = { keyAsGroupId: fifo && isOwnGroupId(message.key), timeFromBroker: kind === 'publish' };
    const attributes = kind === 'dead-letter' ? deadLetterAttributes(message, body, options) : toAttributes(message, options);
    const bytes = messageBytes(body, attributes);
    if (bytes > maxBytes) {
      const room = maxBytes < MAX_MESSAGE_BYTES ? ` (SQS's 256 KiB less ${MAX_MESSAGE_BYTES - maxBytes} bytes kept for the headers of a dead letter)` : ' (256 KiB)';
      throw new BrokerError('INVALID_MESSAGE', `message is too large for SQS: ${bytes} bytes with its attributes, the limit is ${maxBytes}${room}`);
    }
    let delaySeconds: number | undefined;
    if (message.delayMs !== undefined && message.delayMs > 0) {
      delaySeconds = Math.ceil(message.delayMs / 1000);
      if (delaySeconds > MAX_DELAY_SECONDS) {
        throw new BrokerError('INVALID_MESSAGE', `delayMs ${message.delayMs} is beyond SQS's longest delay of ${MAX_DELAY_SECONDS} s (15 minutes)`);
      }
      if (fifo) {
        throw new BrokerError('INVALID_MESSAGE', `topic '${topic.tag}' is a FIFO queue: SQS takes no per-message delay there (only a delay set on the queue)`);
      }
    }
    return { body, json, attributes, delaySeconds, key: message.key };
  }

  private async send(url: string, message: PreparedMessage, deduplicationId: string): Promise<void> {
    const fifo = isFifoName(queueNameOfUrl(url));
    const command = (body: string) =>
      new SendMessageCommand({
        QueueUrl: url,
        MessageBody: body,
        MessageAttributes: message.attributes,
        DelaySeconds: fifo ? undefined : message.delaySeconds,
        ...(fifo ? fifoIds(message.key, deduplicationId) : {}),
      });
    await this.requests.request('SendMessage', url, async () => {
      try {
        return await this.client.send(command(message.body));
      } catch (error) {
        if (!errorName(error).endsWith('InvalidMessageContents') || !message.json || this.escapeAstral || !ASTRAL.test(message.body)) throw error;
        // Real SQS takes any Unicode character; emulators (fauxqs) refuse those beyond the BMP.
        this.escapeAstral = true;
        this.context.logger.warn(
          `SQS at ${this.endpoint} refuses characters outside the Basic Multilingual Plane in a message body (real SQS takes them): JSON bodies are sent with those \\u-escaped from now on, the same JSON value in other bytes`,
        );
        return this.client.send(command(escapeForSqs(message.body, true)));
      }
    });
  }

  /**
   * The no-group warning of a fan-out topic that has no known subscription: looked up beside the
   * publish (which does not wait for it), at most once in NO_GROUP_CHECK_INTERVAL_MS per topic.
   */
  private lookForGroups(fanout: SnsFanout, topicArn: string, topicName: string): void {
    const now = Date.now();
    const last = this.noGroupCheckedAt.get(topicArn);
    if (last !== undefined && now - last < NO_GROUP_CHECK_INTERVAL_MS) return;
    if (this.noGroupCheckedAt.size >= 10_000) this.noGroupCheckedAt.clear();
    this.noGroupCheckedAt.set(topicArn, now);
    fanout.hasSubscriptions(topicArn).then(
      (subscribed) => {
        if (subscribed) this.noGroupCheckedAt.delete(topicArn);
        else this.noGroup.warn(topicName);
      },
      // Only a warning depends on it: the publish itself reports its own failures.
      () => undefined,
    );
  }

  private requireFanout(): SnsFanout {
    if (!this.fanout) {
      let module: typeof SqsFanoutModule;
      try {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        module = require('./sqs-fanout') as typeof SqsFanoutModule;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' && String((error as Error).message).includes('@aws-sdk/client-sns')) {
          throw new BrokerError('CONFIG_INVALID', "fanout 'sns' needs the package '@aws-sdk/client-sns': npm install @aws-sdk/client-sns");
        }
        throw error;
      }
      this.fanout = new module.SnsFanout(
        { ...this.clientConfig, endpoint: this.config.endpoint },
        { createMissing: this.settings.createMissing, failure: (context, error) => this.requests.failure(context, error) },
      );
    }
    return this.fanout;
  }
}

interface PreparedMessage {
  body: string;
  /** The body is this module's JSON (so \u escapes keep its value). */
  json: boolean;
  attributes: Record<string, StringAttribute>;
  delaySeconds?: number;
  key?: string;
}

/**
 * FIFO ids: the key is the message group (one default group without a key), and the id the
 * deduplication id. SQS takes up to 128 printable ASCII characters; anything else is hashed.
 */
export function fifoIds(key: string | undefined, deduplicationId: string): { MessageGroupId: string; MessageDeduplicationId: string } {
  return { MessageGroupId: fifoId(key || DEFAULT_MESSAGE_GROUP), MessageDeduplicationId: fifoId(deduplicationId || randomUUID()) };
}

function fifoId(value: string): string {
  return FIFO_ID.test(value) ? value : createHash('sha256').update(value).digest('hex');
}

const FIFO_ID = /^[!-~]{1,128}$/;

/** A key that is its own FIFO message group id, so that it need not travel as an attribute too. */
function isOwnGroupId(key: string | undefined): boolean {
  return key !== undefined && key !== DEFAULT_MESSAGE_GROUP && FIFO_ID.test(key);
}

export function createSqsAdapter(config: Config, context: AdapterContext): CompleteBrokerAdapter {
  return new SqsAdapter(config, context);
}
