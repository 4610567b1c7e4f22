import { randomUUID } from 'node:crypto';
import type { INestApplicationContext } from '@nestjs/common';
import type { TestingModuleBuilder } from '@nestjs/testing';
import { BROKER_MODULE_OPTIONS } from '../broker.module-definition';
import { validateBrokerOptions } from '../broker-options.validator';
import { DUCTAPE_BROKER_OPTIONS, NAME_PATTERN } from '../constants';
import type { BrokerModuleOptions } from '../interfaces/broker-options.interface';
import { MessageBrokerService } from '../message-broker.service';
import type { BrokerTestHarness } from './broker-test-harness';
import { TestingMessageBrokerService } from './testing-message-broker.service';
import { acquireServer, serverNameFor } from './testing-servers';

export interface InMemoryBrokersOptions {
  /**
   * Share the in-memory brokers with the other testing modules given the same name: two
   * applications in one test, as replicas share a real broker. Default: this testing module's own.
   */
  server?: string;
}

/**
 * Swaps every broker of the DuctapeBrokerModule of a testing module for the embedded in-memory
 * broker, leaving the application's modules as they are: each env entry of each broker becomes
 * `{ type: 'memory' }` on a server of this testing module's own, while the topics, env, product,
 * service, retry policies and schemas stay. Publishing and handling are recorded for the harness
 * (`getBrokerTestHarness(app)`). Returns the builder, for chaining.
 *
 *     const moduleRef = await useInMemoryBrokers(Test.createTestingModule({ imports: [AppModule] })).compile();
 */
export function useInMemoryBrokers(builder: TestingModuleBuilder, options: InMemoryBrokersOptions = {}): TestingModuleBuilder {
  if (options.server !== undefined && (typeof options.server !== 'string' || !NAME_PATTERN.test(options.server))) {
    throw new Error("useInMemoryBrokers: options.server must be a valid name (letters, digits, '.', '_' and '-')");
  }
  return builder
    .overrideProvider(DUCTAPE_BROKER_OPTIONS)
    .useFactory({
      factory: (given: unknown) => validateBrokerOptions(inMemory(given, options.server ?? randomUUID().slice(0, 8))),
      inject: [BROKER_MODULE_OPTIONS],
    })
    .overrideProvider(MessageBrokerService)
    .useClass(TestingMessageBrokerService);
}

/**
 * The harness of an application (or testing module) built with `useInMemoryBrokers`: what was
 * published, what each handler did, the dead letters.
 */
export function getBrokerTestHarness(app: Pick<INestApplicationContext, 'get'>): BrokerTestHarness {
  let service: unknown;
  try {
    service = app.get(MessageBrokerService, { strict: false });
  } catch (error) {
    throw new Error('getBrokerTestHarness: the application has no DuctapeBrokerModule', { cause: error });
  }
  if (!(service instanceof TestingMessageBrokerService)) {
    throw new Error(
      'getBrokerTestHarness: the brokers of this application are not the testing ones; build its testing module with useInMemoryBrokers(Test.createTestingModule(...))',
    );
  }
  return service.harness;
}

/** The options with every env entry on a testing server; anything malformed is left for the validator to report. */
function inMemory(given: unknown, group: string): unknown {
  if (!isObject(given) || !Array.isArray(given.brokers)) return given;
  const options = given as unknown as BrokerModuleOptions<string>;
  return {
    ...options,
    brokers: options.brokers.map((broker: unknown) => {
      if (!isObject(broker) || !Array.isArray(broker.envs) || typeof broker.tag !== 'string') return broker;
      const tag = broker.tag;
      return {
        ...broker,
        envs: broker.envs.map((env: unknown) => {
          if (!isObject(env) || typeof env.slug !== 'string') return env;
          const server = serverNameFor(group, tag, env.slug);
          acquireServer(server);
          // A memory env keeps its bounds; every other setting belongs to the broker it replaces.
          const bounds = env.type === 'memory' && isObject(env.config) ? env.config : {};
          return {
            slug: env.slug,
            ...(env.whenNoGroup !== undefined ? { whenNoGroup: env.whenNoGroup } : {}),
            type: 'memory',
            config: {
              ...(bounds.maxQueueLength !== undefined ? { maxQueueLength: bounds.maxQueueLength } : {}),
              ...(bounds.maxDeadLettersPerGroup !== undefined ? { maxDeadLettersPerGroup: bounds.maxDeadLettersPerGroup } : {}),
              server,
            },
          };
        }),
      };
    }),
  };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
