import { delayTopic } from '../adapters/kafka/kafka-names';
import { topicExchange } from '../adapters/rabbitmq/rabbitmq-names';
import { isFifoName, queueNameOfUrl, snsTopicName, topicQueueName } from '../adapters/sqs/sqs-names';
import type { BrokerConfig, BrokerEnvConfig, SqsEnvSettings, TopicConfig } from '../interfaces/broker-options.interface';
import { physicalTopicName } from './event';

/** What a topic is on one env's broker: the thing the adapter declares, named as the adapter names it. */
interface BrokerTopic {
  /** 'queue', 'SNS topic', 'exchange', ... */
  kind: string;
  name: string;
  /** Equal for two topics that the broker cannot tell apart. */
  key: string;
  /** Why two different names can be one on this broker. */
  why?: string;
}

/**
 * Checks, at startup, what the adapters would otherwise refuse on a topic's first use, for every env
 * of a broker that lists its topics: names over the broker's limit, SQS settings that contradict
 * each other (a `queueUrls` queue with `fanout: 'sns'`, `fifo` against the URL), and two topic tags
 * that the broker would name alike (SQS turns '.' into '_', so `a.b` and `a_b` would share a
 * queue). Another env's absent config counts as its defaults: names need no connection settings.
 * `brokerPath` is the broker's path in the options (`brokers[0]`); the entries are well formed.
 */
export function physicalTopicProblems(product: string, broker: BrokerConfig<string>, brokerPath: string): string[] {
  const problems: string[] = [];
  if (!broker.topics) return problems;
  for (const env of broker.envs) {
    const seen = new Map<string, { tag: string; index: number }>();
    broker.topics.forEach((topic, index) => {
      const at = `${brokerPath}.topics[${index}]`;
      const physical = physicalTopicName(product, env.slug, topic.tag, topic.name);
      let named: BrokerTopic | undefined;
      try {
        named = brokerTopic(env, topic, physical, (problem) => problems.push(`${at}: ${problem}`));
      } catch (error) {
        // A naming function's own refusal (a name too long for the broker).
        problems.push(`${at}: in env '${env.slug}' (${env.type}), ${(error as Error).message}`);
      }
      if (!named) return;
      const first = seen.get(named.key);
      if (!first) return void seen.set(named.key, { tag: topic.tag, index });
      problems.push(
        `${at}: in env '${env.slug}' (${env.type}) topics '${first.tag}' (topics[${first.index}]) and '${topic.tag}' are both the ${named.kind} ` +
          `'${named.name}'${named.why ? ` (${named.why})` : ''}; give one of them another name`,
      );
    });
  }
  return problems;
}

/** The topic as this env's adapter will lay it out; `problem` reports a contradiction. Undefined when unknown (a registered type). */
function brokerTopic(env: BrokerEnvConfig<string>, topic: TopicConfig, physical: string, problem: (text: string) => void): BrokerTopic | undefined {
  switch (env.type) {
    case 'memory':
      return { kind: 'topic', name: physical, key: physical };
    case 'rabbitmq':
      return { kind: 'exchange', name: topicExchange(physical), key: physical };
    case 'kafka':
      try {
        delayTopic(physical);
      } catch {
        throw new Error(
          `the Kafka topic '${physical.slice(0, 60)}…' has ${physical.length} characters: with the '.delay' its consumers also read, over Kafka's 249; use a shorter topic name`,
        );
      }
      // Kafka refuses a topic whose name differs from an existing one only by '.' against '_'.
      return { kind: 'Kafka topic', name: physical, key: physical.replace(/\./g, '_'), why: "Kafka treats '.' and '_' in topic names as one" };
    case 'sqs':
      return sqsTopic(env.slug, (env.config as SqsEnvSettings | undefined) ?? { region: undefined }, topic, physical, problem);
    default:
      return undefined;
  }
}

/** The same rules as the SQS adapter's plan of a topic, checked ahead of its first use. */
function sqsTopic(slug: string, settings: SqsEnvSettings, topic: TopicConfig, physical: string, problem: (text: string) => void): BrokerTopic | undefined {
  const mode = topic.fanout ?? settings.fanout ?? 'queue';
  const queueUrl = topic.queueUrls?.find((entry) => entry.env_slug === slug)?.url;
  if (queueUrl !== undefined) {
    if (mode === 'sns') {
      problem(`queueUrls names one queue for env '${slug}', but the topic is in fanout 'sns' mode there, where each group has its own queue; drop the URL or use fanout 'queue'`);
      return undefined;
    }
    const fifo = isFifoName(queueNameOfUrl(queueUrl));
    if (topic.fifo !== undefined && topic.fifo !== fifo) {
      problem(`fifo is ${String(topic.fifo)} but its queue URL for env '${slug}' is ${fifo ? '' : 'not '}a FIFO queue (a FIFO queue's name ends in .fifo)`);
      return undefined;
    }
    return { kind: 'queue URL', name: queueUrl, key: `url:${queueUrl}` };
  }
  const fifo = topic.fifo ?? settings.fifo ?? false;
  const why = "SQS and SNS names turn every character but letters, digits, '-' and '_' into '_'";
  if (mode === 'sns') {
    const name = snsTopicName(physical, fifo);
    return { kind: 'SNS topic', name, key: `sns:${name}`, why };
  }
  const name = topicQueueName(physical, fifo);
  return { kind: 'SQS queue', name, key: `queue:${name}`, why };
}
