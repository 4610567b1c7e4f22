import type { BrokerEnvConfig } from '../lib';
import { createAdapter } from '../lib/adapters/adapter-factory';

const context = { brokerTag: 'b', envSlug: 'prd', logger: { log() {}, warn() {}, error() {}, debug() {} } };

describe('adapter factory', () => {
  afterEach(() => {
    jest.dontMock('amqplib');
    jest.dontMock('@aws-sdk/client-sqs');
    jest.resetModules();
  });

  /**
   * A mock, on purpose: the client is installed here, so its absence has to be simulated. Loads
   * the factory afresh with `missing` failing to load, and returns what creating `env` throws.
   */
  function createWithout(missing: string, env: BrokerEnvConfig): () => unknown {
    let create: () => unknown = () => undefined;
    jest.isolateModules(() => {
      jest.doMock(missing, () => {
        const error = new Error(`Cannot find module '${missing}' from 'lib/adapters'`) as NodeJS.ErrnoException;
        error.code = 'MODULE_NOT_FOUND';
        throw error;
      });
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const factory = require('../lib/adapters/adapter-factory') as { createAdapter: typeof createAdapter };
      create = () => factory.createAdapter(env, context);
    });
    return create;
  }

  it('says which package to install when a broker client is missing', () => {
    expect(createWithout('amqplib', { slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://localhost' } })).toThrow(
      "broker type 'rabbitmq' needs the package 'amqplib': npm install amqplib amqp-connection-manager",
    );
  });

  it('loads the RabbitMQ adapter only when a rabbitmq env is used', () => {
    const adapter = createAdapter({ slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://u:p@localhost:5672/v' } }, context);
    expect(adapter.capabilities.fanOut).toBe(true);
    expect((adapter as unknown as { endpoint: string }).endpoint).toBe('amqp://localhost:5672/v');
  });

  it('says which package to install when the AWS SDK SQS client is missing', () => {
    expect(createWithout('@aws-sdk/client-sqs', { slug: 'prd', type: 'sqs', config: { region: 'eu-west-1' } })).toThrow(
      "broker type 'sqs' needs the package '@aws-sdk/client-sqs': npm install @aws-sdk/client-sqs",
    );
  });

  it('loads the SQS adapter for an sqs env; its capabilities follow the env’s mode', () => {
    const queue = createAdapter({ slug: 'prd', type: 'sqs', config: { region: 'eu-west-1' } }, context);
    expect(queue.capabilities).toEqual({ fanOut: false, orderingPerKey: false, nativeDelay: true, nativeDeadLetters: true, detectsNoGroup: false });
    expect((queue as unknown as { endpoint: string }).endpoint).toBe('https://sqs.eu-west-1.amazonaws.com');
    const fifoFanout = createAdapter({ slug: 'prd', type: 'sqs', config: { region: 'eu-west-1', fanout: 'sns', fifo: true } }, context);
    expect(fifoFanout.capabilities).toMatchObject({ fanOut: true, orderingPerKey: true, detectsNoGroup: true });
  });
});
