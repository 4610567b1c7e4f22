import 'reflect-metadata';
import type { BrokerConfig, TopicConfig } from '../lib';
import { createBrokerApp, startupError } from './support/app';

/**
 * What an adapter would refuse on a topic's first use is refused at startup instead, for every env
 * of a broker that lists its topics: SQS settings that contradict each other, names over a broker's
 * limit, and two topic tags that one env's broker would name alike.
 */

const SQS_URL = 'https://sqs.eu-west-1.amazonaws.com/123456789012';

/** Options with one broker `b` whose envs and topics are given; the process runs in `dev` (memory). */
function options(envs: BrokerConfig['envs'], topics: TopicConfig[], product = 'shop'): unknown {
  return { env: 'dev', product, brokers: [{ tag: 'b', envs: [{ slug: 'dev', type: 'memory' }, ...envs], topics }] };
}

async function problems(config: unknown): Promise<readonly string[]> {
  const error = await startupError(config);
  expect(error.code).toBe('CONFIG_INVALID');
  return error.problems;
}

describe('startup validation of SQS topics', () => {
  it("refuses queueUrls with fanout 'sns' (the topic's or the env's), naming the topic and env", async () => {
    expect(
      await problems(
        options(
          [
            { slug: 'prd', type: 'sqs', config: { region: 'eu-west-1' } },
            { slug: 'stg', type: 'sqs', config: { region: 'eu-west-1', fanout: 'sns' } },
          ],
          [
            { tag: 'orders', fanout: 'sns', queueUrls: [{ env_slug: 'prd', url: `${SQS_URL}/orders` }] },
            { tag: 'refunds', queueUrls: [{ env_slug: 'stg', url: `${SQS_URL}/refunds` }] },
          ],
        ),
      ),
    ).toEqual([
      "brokers[0].topics[0]: queueUrls names one queue for env 'prd', but the topic is in fanout 'sns' mode there, where each group has its own queue; drop the URL or use fanout 'queue'",
      "brokers[0].topics[1]: queueUrls names one queue for env 'stg', but the topic is in fanout 'sns' mode there, where each group has its own queue; drop the URL or use fanout 'queue'",
    ]);
  });

  it('refuses a fifo setting that contradicts its queue URL, either way', async () => {
    expect(
      await problems(
        options(
          [{ slug: 'prd', type: 'sqs', config: { region: 'eu-west-1' } }],
          [
            { tag: 'orders', fifo: false, queueUrls: [{ env_slug: 'prd', url: `${SQS_URL}/orders.fifo` }] },
            { tag: 'refunds', fifo: true, queueUrls: [{ env_slug: 'prd', url: `${SQS_URL}/refunds` }] },
          ],
        ),
      ),
    ).toEqual([
      "brokers[0].topics[0]: fifo is false but its queue URL for env 'prd' is a FIFO queue (a FIFO queue's name ends in .fifo)",
      "brokers[0].topics[1]: fifo is true but its queue URL for env 'prd' is not a FIFO queue (a FIFO queue's name ends in .fifo)",
    ]);
  });

  it("refuses two topic tags that become one queue ('.' turns into '_'), in an env whose config may be absent", async () => {
    expect(await problems(options([{ slug: 'prd', type: 'sqs', config: undefined as never }], [{ tag: 'a.b' }, { tag: 'a_b' }]))).toEqual([
      "brokers[0].topics[1]: in env 'prd' (sqs) topics 'a.b' (topics[0]) and 'a_b' are both the SQS queue 'shop_prd_a_b' " +
        "(SQS and SNS names turn every character but letters, digits, '-' and '_' into '_'); give one of them another name",
    ]);
  });

  it('refuses two topics on one SNS topic, and two on one queue URL', async () => {
    expect(
      await problems(
        options(
          [{ slug: 'prd', type: 'sqs', config: { region: 'eu-west-1', fanout: 'sns' } }],
          [{ tag: 'a.b' }, { tag: 'a_b' }, { tag: 'c', fanout: 'queue', queueUrls: [{ env_slug: 'prd', url: `${SQS_URL}/q` }] }, { tag: 'd', fanout: 'queue', queueUrls: [{ env_slug: 'prd', url: `${SQS_URL}/q` }] }],
        ),
      ),
    ).toEqual([
      "brokers[0].topics[1]: in env 'prd' (sqs) topics 'a.b' (topics[0]) and 'a_b' are both the SNS topic 'shop_prd_a_b' " +
        "(SQS and SNS names turn every character but letters, digits, '-' and '_' into '_'); give one of them another name",
      `brokers[0].topics[3]: in env 'prd' (sqs) topics 'c' (topics[2]) and 'd' are both the queue URL '${SQS_URL}/q'; give one of them another name`,
    ]);
  });

  it('accepts what only looks alike: a FIFO and a standard queue of one base name, a URL in queue mode, other envs in fan-out', async () => {
    const { app } = await createBrokerApp(
      options(
        [
          { slug: 'prd', type: 'sqs', config: { region: 'eu-west-1' } },
          { slug: 'stg', type: 'sqs', config: { region: 'eu-west-1', fanout: 'sns' } },
        ],
        [{ tag: 'a.b', fifo: true }, { tag: 'a_b' }, { tag: 'c', queueUrls: [{ env_slug: 'prd', url: `${SQS_URL}/c.fifo` }] }],
      ) as never,
    );
    await app.close();
  });
});

describe('startup validation of names', () => {
  it('refuses two topics with one physical name on any broker (memory: the configured names)', async () => {
    expect(await problems(options([], [{ tag: 'orders', name: 'shared' }, { tag: 'refunds', name: { dev: 'shared' } }]))).toEqual([
      "brokers[0].topics[1]: in env 'dev' (memory) topics 'orders' (topics[0]) and 'refunds' are both the topic 'shared'; give one of them another name",
    ]);
  });

  it("refuses Kafka topics that differ only by '.' against '_' (Kafka refuses the second)", async () => {
    expect(await problems(options([{ slug: 'prd', type: 'kafka', config: { brokers: ['localhost:9092'] } }], [{ tag: 'a.b' }, { tag: 'a_b' }]))).toEqual([
      "brokers[0].topics[1]: in env 'prd' (kafka) topics 'a.b' (topics[0]) and 'a_b' are both the Kafka topic 'shop.prd.a_b' (Kafka treats '.' and '_' in topic names as one); give one of them another name",
    ]);
  });

  it('refuses a RabbitMQ exchange name over 255 bytes', async () => {
    const tag = 't'.repeat(200);
    const [problem, ...more] = await problems(options([{ slug: 'stg', type: 'rabbitmq', config: { url: 'amqp://localhost' } }], [{ tag }], 'p'.repeat(60)));
    expect(more).toEqual([]);
    expect(problem).toMatch(/^brokers\[0\]\.topics\[0\]: in env 'stg' \(rabbitmq\), the RabbitMQ name 'p{60}…' is longer than 255 bytes; use a shorter topic name or group$/);
  });

  it("refuses a Kafka topic whose '.delay' topic would be over 249 characters", async () => {
    // 40 + '.prd.' + 200 = 245 characters: a valid topic, but its delay topic would have 251.
    const [problem, ...more] = await problems(options([{ slug: 'prd', type: 'kafka', config: { brokers: ['localhost:9092'] } }], [{ tag: 'k'.repeat(200) }], 'p'.repeat(40)));
    expect(more).toEqual([]);
    expect(problem).toBe(
      `brokers[0].topics[0]: in env 'prd' (kafka), the Kafka topic '${'p'.repeat(40)}.prd.${'k'.repeat(15)}…' has 245 characters: ` +
        "with the '.delay' its consumers also read, over Kafka's 249; use a shorter topic name",
    );
  });

  it('accepts a long topic on SQS: its adapter fits names to 80 characters with a hash', async () => {
    const { app } = await createBrokerApp(options([{ slug: 'prd', type: 'sqs', config: { region: 'eu-west-1' } }], [{ tag: 'k'.repeat(200) }, { tag: `${'k'.repeat(199)}x` }]) as never);
    await app.close();
  });
});
