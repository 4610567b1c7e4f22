import { createAdapter } from '../lib/adapters/adapter-factory';

const context = { brokerTag: 'b', envSlug: 'prd', logger: { log() {}, warn() {}, error() {} } };

describe('adapter factory', () => {
  afterEach(() => {
    jest.dontMock('amqplib');
    jest.resetModules();
  });

  it('says which package to install when a broker client is missing', () => {
    // A mock, on purpose: the client is installed here, so its absence has to be simulated.
    jest.isolateModules(() => {
      jest.doMock('amqplib', () => {
        const error = new Error("Cannot find module 'amqplib' from 'node_modules/amqp-connection-manager'") as NodeJS.ErrnoException;
        error.code = 'MODULE_NOT_FOUND';
        throw error;
      });
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const factory = require('../lib/adapters/adapter-factory') as { createAdapter: typeof createAdapter };
      expect(() => factory.createAdapter({ slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://localhost' } }, context)).toThrow(
        "broker type 'rabbitmq' needs the package 'amqplib': npm install amqplib amqp-connection-manager",
      );
    });
  });

  it('loads the RabbitMQ adapter only when a rabbitmq env is used', () => {
    const adapter = createAdapter({ slug: 'prd', type: 'rabbitmq', config: { url: 'amqp://u:p@localhost:5672/v' } }, context);
    expect(adapter.capabilities.fanOut).toBe(true);
    expect((adapter as unknown as { endpoint: string }).endpoint).toBe('amqp://localhost:5672/v');
  });
});
