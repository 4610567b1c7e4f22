import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { Logger, type INestApplication } from '@nestjs/common';
import { BrokerError, type BrokerModuleOptions, type MessageBrokerService } from '../lib';
import { adapterLogContext, createAdapterLogger } from '../lib/adapters/adapter-logger';
import { CapturingLogger, createBrokerApp, type LogEntry } from './support/app';
import { describeWithBroker } from './support/broker-availability';
import { holdExclusively } from './support/exclusive';
import { runUnique } from './support/names';
import { NATS_URL, deleteCreatedNatsResourcesAfterAll, natsEnv } from './support/nats';
import { RABBITMQ_URL, rabbitEnv, recordDeclarations } from './support/rabbitmq';
import { REDIS_URL, deleteCreatedRedisKeysAfterAll, redisEnv, withRawRedis } from './support/redis';
import { waitFor } from './support/wait';

/**
 * What the adapters log (docs/logging.md): under a Nest Logger context per adapter type, each line
 * prefixed with its `[brokerTag/env]`; one 'connected' line at `log`; nothing at `log` per message;
 * never a credential.
 */

const PRODUCT = runUnique('logging');
const MESSAGES = 100;

/** The adapter contexts, as a user filters them: `DuctapeBroker:<Type>`. */
const adapterEntries = (logger: CapturingLogger, context: string): LogEntry[] => logger.entries.filter((entry) => entry.context === context);
const atLog = (logger: CapturingLogger): LogEntry[] => logger.entries.filter((entry) => entry.level === 'log');

/** An env entry as the module's options take it. */
type EnvEntry = BrokerModuleOptions['brokers'][number]['envs'][number];

/**
 * Starts an app on one env of `tag`, subscribes a group, publishes and consumes MESSAGES messages,
 * and checks what every broker must log: the connected line (once, at log, under `context`, with
 * the endpoint), the consumer's start at debug, and no log-level line added by the messages.
 */
async function exchangeMessages(env: EnvEntry, tag: string, context: string, endpoint: string): Promise<CapturingLogger> {
  const logger = new CapturingLogger();
  const options: BrokerModuleOptions = { env: 'prd', product: PRODUCT, brokers: [{ tag, envs: [env] }] };
  let app: INestApplication | undefined;
  try {
    let broker: MessageBrokerService;
    ({ app, broker } = await createBrokerApp(options, {}, logger));
    const event = `${tag}:t-${randomUUID().slice(0, 8)}`;
    let handled = 0;
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'g', callback: () => void handled++ } });

    const connected = adapterEntries(logger, context).filter((entry) => entry.message.includes('connected to'));
    expect(connected.map((entry) => [entry.level, entry.message])).toEqual([['log', `[${tag}/prd] connected to ${endpoint}`]]);
    // The adapter's lines are under its own context, not the module's.
    expect(logger.entries.filter((entry) => entry.context === 'DuctapeBroker' && entry.message.includes('connected to'))).toEqual([]);
    expect(adapterEntries(logger, context).some((entry) => entry.level === 'debug' && /consumer of .* started/.test(entry.message))).toBe(true);

    const logLinesBefore = atLog(logger).length;
    for (let i = 0; i < MESSAGES; i++) await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { i } } });
    await waitFor(() => handled >= MESSAGES, `${MESSAGES} messages handled (have ${handled})`, 15_000);
    // Quiet by default: a message published and consumed adds nothing at log level, from any context.
    expect(atLog(logger).slice(logLinesBefore)).toEqual([]);
  } finally {
    await app?.close();
  }
  return logger;
}

describe('adapter logging', () => {
  jest.setTimeout(30_000);

  it('the memory adapter: its own context, connected once at log, nothing at log per message', async () => {
    await exchangeMessages({ slug: 'prd', type: 'memory' }, 'mem', adapterLogContext('memory'), 'the in-memory broker (a server of its own, in this process)');
  });

  it('names a context per adapter type; a registered type by its own name', () => {
    expect(['memory', 'rabbitmq', 'kafka', 'sqs', 'redis', 'nats', 'pubsub-custom'].map(adapterLogContext)).toEqual([
      'DuctapeBroker:Memory',
      'DuctapeBroker:RabbitMQ',
      'DuctapeBroker:Kafka',
      'DuctapeBroker:SQS',
      'DuctapeBroker:Redis',
      'DuctapeBroker:NATS',
      'DuctapeBroker:pubsub-custom',
    ]);
  });

  it('redacts a credential even if an adapter line carried one (a client error echoing its URL)', () => {
    const logger = new CapturingLogger();
    Logger.overrideLogger(logger);
    try {
      const adapterLogger = createAdapterLogger('DuctapeBroker:Test', '[b/prd]');
      adapterLogger.warn('lost amqp://svc:s3cret-pw@10.0.0.1:5672/orders (socket closed)');
      adapterLogger.error('cannot reach nats://s3cret-pw@10.0.0.2:4222,redis://:s3cret-pw@10.0.0.3');
      // A password holding '@', '/', '?' or '#' goes whole.
      adapterLogger.warn('lost amqp://svc:s3cret-pw@x/y?z#w@10.0.0.4:5672 and amqp://svc:s3cret-pw#@10.0.0.5');
      // Plain words that look like an auth scheme stay as they are.
      adapterLogger.debug('SQS refuses characters outside the Basic Multilingual Plane');
    } finally {
      // Back to no static logger: each app of this file sets its own.
      Logger.overrideLogger(false);
    }
    expect(logger.entries.map((entry) => [entry.level, entry.context])).toEqual([
      ['warn', 'DuctapeBroker:Test'],
      ['error', 'DuctapeBroker:Test'],
      ['warn', 'DuctapeBroker:Test'],
      ['debug', 'DuctapeBroker:Test'],
    ]);
    expect(logger.entries.map((entry) => entry.message)).toEqual([
      '[b/prd] lost amqp://svc:***@10.0.0.1:5672/orders (socket closed)',
      '[b/prd] cannot reach nats://***@10.0.0.2:4222,redis://***@10.0.0.3',
      '[b/prd] lost amqp://svc:***@10.0.0.4:5672 and amqp://svc:***@10.0.0.5',
      '[b/prd] SQS refuses characters outside the Basic Multilingual Plane',
    ]);
    expect(logger.texts.join('\n')).not.toContain('s3cret-pw');
  });
});

describeWithBroker('rabbitmq', 'adapter logging: RabbitMQ', () => {
  jest.setTimeout(30_000);
  const declared = recordDeclarations();
  // Another file restarting the broker meanwhile would add connection lines to what is counted here.
  holdExclusively('rabbitmq', { cleanup: () => declared.deleteAll() });
  const url = new URL(RABBITMQ_URL);
  const endpoint = `RabbitMQ at ${url.protocol}//${url.hostname}:${url.port || '5672'} (vhost '/')`;

  it('logs connected once at log under DuctapeBroker:RabbitMQ, nothing at log per message, and never the password of its URL', async () => {
    const logger = await exchangeMessages(rabbitEnv('prd'), 'rmq', 'DuctapeBroker:RabbitMQ', endpoint);
    const everything = logger.texts.join('\n');
    if (url.password !== '') expect(everything).not.toContain(`:${url.password}@`);
    expect(everything).not.toContain(RABBITMQ_URL);
  });

  it('a wrong password: the refusal is logged under DuctapeBroker:RabbitMQ at error, naming the endpoint and not the password', async () => {
    const secret = `pw-${randomUUID()}`;
    const wrong = new URL(RABBITMQ_URL);
    wrong.username = 'guest';
    wrong.password = secret;
    const logger = new CapturingLogger();
    const options: BrokerModuleOptions = { env: 'prd', product: PRODUCT, brokers: [{ tag: 'rmq', envs: [rabbitEnv('prd', { url: wrong.toString() })] }] };
    const thrown = await createBrokerApp(options, {}, logger).then(
      async ({ app, broker }) => {
        // Nothing subscribes at startup: the first use connects (and fails).
        try {
          return await broker.publish({ env: 'prd', event: 'rmq:orders', product_tag: PRODUCT, input: { message: 1 } }).then(() => undefined, (error: unknown) => error);
        } finally {
          await app.close();
        }
      },
      (error: unknown) => error,
    );
    expect(thrown).toBeInstanceOf(BrokerError);
    const refusal = adapterEntries(logger, 'DuctapeBroker:RabbitMQ').filter((entry) => entry.message.includes(`cannot connect to ${endpoint}`));
    expect(refusal.map((entry) => entry.level)).toContain('error');
    expect(refusal[0].message).toMatch(/^\[rmq\/prd\] cannot connect to .*ACCESS_REFUSED/);
    expect(adapterEntries(logger, 'DuctapeBroker:RabbitMQ').filter((entry) => entry.message.includes('connected to'))).toEqual([]);
    expect([...logger.texts, (thrown as Error).message, (thrown as Error).stack ?? ''].join('\n')).not.toContain(secret);
  });
});

describeWithBroker('redis', 'adapter logging: Redis', () => {
  jest.setTimeout(30_000);
  deleteCreatedRedisKeysAfterAll([`${PRODUCT}.*`]);

  it('logs connected once at log under DuctapeBroker:Redis, nothing at log per message', async () => {
    const url = new URL(REDIS_URL);
    const db = url.pathname.length > 1 ? url.pathname.slice(1) : '0';
    const user = url.username !== '' ? ` as user '${decodeURIComponent(url.username)}'` : '';
    await exchangeMessages(redisEnv('prd'), 'redis', 'DuctapeBroker:Redis', `Redis at ${url.protocol}//${url.host}/${db}${user}`);
  });

  it('names an ACL user, never its password, in any line (a user of its own, deleted after)', async () => {
    const name = `${PRODUCT}-user`;
    const password = `pw-${randomUUID()}`;
    await withRawRedis((client) => client.call('ACL', 'SETUSER', name, 'on', `>${password}`, `~${PRODUCT}.*`, '&*', '+@all'));
    try {
      const url = new URL(REDIS_URL);
      url.username = name;
      url.password = password;
      const db = url.pathname.length > 1 ? url.pathname.slice(1) : '0';
      const logger = await exchangeMessages(redisEnv('prd', { url: url.toString() }), 'redis', 'DuctapeBroker:Redis', `Redis at redis://${url.host}/${db} as user '${name}'`);
      expect(logger.texts.join('\n')).not.toContain(password);
    } finally {
      await withRawRedis((client) => client.call('ACL', 'DELUSER', name));
    }
  });
});

describeWithBroker('nats', 'adapter logging: NATS', () => {
  jest.setTimeout(30_000);
  deleteCreatedNatsResourcesAfterAll();

  it('logs connected once at log under DuctapeBroker:NATS, nothing at log per message', async () => {
    const server = NATS_URL.replace(/^([a-z]+:\/\/)?[^@/]*@/i, '$1');
    await exchangeMessages(natsEnv('prd'), 'nats', 'DuctapeBroker:NATS', `NATS at ${server} (JetStream)`);
  });
});
