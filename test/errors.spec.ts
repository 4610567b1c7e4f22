import 'reflect-metadata';
import { inspect } from 'node:util';
import type { INestApplication } from '@nestjs/common';
import { BrokerError, MemoryBrokerServer, type BrokerErrorCode, type BrokerModuleOptions, type MessageBrokerService } from '../lib';
import type { StandardSchemaV1 } from '../lib/interfaces/standard-schema.interface';
import { availableAdapterTypes, BUILT_IN_BROKER_TYPES, hasAdapter } from '../lib/adapters/adapter-factory';
import { createBrokerApp, startupError } from './support/app';
import { sleep, waitFor } from './support/wait';

/**
 * Every error code of DESIGN.md, produced from bad input. Each test also proves that nothing was
 * published: the shared in-memory server counts every accepted message, and a subscriber on the
 * topic would have seen it.
 */
const SERVER = 'errors-spec';
const server = () => MemoryBrokerServer.shared(SERVER);

/** Accepts objects with a numeric `orderId`. */
const orderSchema: StandardSchemaV1<{ orderId: number }> = {
  '~standard': {
    version: 1,
    vendor: 'test',
    validate: (value) => {
      if (typeof value === 'object' && value !== null && (value as { explode?: boolean }).explode) throw new Error('validator bug');
      return typeof value === 'object' && value !== null && typeof (value as { orderId?: unknown }).orderId === 'number'
        ? { value: value as { orderId: number } }
        : { issues: [{ message: 'orderId must be a number', path: ['orderId'] }] };
    },
  },
};

const options = (overrides: Partial<BrokerModuleOptions> = {}): BrokerModuleOptions => ({
  env: 'prd',
  product: 'my_product',
  brokers: [
    { tag: 'sqsbroker', envs: [{ slug: 'prd', type: 'memory', config: { server: SERVER } }] },
    {
      tag: 'strict',
      envs: [{ slug: 'prd', type: 'memory', whenNoGroup: 'reject', config: { server: SERVER, maxQueueLength: 2 } }],
      topics: [{ tag: 'orders', schema: orderSchema }, { tag: 'small' }],
    },
  ],
  maxMessageBytes: 2048,
  ...overrides,
});

describe('error codes from bad input, with nothing published', () => {
  let app: INestApplication;
  let broker: MessageBrokerService;
  const seen: unknown[] = [];

  beforeEach(async () => {
    ({ app, broker } = await createBrokerApp(options()));
    seen.length = 0;
    for (const event of ['sqsbroker:new-orders', 'strict:orders']) {
      await broker.subscribe({ env: 'prd', event, product_tag: 'my_product', input: { callback: (m) => void seen.push(m) } });
    }
  });

  afterEach(async () => {
    await app.close();
  });

  /** Runs `act`, expects a BrokerError with `code`, and checks that no message was accepted. */
  async function expectRefused(code: BrokerErrorCode, act: () => Promise<unknown>, messagePart?: string | RegExp): Promise<BrokerError> {
    const publishedBefore = server().stats.published;
    const error = await act().then(
      () => undefined,
      (thrown: unknown) => thrown,
    );
    expect(error).toBeInstanceOf(BrokerError);
    const brokerError = error as BrokerError;
    expect(brokerError.code).toBe(code);
    if (messagePart) expect(brokerError.message).toMatch(messagePart);
    await sleep(20);
    expect(server().stats.published).toBe(publishedBefore);
    expect(seen).toEqual([]);
    return brokerError;
  }

  const publish = (request: Partial<Parameters<MessageBrokerService['publish']>[0]>) =>
    broker.publish({
      env: 'prd',
      event: 'sqsbroker:new-orders',
      product_tag: 'my_product',
      input: { message: { orderId: 1 } },
      ...request,
    });

  it.each([['no-colon'], ['a:b:c'], [':orders'], ['sqsbroker:'], ['sqs broker:orders'], [42]])(
    'INVALID_EVENT for the event %p',
    async (event) => {
      await expectRefused('INVALID_EVENT', () => publish({ event: event as string }), /brokerTag:topicTag/);
    },
  );

  it('INVALID_EVENT when input.topicTag is not the topic of the event (subscribe)', async () => {
    await expectRefused(
      'INVALID_EVENT',
      () => broker.subscribe({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'my_product', input: { topicTag: 'other', callback: () => undefined } }),
      /topicTag 'other'/,
    );
  });

  it('PRODUCT_NOT_FOUND for another product', async () => {
    await expectRefused('PRODUCT_NOT_FOUND', () => publish({ product_tag: 'their_product' }), /their_product/);
  });

  it('BROKER_NOT_FOUND for an unknown broker tag', async () => {
    await expectRefused('BROKER_NOT_FOUND', () => publish({ event: 'kafkabroker:new-orders' }), /kafkabroker/);
  });

  it('BROKER_ENV_NOT_FOUND for an env the broker does not serve', async () => {
    await expectRefused('BROKER_ENV_NOT_FOUND', () => publish({ env: 'stg' }), /no env 'stg'/);
  });

  it('TOPIC_NOT_FOUND for a topic outside the broker\'s list', async () => {
    await expectRefused('TOPIC_NOT_FOUND', () => publish({ event: 'strict:refunds' }), /no topic 'refunds'/);
  });

  it('INVALID_MESSAGE for a circular structure', async () => {
    const circular: Record<string, unknown> = { a: 1 };
    circular.self = circular;
    await expectRefused('INVALID_MESSAGE', () => publish({ input: { message: circular } }), /not JSON-serialisable/);
  });

  it('INVALID_MESSAGE for a BigInt', async () => {
    await expectRefused('INVALID_MESSAGE', () => publish({ input: { message: { amount: BigInt(10) } } }), /not JSON-serialisable/);
  });

  it.each([[undefined], [() => 1], [Symbol('s')]])('INVALID_MESSAGE for the message %p', async (message) => {
    await expectRefused('INVALID_MESSAGE', () => publish({ input: { message } }), /JSON-serialisable/);
  });

  it('INVALID_MESSAGE for a message over maxMessageBytes, counted in UTF-8 bytes', async () => {
    await expectRefused('INVALID_MESSAGE', () => publish({ input: { message: 'x'.repeat(3000) } }), /too large.*limit is 2048/);
    // 700 three-byte characters: 700 UTF-16 units but 2100 bytes.
    await expectRefused('INVALID_MESSAGE', () => publish({ input: { message: '漢'.repeat(700) } }), /too large/);
    await expect(publish({ input: { message: 'x'.repeat(1500) } })).resolves.toHaveProperty('messageId');
  });

  it('INVALID_MESSAGE for a missing input, bad headers, key or delay', async () => {
    await expectRefused('INVALID_MESSAGE', () => publish({ input: undefined }), /input must be an object/);
    await expectRefused('INVALID_MESSAGE', () => publish({ input: { message: 1, headers: { n: 1 as unknown as string } } }), /headers\.n must be a string/);
    await expectRefused('INVALID_MESSAGE', () => publish({ input: { message: 1, key: '' } }), /input\.key/);
    await expectRefused('INVALID_MESSAGE', () => publish({ input: { message: 1, delayMs: -5 } }), /delayMs/);
  });

  it('INVALID_MESSAGE for a message that fails its topic schema', async () => {
    await expectRefused(
      'INVALID_MESSAGE',
      () => publish({ event: 'strict:orders', input: { message: { orderId: 'not a number' } } }),
      /fails its schema: orderId: orderId must be a number/,
    );
  });

  it('INVALID_MESSAGE when the topic schema throws instead of answering', async () => {
    await expectRefused(
      'INVALID_MESSAGE',
      () => publish({ event: 'strict:orders', input: { message: { orderId: 1, explode: true } } }),
      /its schema could not validate the message: Error: validator bug/,
    );
  });

  it("PUBLISH_FAILED for a topic with no group under the env's whenNoGroup: 'reject', naming the topic and env; nothing kept for a later group", async () => {
    await expectRefused('PUBLISH_FAILED', () => publish({ event: 'strict:small' }), /topic 'my_product\.prd\.small' \[prd\] has no subscription group yet/);
    const got: unknown[] = [];
    await broker.subscribe({ env: 'prd', event: 'strict:small', product_tag: 'my_product', input: { group: 'late', callback: (m) => void got.push(m) } });
    expect(server().depth('my_product.prd.small', 'late')).toBe(0);
    await publish({ event: 'strict:small' });
    await waitFor(() => got.length === 1, 'the message published once the group existed');
  });

  it("a publish still reaches every other group when one group's queue is full (its consumers left)", async () => {
    const sub = await broker.subscribe({ env: 'prd', event: 'strict:small', product_tag: 'my_product', input: { group: 'stalled', callback: () => undefined } });
    await sub.unsubscribe();
    const live: unknown[] = [];
    await broker.subscribe({ env: 'prd', event: 'strict:small', product_tag: 'my_product', input: { group: 'live', callback: (m) => void live.push(m) } });
    for (let i = 0; i < 3; i++) await publish({ event: 'strict:small' });
    await waitFor(() => live.length === 3, 'the live group to get all three');
    expect(server().depth('my_product.prd.small', 'stalled')).toBe(2);
  });

  it('PUBLISH_FAILED after the application has shut down', async () => {
    await app.close();
    await expectRefused('PUBLISH_FAILED', () => publish({}), /shut down/);
  });

  it('INVALID_REQUEST for a reprocessDeadLetters with a bad limit or group (an input mistake, not a broker failure)', async () => {
    await expectRefused(
      'INVALID_REQUEST',
      () => broker.reprocessDeadLetters({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'my_product', group: 'has space' }),
      /group must be a valid name/,
    );
    await expectRefused(
      'INVALID_REQUEST',
      () => broker.reprocessDeadLetters({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'my_product', limit: 0 }),
      /limit must be a positive integer/,
    );
  });

  it('INVALID_SUBSCRIPTION for bad subscription options, listing each problem', async () => {
    const error = await expectRefused('INVALID_SUBSCRIPTION', () =>
      broker.subscribe({
        env: 'prd',
        event: 'sqsbroker:new-orders',
        product_tag: 'my_product',
        input: { callback: () => undefined, concurrency: 0, group: 'has space', retry: { maxAttempts: 0, initialDelayMs: -1 } },
      }),
    );
    expect(error.problems).toEqual([
      "input.group must be a valid name (letters, digits, '.', '_' and '-')",
      'input.concurrency must be an integer from 1 to 10000',
      'input.retry.maxAttempts: must be an integer of at least 1',
      'input.retry.initialDelayMs: must be a number of at least 0',
    ]);
  });

  it('INVALID_SUBSCRIPTION without a callback', async () => {
    await expectRefused(
      'INVALID_SUBSCRIPTION',
      () => broker.subscribe({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'my_product', input: {} as never }),
      /callback must be a function/,
    );
  });

  it('SUBSCRIBE_FAILED once shutdown has begun', async () => {
    await app.close();
    await expectRefused(
      'SUBSCRIBE_FAILED',
      () => broker.subscribe({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'my_product', input: { callback: () => undefined } }),
      /shutting down/,
    );
  });
});

describe('CONFIG_INVALID at startup', () => {
  async function configError(config: unknown): Promise<BrokerError> {
    const error = await startupError(config);
    expect(error.code).toBe('CONFIG_INVALID');
    return error;
  }

  it('lists every problem at once, each naming its field, and echoes no secret', async () => {
    const publishedBefore = server().stats.published;
    const error = await configError({
      env: 'prd',
      product: 'my product',
      brokers: [
        {
          tag: 'sqsbroker',
          envs: [
            { slug: 'dev', type: 'memory' },
            { slug: 'prd', type: 'rabbitmqq' },
            { slug: 'dev', type: 'memory' },
            { slug: 'stg', type: 'rabbitmq', config: { url: 'http://admin:hunter2-secret@rabbit.internal:5672' } },
            { slug: 'qa', type: 'rabbitmq', config: { url: 'amqp://admin:hunter2-secret@[bad' } },
            { slug: 'uat', type: 'sqs', config: { region: 'eu-west-1', accessKeyId: 'AKIA', secretAccessKey: 12345678 } },
            { slug: 'perf', type: 'kafka', config: { brokers: 'localhost:9092' } },
            { slug: 'nats', type: 'nats', config: { servers: [], pass: 'hunter2-secret' } },
          ],
          topics: [{ tag: 'new orders' }, { tag: 'ok', name: { prd: 'bad/name' } }],
        },
        { tag: 'sqsbroker', envs: [] },
      ],
      retry: { maxAttempts: 0, initialDelayMs: 10 },
      shutdownTimeoutMs: 3e9,
    });
    expect(error.problems).toEqual([
      "product: 'my product' is not a valid name (letters, digits, '.', '_' and '-', at most 200, not starting with a symbol)",
      'retry.maxAttempts: must be an integer of at least 1',
      'shutdownTimeoutMs: must be at most 2147483647 (about 24.8 days)',
      "brokers[0].envs[1].type: unknown broker type 'rabbitmqq' (expected one of memory, rabbitmq, kafka, sqs, redis, nats)",
      "brokers[0].envs[2].slug: duplicate env slug 'dev' (also brokers[0].envs[0])",
      "brokers[0].envs[3].config.url: protocol must be 'amqp:' or 'amqps:' (got 'http:')",
      'brokers[0].envs[4].config.url: is not a valid URL',
      'brokers[0].envs[5].config.secretAccessKey: must be a string',
      "brokers[0].envs[6].config.brokers: must be a non-empty array of 'host:port' strings",
      'brokers[0].envs[7].config.servers: must be a non-empty array of server addresses',
      "brokers[0].topics[0].tag: 'new orders' is not a valid name (letters, digits, '.', '_' and '-', at most 200, not starting with a symbol)",
      "brokers[0].topics[1].name.prd: 'bad/name' is not a valid name (letters, digits, '.', '_' and '-', at most 200, not starting with a symbol)",
      "brokers[1].tag: duplicate broker tag 'sqsbroker' (also brokers[0])",
      'brokers[1].envs: must be a non-empty array',
    ]);
    expect(error.message).toContain('14 problems');
    expect(error.message).not.toContain('hunter2');
    expect(error.message).not.toContain('12345678');
    expect(server().stats.published).toBe(publishedBefore);
  });

  it('has an adapter for every built-in broker type (a type without one would be refused where this process needs it)', () => {
    expect(BUILT_IN_BROKER_TYPES.filter((type) => !hasAdapter(type))).toEqual([]);
    expect(availableAdapterTypes()).toEqual(['memory', 'rabbitmq', 'kafka', 'sqs', 'redis', 'nats']);
  });

  it('refuses a missing broker list', async () => {
    expect((await configError({ env: 'prd', product: 'p' })).problems).toEqual(['brokers: must be a non-empty array']);
  });
});

describe('BrokerError as logged', () => {
  it('shows its problems only when it has some', () => {
    const plain = new BrokerError('PUBLISH_FAILED', 'the broker is gone');
    expect(plain.problems).toEqual([]);
    expect(inspect(plain)).not.toContain('problems');
    expect(Object.keys(plain)).not.toContain('problems');
    const config = new BrokerError('CONFIG_INVALID', 'bad', { problems: ['env: must be a string'] });
    expect(inspect(config)).toContain("problems: [ 'env: must be a string' ]");
  });
});
