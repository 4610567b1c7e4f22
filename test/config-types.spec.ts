import 'reflect-metadata';
import { join } from 'node:path';
import type * as ts from 'typescript';
import type { BrokerModuleOptions } from '../lib';
import { createBrokerApp, startupError } from './support/app';
import { typeCheckSnippets, type Reported } from './support/type-check';
import { BrokerError } from '../lib';

/**
 * Issue 14, item 5: a config that reads its connection settings from the environment compiles
 * under `strict` (`process.env.X` is `string | undefined`), and a wrong field is reported where it
 * is, at the RabbitMQ config. Snippets are compiled with the TypeScript compiler API, as a user's
 * project would compile them; at runtime an unset one is refused when its env is used.
 */

/** Virtual files next to this one, so they import the library by a relative path. */
const SNIPPETS_DIR = join(__dirname, '__config-types__');
const HEADER = `import type { BrokerModuleOptions } from '../../lib/interfaces/broker-options.interface';\n`;

/** Type-checks each snippet (a module exporting a config) and returns its diagnostics. */
function typeCheck(snippets: Record<string, string>, extra: ts.CompilerOptions = {}): Record<string, Reported[]> {
  return typeCheckSnippets(SNIPPETS_DIR, HEADER, snippets, extra);
}

/** A config whose env entries are `envs`, one per line. */
function config(...envs: string[]): string {
  return `export const options: BrokerModuleOptions = {
  env: 'dev',
  product: 'shop',
  brokers: [{ tag: 'orders', envs: [
${envs.map((env) => `    ${env},`).join('\n')}
  ] }],
};
`;
}

const FROM_ENVIRONMENT = config(
  `{ slug: 'dev', type: 'memory' }`,
  // The README's own line.
  `{ slug: 'stg', type: 'rabbitmq', config: { url: process.env.RABBITMQ_URL } }`,
  `{ slug: 'prd', type: 'sqs', config: { region: process.env.AWS_REGION, endpoint: process.env.SQS_ENDPOINT, accessKeyId: process.env.AWS_ACCESS_KEY_ID, secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY, sessionToken: process.env.AWS_SESSION_TOKEN } }`,
  `{ slug: 'qa', type: 'kafka', config: { brokers: process.env.KAFKA_BROKERS?.split(',') } }`,
  `{ slug: 'uat', type: 'redis', config: { url: process.env.REDIS_URL } }`,
  `{ slug: 'perf', type: 'nats', config: { servers: process.env.NATS_SERVERS?.split(','), token: process.env.NATS_TOKEN } }`,
);

describe('config types under strict', () => {
  // One program for all snippets: loading @types/node is most of the cost.
  let strict: Record<string, Reported[]>;
  beforeAll(() => {
    strict = typeCheck({
      fromEnvironment: FROM_ENVIRONMENT,
      wrongField: config(`{ slug: 'dev', type: 'memory' }`, `{ slug: 'stg', type: 'rabbitmq', config: { uri: process.env.RABBITMQ_URL } }`),
      missingUrl: config(`{ slug: 'stg', type: 'rabbitmq', config: { heartbeatSeconds: 5 } }`),
    });
  }, 60_000);

  it('accepts connection settings read from the environment (string | undefined) for every broker type', () => {
    expect(strict.fromEnvironment).toEqual([]);
  });

  it('accepts them with exactOptionalPropertyTypes too (optional settings such as endpoint take undefined)', () => {
    expect(typeCheck({ fromEnvironment: FROM_ENVIRONMENT }, { exactOptionalPropertyTypes: true }).fromEnvironment).toEqual([]);
  }, 60_000);

  it('reports a wrong field where it is, in the RabbitMQ config, against named settings types', () => {
    expect(strict.wrongField).toHaveLength(1);
    const [error] = strict.wrongField;
    expect(error.at).toBe('uri');
    expect(error.line).toBe(6);
    // TypeScript checks a nested literal against every member's `config` (it does not narrow by
    // `type` there): named interfaces keep that list short and legible, RabbitMqEnvSettings in it.
    expect(error.message).toBe(
      "Object literal may only specify known properties, and 'uri' does not exist in type " +
        "'MemoryEnvSettings | RabbitMqEnvSettings | KafkaEnvSettings | SqsEnvSettings | RedisEnvSettings | NatsEnvSettings'.",
    );
  });

  it('still requires the url key: only its value may be undefined', () => {
    expect(strict.missingUrl).toHaveLength(1);
    expect(strict.missingUrl[0].message).toContain("Property 'url' is missing");
    expect(strict.missingUrl[0].message).not.toMatch(/servers|region|brokers/);
  });
});

/** A module that registers the broker type `counting` and uses it next to built-in types. */
function withAdapters(...envs: string[]): string {
  return `import { DuctapeBrokerModule, type BrokerAdapter, type BrokerAdapterRegistration } from '../../lib';
interface CountingConfig { server: string }
declare function countingAdapter(config: CountingConfig): BrokerAdapter;
const counting: BrokerAdapterRegistration<CountingConfig> = {
  create: (config) => countingAdapter(config),
  validate: (config) => (typeof config === 'object' && config !== null ? [] : ['must be an object']),
};
export const module = DuctapeBrokerModule.forRoot({
  env: 'dev',
  product: 'shop',
  adapters: { counting },
  brokers: [{ tag: 'orders', envs: [
${envs.map((env) => `    ${env},`).join('\n')}
  ] }],
});
`;
}

describe('config types with adapters registered', () => {
  let reported: Record<string, Reported[]>;
  beforeAll(() => {
    reported = typeCheck({
      registered: withAdapters(`{ slug: 'dev', type: 'counting', config: { server: 'a' } }`, `{ slug: 'stg', type: 'rabbitmq', config: { url: process.env.RABBITMQ_URL } }`),
      builtInWrongField: withAdapters(`{ slug: 'dev', type: 'counting' }`, `{ slug: 'stg', type: 'rabbitmq', config: { uri: process.env.RABBITMQ_URL } }`),
      builtInMissingUrl: withAdapters(`{ slug: 'stg', type: 'rabbitmq', config: { heartbeatSeconds: 5 } }`),
      misspelledCustom: withAdapters(`{ slug: 'dev', type: 'countin' }`),
      unregistered: config(`{ slug: 'dev', type: 'counting' }`),
      typedVariable: `import type { BrokerAdapter } from '../../lib';
declare function countingAdapter(config: unknown): BrokerAdapter;
export const options: BrokerModuleOptions<'counting'> = {
  env: 'dev',
  product: 'shop',
  adapters: { counting: countingAdapter },
  brokers: [{ tag: 'orders', envs: [{ slug: 'dev', type: 'counting' }, { slug: 'stg', type: 'memory', config: { sever: 'x' } }] }],
};
`,
      asyncFactory: `import { DuctapeBrokerModule, type BrokerAdapter } from '../../lib';
declare function countingAdapter(config: unknown): BrokerAdapter;
export const module = DuctapeBrokerModule.forRootAsync({
  useFactory: (): BrokerModuleOptions<'counting'> => ({
    env: 'dev',
    product: 'shop',
    adapters: { counting: countingAdapter },
    brokers: [{ tag: 'orders', envs: [{ slug: 'dev', type: 'counting' }] }],
  }),
});
`,
    });
  }, 60_000);

  it('accepts an env entry of a registered type through forRoot, which infers the type from adapters', () => {
    expect(reported.registered).toEqual([]);
    expect(reported.asyncFactory).toEqual([]);
  });

  it('still reports a wrong field of a built-in type against that type alone', () => {
    expect(reported.builtInWrongField.map(({ at, message }) => ({ at, last: message.split('\n').pop()?.trim() }))).toEqual([
      { at: 'uri', last: "Object literal may only specify known properties, and 'uri' does not exist in type 'RabbitMqEnvSettings'." },
    ]);
    expect(reported.builtInMissingUrl).toHaveLength(1);
    expect(reported.builtInMissingUrl[0].message).toContain("Property 'url' is missing in type '{ heartbeatSeconds: number; }' but required in type 'RabbitMqEnvSettings'");
    // A typed variable spells its custom types; the built-in ones stay precise there too.
    expect(reported.typedVariable.map(({ at }) => at)).toEqual(['sever']);
  });

  it('refuses a type that is neither built in nor registered, naming the registered ones', () => {
    expect(reported.misspelledCustom).toHaveLength(1);
    const [misspelled] = reported.misspelledCustom;
    expect(misspelled.at).toBe('type');
    expect(misspelled.message).toMatch(/^Type '"countin"' is not assignable to type '[^']*'\. Did you mean '"counting"'\?$/);
    for (const type of ['counting', 'memory', 'rabbitmq', 'kafka', 'sqs', 'redis', 'nats']) expect(misspelled.message).toContain(`"${type}"`);
    expect(reported.unregistered.map(({ at }) => at)).toEqual(['type']);
  });
});

describe('an unset connection setting at runtime', () => {
  // Typed as a user writes it: no cast. The variable is unset here.
  const options = (env: string): BrokerModuleOptions => ({
    env,
    product: 'shop',
    brokers: [
      {
        tag: 'orders',
        envs: [
          { slug: 'dev', type: 'memory' },
          { slug: 'stg', type: 'rabbitmq', config: { url: process.env.DUCTAPE_TEST_UNSET_RABBITMQ_URL } },
        ],
      },
    ],
  });

  it("is CONFIG_INVALID at startup in the process's own env, naming the field", async () => {
    const error = await startupError(options('stg'));
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.problems).toEqual(['brokers[0].envs[1].config.url: must be a non-empty URL string']);
  });

  it("is CONFIG_INVALID on first use of another env, naming the broker, the env and the field", async () => {
    const { app, broker } = await createBrokerApp(options('dev'));
    try {
      const error = await broker.publish({ env: 'stg', event: 'orders:placed', product_tag: 'shop', input: { message: {} } }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BrokerError);
      expect((error as BrokerError).code).toBe('CONFIG_INVALID');
      expect((error as BrokerError).problems).toEqual(["broker 'orders' env 'stg' (rabbitmq) config.url: must be a non-empty URL string"]);
    } finally {
      await app.close();
    }
  });
});
