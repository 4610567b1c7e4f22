import {
  availableAdapterTypes,
  BUILT_IN_BROKER_TYPES,
  hasAdapter,
  isBuiltInType,
  registrationOf,
  type RegisteredAdapters,
} from './adapters/adapter-factory';
import { MAX_TIMER_MS, NAME_PATTERN } from './constants';
import { BrokerError, describeError, redactSecrets } from './errors';
import type { BrokerAdapterDefinition, BrokerEnvConfig, BrokerModuleOptions, BrokerType } from './interfaces/broker-options.interface';
import { physicalTopicProblems } from './routing/physical-names';
import { openTelemetryApi } from './tracing/opentelemetry';

type Problems = string[];
type Obj = Record<string, unknown>;

/**
 * Checks the whole configuration and throws one CONFIG_INVALID error that lists every problem,
 * each naming its field (`brokers[0].envs[1].type`). Values are never echoed, except type names
 * and tags, so a secret in a wrong place never reaches a log.
 */
export function validateBrokerOptions(input: unknown): BrokerModuleOptions<string> {
  const problems: Problems = [];
  if (!isObject(input)) {
    throw configError(['options: must be an object']);
  }
  name(input.env, 'env', problems);
  name(input.product, 'product', problems);
  if (input.service !== undefined) name(input.service, 'service', problems);
  if (input.retry !== undefined) retryPolicy(input.retry, 'retry', problems);
  duration(input.shutdownTimeoutMs, 'shutdownTimeoutMs', problems);
  if (input.registerHandlers !== undefined && typeof input.registerHandlers !== 'boolean') problems.push('registerHandlers: must be true or false');
  positiveInteger(input.maxMessageBytes, 'maxMessageBytes', problems);
  if (input.tracing !== undefined && typeof input.tracing !== 'boolean') problems.push('tracing: must be true or false');
  else if (input.tracing === true && openTelemetryApi() === undefined) {
    problems.push("tracing: true needs the package '@opentelemetry/api', which cannot be loaded: npm install @opentelemetry/api (or leave tracing unset to trace only where it is installed)");
  }
  const registered = adapters(input.adapters, problems);

  if (!Array.isArray(input.brokers) || input.brokers.length === 0) {
    problems.push('brokers: must be a non-empty array');
  } else {
    const tags = new Map<string, number>();
    input.brokers.forEach((broker, i) => {
      const path = `brokers[${i}]`;
      if (!isObject(broker)) return void problems.push(`${path}: must be an object`);
      if (name(broker.tag, `${path}.tag`, problems)) {
        const tag = broker.tag as string;
        if (tags.has(tag)) problems.push(`${path}.tag: duplicate broker tag '${tag}' (also brokers[${tags.get(tag)}])`);
        else tags.set(tag, i);
      }
      const before = problems.length;
      brokerEnvs(broker.envs, `${path}.envs`, input.env, registered, problems);
      if (broker.topics !== undefined) topics(broker.topics, `${path}.topics`, problems);
      // What each env's broker will call each topic, once the entries themselves are well formed.
      if (problems.length === before && typeof input.product === 'string' && NAME_PATTERN.test(input.product)) {
        problems.push(...physicalTopicProblems(input.product, broker as never, path));
      }
    });
  }
  if (problems.length > 0) throw configError(problems);
  return input as unknown as BrokerModuleOptions<string>;
}

/** The `adapters` option: each a name that is not a built-in type, mapped to a factory or `{ create, validate? }`. */
function adapters(value: unknown, problems: Problems): RegisteredAdapters {
  if (value === undefined) return {};
  if (!isObject(value)) {
    problems.push('adapters: must be an object of adapter factories by broker type');
    return {};
  }
  const registered: Record<string, BrokerAdapterDefinition> = {};
  for (const [type, definition] of Object.entries(value)) {
    const path = `adapters.${type.slice(0, 60)}`;
    if (!NAME_PATTERN.test(type)) {
      problems.push(`adapters: ${shown(type)} is not a valid broker type name (letters, digits, '.', '_' and '-')`);
      continue;
    }
    if (isBuiltInType(type)) {
      problems.push(`${path}: '${type}' is a built-in broker type and cannot be registered (choose another name)`);
      continue;
    }
    const create = typeof definition === 'function' ? definition : isObject(definition) ? definition.create : undefined;
    if (typeof create !== 'function') {
      problems.push(`${path}: must be a factory function or an object with a create(config, context) function`);
      continue;
    }
    if (isObject(definition) && definition.validate !== undefined && typeof definition.validate !== 'function') {
      problems.push(`${path}.validate: must be a function`);
      continue;
    }
    registered[type] = definition as BrokerAdapterDefinition;
  }
  return registered;
}

function configError(problems: Problems): BrokerError {
  const count = problems.length === 1 ? '1 problem' : `${problems.length} problems`;
  return new BrokerError(
    'CONFIG_INVALID',
    `Invalid DuctapeBrokerModule configuration (${count}):\n${problems.map((p) => `  - ${p}`).join('\n')}`,
    { problems },
  );
}

function brokerEnvs(envs: unknown, path: string, moduleEnv: unknown, registered: RegisteredAdapters, problems: Problems): void {
  if (!Array.isArray(envs) || envs.length === 0) return void problems.push(`${path}: must be a non-empty array`);
  const slugs = new Map<string, number>();
  envs.forEach((env, j) => {
    const at = `${path}[${j}]`;
    if (!isObject(env)) return void problems.push(`${at}: must be an object`);
    if (name(env.slug, `${at}.slug`, problems)) {
      const slug = env.slug as string;
      if (slugs.has(slug)) problems.push(`${at}.slug: duplicate env slug '${slug}' (also ${path}[${slugs.get(slug)}])`);
      else slugs.set(slug, j);
    }
    const custom = typeof env.type === 'string' && !isBuiltInType(env.type) && Object.hasOwn(registered, env.type);
    if (typeof env.type !== 'string' || (!isBuiltInType(env.type) && !custom)) {
      const expected = [...BUILT_IN_BROKER_TYPES, ...Object.keys(registered)].join(', ');
      problems.push(`${at}.type: unknown broker type ${shown(env.type)} (expected one of ${expected})`);
      return;
    }
    whenNoGroup(env.whenNoGroup, `${at}.whenNoGroup`, problems);
    // The process's own env is checked whole. Another env's connection settings may be absent
    // (a `dev` laptop has no stg URL): what is given is checked now, what is missing on first use.
    // A registered type's config is the registration's to judge: its `validate` runs for the
    // process's own env now, for another env on its first use.
    if (custom) {
      if (env.slug === moduleEnv) customConfig(registered[env.type], env.config, `${at}.config`, problems);
    } else connection(env.type as BrokerType, env.config, `${at}.config`, problems, env.slug !== moduleEnv);
    // A type without an adapter yet is refused only where this process would need it.
    if (env.slug === moduleEnv && !hasAdapter(env.type, registered)) {
      problems.push(`${at}.type: '${String(env.type)}' has no adapter in this version (available: ${availableAdapterTypes(registered).join(', ')})`);
    }
  });
}

/** Runs a registration's `validate` on an env entry's config; its problems are reported under `path`. */
function customConfig(definition: BrokerAdapterDefinition, config: unknown, path: string, problems: Problems): void {
  const registration = registrationOf(definition);
  if (!registration.validate) return;
  let found: unknown;
  try {
    found = registration.validate(config);
  } catch (error) {
    return void problems.push(`${path}: its adapter's validate threw ${describeError(error)}`);
  }
  if (found === undefined) return;
  if (!Array.isArray(found)) return void problems.push(`${path}: its adapter's validate must return a list of problems (got ${typeof found})`);
  // The adapter's own words, redacted and cut like everything else this module reports.
  for (const problem of found) problems.push(`${path}: ${redactSecrets(String(problem)).slice(0, 500)}`);
}

/**
 * Checks the connection settings of an env entry that this process is about to use for the first
 * time (one of another env, whose settings were allowed to be absent at startup). Throws
 * CONFIG_INVALID naming the broker, the env and each field.
 */
export function validateEnvConnection(brokerTag: string, env: BrokerEnvConfig<string>, registered: RegisteredAdapters = {}): void {
  const problems: Problems = [];
  const path = `broker '${brokerTag}' env '${env.slug}' (${env.type}) config`;
  const config = (env as { config?: unknown }).config;
  if (isBuiltInType(env.type)) connection(env.type, config, path, problems, false);
  else if (Object.hasOwn(registered, env.type)) customConfig(registered[env.type], config, path, problems);
  if (problems.length === 0) return;
  const count = problems.length === 1 ? '1 problem' : `${problems.length} problems`;
  throw new BrokerError(
    'CONFIG_INVALID',
    `broker '${brokerTag}' env '${env.slug}' is used for the first time and its configuration is incomplete (${count}):\n${problems.map((p) => `  - ${p}`).join('\n')}`,
    { problems },
  );
}

/**
 * A required connection setting as an adapter reads it. The types accept `undefined` (a config may
 * read an unset variable), and the validator refuses it before any adapter is made: this narrows
 * the type, and refuses it again for an adapter made directly.
 */
export function requiredSetting<T>(value: T | undefined, field: string): T {
  if (value === undefined) throw new BrokerError('CONFIG_INVALID', `config.${field}: is required`);
  return value;
}

/**
 * With `deferred`, a required setting that is absent (undefined), or the whole config, is not a
 * problem yet: validateEnvConnection checks it when the env is first used.
 */
function connection(type: BrokerType, config: unknown, path: string, problems: Problems, deferred: boolean): void {
  const absent = (value: unknown) => deferred && value === undefined;
  if (type === 'memory') {
    if (config === undefined) return;
    if (!isObject(config)) return void problems.push(`${path}: must be an object`);
    if (config.server !== undefined) name(config.server, `${path}.server`, problems);
    positiveInteger(config.maxQueueLength, `${path}.maxQueueLength`, problems);
    positiveInteger(config.maxUnroutedPerTopic, `${path}.maxUnroutedPerTopic`, problems);
    positiveInteger(config.maxDeadLettersPerGroup, `${path}.maxDeadLettersPerGroup`, problems);
    return;
  }
  if (absent(config)) return;
  if (!isObject(config)) return void problems.push(`${path}: is required for type '${type}' and must be an object`);
  switch (type) {
    case 'rabbitmq':
      if (!absent(config.url)) url(config.url, `${path}.url`, ['amqp:', 'amqps:'], problems);
      // 0 would mean "fail at once" or "never": not what anyone configures on purpose.
      duration(config.publishTimeoutMs, `${path}.publishTimeoutMs`, problems, 1);
      duration(config.connectTimeoutMs, `${path}.connectTimeoutMs`, problems, 1);
      duration(config.reconnectDelayMs, `${path}.reconnectDelayMs`, problems, 1);
      positiveInteger(config.heartbeatSeconds, `${path}.heartbeatSeconds`, problems);
      if (config.queueType !== undefined && config.queueType !== 'classic' && config.queueType !== 'quorum') {
        problems.push(`${path}.queueType: must be 'classic' or 'quorum'`);
      }
      if (config.socketOptions !== undefined && !isObject(config.socketOptions)) problems.push(`${path}.socketOptions: must be an object`);
      break;
    case 'redis':
      if (!absent(config.url)) url(config.url, `${path}.url`, ['redis:', 'rediss:'], problems);
      optionalString(config.username, `${path}.username`, problems);
      optionalString(config.password, `${path}.password`, problems);
      if (config.db !== undefined) integerIn(config.db, `${path}.db`, 0, 65_535, problems);
      if (config.tls !== undefined && typeof config.tls !== 'boolean' && !isObject(config.tls)) problems.push(`${path}.tls: must be a boolean or an object`);
      if (config.maxLen !== undefined && config.maxLen !== 0) positiveInteger(config.maxLen, `${path}.maxLen`, problems);
      for (const field of ['publishTimeoutMs', 'connectTimeoutMs', 'blockMs', 'claimIdleMs', 'claimIntervalMs', 'delayPollMs']) {
        duration(config[field], `${path}.${field}`, problems, 1);
      }
      break;
    case 'kafka':
      if (!absent(config.brokers)) hostPorts(config.brokers, `${path}.brokers`, problems);
      optionalString(config.clientId, `${path}.clientId`, problems);
      if (config.ssl !== undefined && typeof config.ssl !== 'boolean' && !isObject(config.ssl)) {
        problems.push(`${path}.ssl: must be a boolean or an object`);
      }
      if (config.sasl !== undefined && !isObject(config.sasl)) problems.push(`${path}.sasl: must be an object`);
      if (config.acks !== undefined && config.acks !== 'all' && config.acks !== 'leader') problems.push(`${path}.acks: must be 'all' or 'leader'`);
      if (config.idempotent !== undefined && typeof config.idempotent !== 'boolean') problems.push(`${path}.idempotent: must be true or false`);
      else if (config.idempotent === true && config.acks === 'leader') problems.push(`${path}.idempotent: an idempotent producer needs acks 'all', not 'leader'`);
      if (config.topicCreation !== undefined && !['admin', 'auto', 'none'].includes(config.topicCreation as string)) {
        problems.push(`${path}.topicCreation: must be 'admin', 'auto' or 'none'`);
      }
      duration(config.lingerMs, `${path}.lingerMs`, problems);
      positiveInteger(config.maxBatchMessages, `${path}.maxBatchMessages`, problems);
      positiveInteger(config.maxBatchBytes, `${path}.maxBatchBytes`, problems);
      positiveInteger(config.numPartitions, `${path}.numPartitions`, problems);
      if (config.replicationFactor !== undefined && config.replicationFactor !== -1) positiveInteger(config.replicationFactor, `${path}.replicationFactor`, problems);
      for (const field of ['publishTimeoutMs', 'connectTimeoutMs', 'requestTimeoutMs', 'sessionTimeoutMs', 'heartbeatIntervalMs', 'joinWaitMs', 'fetchMaxWaitMs', 'drainTimeoutMs']) {
        duration(config[field], `${path}.${field}`, problems, 1);
      }
      break;
    case 'sqs':
      if (!absent(config.region) && (typeof config.region !== 'string' || config.region === '')) problems.push(`${path}.region: must be a non-empty string`);
      if (config.endpoint !== undefined) url(config.endpoint, `${path}.endpoint`, ['http:', 'https:'], problems);
      optionalString(config.accessKeyId, `${path}.accessKeyId`, problems);
      optionalString(config.secretAccessKey, `${path}.secretAccessKey`, problems);
      optionalString(config.sessionToken, `${path}.sessionToken`, problems);
      // Deferred: another env's key or secret may be unset on this machine; the pair is checked on first use.
      if (!deferred && (config.accessKeyId === undefined) !== (config.secretAccessKey === undefined)) {
        problems.push(`${path}: accessKeyId and secretAccessKey must be given together (or neither, for the default credential chain)`);
      }
      if (!deferred && config.sessionToken !== undefined && config.accessKeyId === undefined) problems.push(`${path}.sessionToken: needs accessKeyId and secretAccessKey`);
      if (config.fanout !== undefined && config.fanout !== 'queue' && config.fanout !== 'sns') problems.push(`${path}.fanout: must be 'queue' or 'sns'`);
      if (config.fifo !== undefined && typeof config.fifo !== 'boolean') problems.push(`${path}.fifo: must be a boolean`);
      if (config.createMissing !== undefined && typeof config.createMissing !== 'boolean') problems.push(`${path}.createMissing: must be a boolean`);
      integerIn(config.waitTimeSeconds, `${path}.waitTimeSeconds`, 1, 20, problems);
      // At least 2 s: the extension, every third of it, must land well before the message shows again.
      integerIn(config.visibilityTimeoutSeconds, `${path}.visibilityTimeoutSeconds`, 2, 43_200, problems);
      duration(config.requestTimeoutMs, `${path}.requestTimeoutMs`, problems, 1);
      break;
    case 'nats':
      if (!absent(config.servers) && (!Array.isArray(config.servers) || config.servers.length === 0 || !config.servers.every((s) => typeof s === 'string' && s !== ''))) {
        problems.push(`${path}.servers: must be a non-empty array of server addresses`);
      }
      optionalString(config.token, `${path}.token`, problems);
      optionalString(config.user, `${path}.user`, problems);
      optionalString(config.pass, `${path}.pass`, problems);
      optionalString(config.name, `${path}.name`, problems);
      // Deferred: another env's secrets may be unset on this machine; the pair is checked on first use.
      if (!deferred && (config.user === undefined) !== (config.pass === undefined)) problems.push(`${path}: user and pass must be given together`);
      if (!deferred && config.token !== undefined && config.user !== undefined) problems.push(`${path}: give token or user and pass, not both`);
      if (config.tls !== undefined && typeof config.tls !== 'boolean') {
        if (!isObject(config.tls)) problems.push(`${path}.tls: must be a boolean or an object`);
        else {
          for (const field of ['ca', 'caFile', 'cert', 'certFile', 'key', 'keyFile']) optionalString(config.tls[field], `${path}.tls.${field}`, problems);
          if (config.tls.handshakeFirst !== undefined && typeof config.tls.handshakeFirst !== 'boolean') problems.push(`${path}.tls.handshakeFirst: must be a boolean`);
        }
      }
      for (const field of ['connectTimeoutMs', 'publishTimeoutMs', 'reconnectDelayMs', 'ackWaitMs']) duration(config[field], `${path}.${field}`, problems, 1);
      if (config.retentionMs !== undefined && (typeof config.retentionMs !== 'number' || !Number.isInteger(config.retentionMs) || config.retentionMs < 0)) {
        problems.push(`${path}.retentionMs: must be a whole number of milliseconds, 0 or more`);
      }
      if (config.storage !== undefined && config.storage !== 'file' && config.storage !== 'memory') problems.push(`${path}.storage: must be 'file' or 'memory'`);
      positiveInteger(config.replicas, `${path}.replicas`, problems);
      break;
  }
}

function topics(value: unknown, path: string, problems: Problems): void {
  if (!Array.isArray(value)) return void problems.push(`${path}: must be an array`);
  const tags = new Map<string, number>();
  value.forEach((topic, k) => {
    const at = `${path}[${k}]`;
    if (!isObject(topic)) return void problems.push(`${at}: must be an object`);
    if (name(topic.tag, `${at}.tag`, problems)) {
      const tag = topic.tag as string;
      if (tags.has(tag)) problems.push(`${at}.tag: duplicate topic tag '${tag}' (also ${path}[${tags.get(tag)}])`);
      else tags.set(tag, k);
    }
    if (topic.name !== undefined) {
      if (typeof topic.name === 'string') name(topic.name, `${at}.name`, problems);
      else if (isObject(topic.name)) {
        for (const [slug, physical] of Object.entries(topic.name)) name(physical, `${at}.name.${slug}`, problems);
      } else problems.push(`${at}.name: must be a string or an object of names per env slug`);
    }
    if (topic.queueUrls !== undefined) {
      if (!Array.isArray(topic.queueUrls)) problems.push(`${at}.queueUrls: must be an array`);
      else
        topic.queueUrls.forEach((entry, q) => {
          if (!isObject(entry)) return void problems.push(`${at}.queueUrls[${q}]: must be an object`);
          name(entry.env_slug, `${at}.queueUrls[${q}].env_slug`, problems);
          url(entry.url, `${at}.queueUrls[${q}].url`, ['http:', 'https:'], problems);
        });
    }
    if (topic.schema !== undefined) {
      const standard = isObject(topic.schema) ? topic.schema['~standard'] : undefined;
      if (!isObject(standard) || typeof standard.validate !== 'function') {
        problems.push(`${at}.schema: must implement Standard Schema v1 (a '~standard.validate' function)`);
      }
    }
    if (topic.retry !== undefined) retryPolicy(topic.retry, `${at}.retry`, problems);
    if (topic.fanout !== undefined && topic.fanout !== 'queue' && topic.fanout !== 'sns') problems.push(`${at}.fanout: must be 'queue' or 'sns'`);
    if (topic.fifo !== undefined && typeof topic.fifo !== 'boolean') problems.push(`${at}.fifo: must be a boolean`);
    whenNoGroup(topic.whenNoGroup, `${at}.whenNoGroup`, problems);
  });
}

function whenNoGroup(value: unknown, path: string, problems: Problems): void {
  if (value !== undefined && value !== 'accept' && value !== 'reject') problems.push(`${path}: must be 'accept' or 'reject'`);
}

/** Checks a retry policy; also used for subscription options. */
export function retryPolicy(value: unknown, path: string, problems: Problems): void {
  if (!isObject(value)) return void problems.push(`${path}: must be an object`);
  if (!Number.isInteger(value.maxAttempts) || (value.maxAttempts as number) < 1) {
    problems.push(`${path}.maxAttempts: must be an integer of at least 1`);
  }
  if (value.initialDelayMs === undefined) problems.push(`${path}.initialDelayMs: must be a number of at least 0`);
  else duration(value.initialDelayMs, `${path}.initialDelayMs`, problems);
  if (value.multiplier !== undefined && (typeof value.multiplier !== 'number' || !(value.multiplier >= 1) || !Number.isFinite(value.multiplier))) {
    problems.push(`${path}.multiplier: must be a number of at least 1`);
  }
  duration(value.maxDelayMs, `${path}.maxDelayMs`, problems);
}

function name(value: unknown, path: string, problems: Problems): boolean {
  if (typeof value !== 'string') {
    problems.push(`${path}: must be a string`);
    return false;
  }
  if (!NAME_PATTERN.test(value)) {
    problems.push(`${path}: ${shown(value)} is not a valid name (letters, digits, '.', '_' and '-', at most 200, not starting with a symbol)`);
    return false;
  }
  return true;
}

function url(value: unknown, path: string, protocols: string[], problems: Problems): void {
  if (typeof value !== 'string' || value === '') return void problems.push(`${path}: must be a non-empty URL string`);
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    // The URL itself may hold a password: say what is wrong, never what it was.
    return void problems.push(`${path}: is not a valid URL`);
  }
  if (!protocols.includes(parsed.protocol)) {
    problems.push(`${path}: protocol must be ${protocols.map((p) => `'${p}'`).join(' or ')} (got '${parsed.protocol}')`);
  }
  if (parsed.hostname === '') problems.push(`${path}: has no host`);
}

function hostPorts(value: unknown, path: string, problems: Problems): void {
  if (!Array.isArray(value) || value.length === 0) return void problems.push(`${path}: must be a non-empty array of 'host:port' strings`);
  value.forEach((entry, i) => {
    if (typeof entry !== 'string' || !/^[^\s:/]+:\d{1,5}$/.test(entry)) problems.push(`${path}[${i}]: must be a 'host:port' string`);
  });
}

function optionalString(value: unknown, path: string, problems: Problems): void {
  if (value !== undefined && typeof value !== 'string') problems.push(`${path}: must be a string`);
}

function positiveInteger(value: unknown, path: string, problems: Problems): void {
  if (value !== undefined && (!Number.isInteger(value) || (value as number) < 1)) problems.push(`${path}: must be a positive integer`);
}

/** Milliseconds a timer can wait: Node.js fires longer timers at once. */
function duration(value: unknown, path: string, problems: Problems, min = 0): void {
  if (value === undefined) return;
  if (typeof value !== 'number' || !(value >= min)) problems.push(`${path}: must be a number of at least ${min}`);
  else if (value > MAX_TIMER_MS) problems.push(`${path}: must be at most ${MAX_TIMER_MS} (about 24.8 days)`);
}

function isObject(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A short rendering of a value meant to be a type or a tag, redacted in case a secret ended up there. */
function shown(value: unknown): string {
  const text = typeof value === 'string' ? `'${redactSecrets(value)}'` : value === undefined ? 'undefined' : typeof value;
  return text.length > 60 ? `${text.slice(0, 57)}...'` : text;
}

function integerIn(value: unknown, path: string, min: number, max: number, problems: Problems): void {
  if (value === undefined) return;
  if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) problems.push(`${path}: must be an integer from ${min} to ${max}`);
}
