import { Logger } from '@nestjs/common';
import { redactUrlCredentials } from '../errors';
import type { AdapterLogger } from './broker-adapter';

/** How each built-in broker type is named in a log context; a registered type goes by its own name. */
const TYPE_NAMES: Readonly<Record<string, string>> = {
  memory: 'Memory',
  rabbitmq: 'RabbitMQ',
  kafka: 'Kafka',
  sqs: 'SQS',
  redis: 'Redis',
  nats: 'NATS',
};

/**
 * The Nest Logger context of an adapter of this broker type: `DuctapeBroker:RabbitMQ`. By type,
 * not by broker tag, so one context (and one filter) covers every broker of a kind; the line's
 * `[brokerTag/env]` prefix tells two brokers of one type apart.
 */
export function adapterLogContext(type: string): string {
  return `DuctapeBroker:${Object.hasOwn(TYPE_NAMES, type) ? TYPE_NAMES[type] : type}`;
}

/**
 * An AdapterLogger over Nest's Logger under `context`, each line prefixed with `prefix` and
 * stripped of URL credentials. Lines are rare (never per message), so this costs nothing that matters.
 */
export function createAdapterLogger(context: string, prefix: string): AdapterLogger {
  const logger = new Logger(context);
  // Only redactSecrets' URL rule: adapters name endpoints without credentials already, this covers
  // a client library's text echoing its URL; the `Basic <token>` and `password=` rules would also
  // rewrite plain words ("the Basic Multilingual Plane").
  const line = (message: string): string => `${prefix} ${redactUrlCredentials(message)}`;
  return {
    log: (message) => logger.log(line(message)),
    warn: (message) => logger.warn(line(message)),
    error: (message) => logger.error(line(message)),
    debug: (message) => logger.debug(line(message)),
  };
}
