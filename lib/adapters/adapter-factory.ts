import type { BrokerEnvConfig, BrokerType } from '../interfaces/broker-options.interface';
import type { AdapterContext, BrokerAdapter } from './broker-adapter';
import type * as MemoryAdapterModule from './memory';
import type * as KafkaAdapterModule from './kafka';
import type * as RabbitMqAdapterModule from './rabbitmq';
import type * as SqsAdapterModule from './sqs';

type AdapterFactory = (config: BrokerEnvConfig, context: AdapterContext) => BrokerAdapter;

/**
 * How each broker type's adapter is made. Each loader requires its adapter folder only when the
 * type is used, so a user of one broker never loads (or needs installed) another one's client.
 */
const ADAPTER_LOADERS: Partial<Record<BrokerType, () => AdapterFactory>> = {
  memory: () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { createMemoryAdapter } = require('./memory') as typeof MemoryAdapterModule;
    return (env, context) => createMemoryAdapter(env.type === 'memory' ? env.config : undefined, context);
  },
  rabbitmq: () => {
    const { createRabbitMqAdapter } = requireClient<typeof RabbitMqAdapterModule>('./rabbitmq', 'rabbitmq', ['amqplib', 'amqp-connection-manager']);
    return (env, context) => {
      if (env.type !== 'rabbitmq') throw new Error(`expected a rabbitmq config, got '${env.type}'`);
      return createRabbitMqAdapter(env.config, context);
    };
  },
  kafka: () => {
    const { createKafkaAdapter } = requireClient<typeof KafkaAdapterModule>('./kafka', 'kafka', ['kafkajs']);
    return (env, context) => {
      if (env.type !== 'kafka') throw new Error(`expected a kafka config, got '${env.type}'`);
      return createKafkaAdapter(env.config, context);
    };
  },
  sqs: () => {
    // @aws-sdk/client-sns is loaded only by a topic in fan-out mode.
    const { createSqsAdapter } = requireClient<typeof SqsAdapterModule>('./sqs', 'sqs', ['@aws-sdk/client-sqs']);
    return (env, context) => {
      if (env.type !== 'sqs') throw new Error(`expected an sqs config, got '${env.type}'`);
      return createSqsAdapter(env.config, context);
    };
  },
};

/** Broker types that have an adapter in this version. */
export const AVAILABLE_ADAPTER_TYPES = Object.keys(ADAPTER_LOADERS) as BrokerType[];

export function hasAdapter(type: string): boolean {
  return Object.prototype.hasOwnProperty.call(ADAPTER_LOADERS, type);
}

export function createAdapter(env: BrokerEnvConfig, context: AdapterContext): BrokerAdapter {
  const load = ADAPTER_LOADERS[env.type];
  if (!load) throw new Error(`no adapter for broker type '${env.type}' in this version`);
  return load()(env, context);
}

/**
 * Loads an adapter folder; its client libraries are optional peer dependencies, so a missing one
 * gets an error that says what to install.
 */
function requireClient<T>(path: string, type: string, packages: string[]): T {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(path) as T;
  } catch (error) {
    const missing = (error as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' && packages.find((name) => String((error as Error).message).includes(`'${name}'`));
    if (!missing) throw error;
    throw new Error(`broker type '${type}' needs the package '${missing}': npm install ${packages.join(' ')}`);
  }
}
