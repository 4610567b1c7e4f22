import type {
  BrokerAdapterDefinition,
  BrokerAdapterRegistration,
  BrokerEnvConfig,
  BrokerType,
  BuiltInBrokerEnvConfig,
} from '../interfaces/broker-options.interface';
import type { AdapterContext, BrokerAdapter } from './broker-adapter';
import type * as MemoryAdapterModule from './memory';
import type * as KafkaAdapterModule from './kafka';
import type * as RabbitMqAdapterModule from './rabbitmq';
import type * as SqsAdapterModule from './sqs';
import type * as RedisAdapterModule from './redis';
import type * as NatsAdapterModule from './nats';

type BuiltInFactory = (config: BuiltInBrokerEnvConfig, context: AdapterContext) => BrokerAdapter;

/** Every broker type this package knows, with or without an adapter in this version. */
export const BUILT_IN_BROKER_TYPES: readonly BrokerType[] = ['memory', 'rabbitmq', 'kafka', 'sqs', 'redis', 'nats'];

/** Broker types registered in the module's `adapters` option, by name. */
export type RegisteredAdapters = Readonly<Record<string, BrokerAdapterDefinition>>;

/**
 * How each built-in broker type's adapter is made. Each loader requires its adapter folder only
 * when the type is used, so a user of one broker never loads (or needs installed) another one's client.
 */
const ADAPTER_LOADERS: Partial<Record<BrokerType, () => BuiltInFactory>> = {
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
  redis: () => {
    const { createRedisAdapter } = requireClient<typeof RedisAdapterModule>('./redis', 'redis', ['ioredis']);
    return (env, context) => {
      if (env.type !== 'redis') throw new Error(`expected a redis config, got '${env.type}'`);
      return createRedisAdapter(env.config, context);
    };
  },
  nats: () => {
    const { createNatsAdapter } = requireClient<typeof NatsAdapterModule>('./nats', 'nats', ['nats']);
    return (env, context) => {
      if (env.type !== 'nats') throw new Error(`expected a nats config, got '${env.type}'`);
      return createNatsAdapter(env.config, context);
    };
  },
};

export function isBuiltInType(type: string): type is BrokerType {
  return (BUILT_IN_BROKER_TYPES as readonly string[]).includes(type);
}

/** Whether an env of this type can be served: a built-in adapter of this version, or a registered one. */
export function hasAdapter(type: string, registered: RegisteredAdapters = {}): boolean {
  return Object.hasOwn(ADAPTER_LOADERS, type) || (!isBuiltInType(type) && Object.hasOwn(registered, type));
}

/** The broker types that have an adapter: the built-in ones of this version, then the registered ones. */
export function availableAdapterTypes(registered: RegisteredAdapters = {}): string[] {
  return [...Object.keys(ADAPTER_LOADERS), ...Object.keys(registered).filter((type) => !isBuiltInType(type))];
}

/** A registration in its one shape: a bare factory is `{ create }`. */
export function registrationOf(definition: BrokerAdapterDefinition): BrokerAdapterRegistration<unknown> {
  // Typed as taking any config (`unknown`): its `validate` vouched for the config the factory gets.
  return typeof definition === 'function' ? { create: definition } : definition;
}

/** Makes the adapter of one env entry: its registered type's factory, or the built-in adapter. */
export function createAdapter(env: BrokerEnvConfig<string>, context: AdapterContext, registered: RegisteredAdapters = {}): BrokerAdapter {
  if (!isBuiltInType(env.type)) {
    if (!Object.hasOwn(registered, env.type)) throw new Error(`no adapter is registered for broker type '${env.type}'`);
    const adapter = registrationOf(registered[env.type]).create((env as { config?: unknown }).config, context);
    const core = ['connect', 'publish', 'consume', 'close'] as const;
    if (typeof adapter !== 'object' || adapter === null || core.some((method) => typeof adapter[method] !== 'function')) {
      throw new Error(`the adapter factory registered for '${env.type}' did not return a BrokerAdapter (with connect, publish, consume and close)`);
    }
    return adapter;
  }
  const load = ADAPTER_LOADERS[env.type];
  if (!load) throw new Error(`no adapter for broker type '${env.type}' in this version`);
  return load()(env as BuiltInBrokerEnvConfig, context);
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
