import type { BrokerModuleOptions } from '../lib';

/** The one event of the sample: `<broker tag>:<topic tag>`. */
export const NEW_ORDERS_EVENT = 'sqsbroker:new-orders';

/** Consumer group of the (always failing) invoicing listener; its dead letters are consumed by this name. */
export const INVOICING_GROUP = 'orders.invoicing';

/** The RabbitMQ of `stg` when RABBITMQ_URL is unset: a local server with its default account. */
export const DEFAULT_RABBITMQ_URL = 'amqp://guest:guest@127.0.0.1:5672';

/** The Kafka of env `kafka` when KAFKA_BROKERS is unset: `npm run kafka:local -- --port 9092`. */
export const DEFAULT_KAFKA_BROKERS = '127.0.0.1:9092';

/** The Redis and NATS (with JetStream) of envs `redis` and `nats` when REDIS_URL / NATS_URL are unset. */
export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

/**
 * The broker module options of the orders service, for the environment `env` (DUCTAPE_ENV, default 'dev').
 * dev uses the embedded broker, so `npm start` needs no server; `stg` runs the same code on RabbitMQ,
 * and `prd` on AWS SQS (AWS_REGION, the SDK's default credentials, and SQS_ENDPOINT for a local
 * emulator). Two listeners with their own groups share the topic, so on SQS it fans out through SNS.
 */
export function brokerConfig(env: string = process.env.DUCTAPE_ENV ?? 'dev'): BrokerModuleOptions {
  return {
    env,
    product: 'my_product',
    service: 'orders',
    brokers: [
      {
        tag: 'sqsbroker',
        envs: [
          { slug: 'dev', type: 'memory' },
          {
            slug: 'prd',
            type: 'sqs',
            config: { region: process.env.AWS_REGION ?? 'us-east-1', endpoint: process.env.SQS_ENDPOINT || undefined, fanout: 'sns' },
          },
          { slug: 'stg', type: 'rabbitmq', config: { url: process.env.RABBITMQ_URL ?? DEFAULT_RABBITMQ_URL } },
          // One env per other broker, to try the same code on each (`DUCTAPE_ENV=kafka npm start`).
          { slug: 'kafka', type: 'kafka', config: { brokers: (process.env.KAFKA_BROKERS ?? DEFAULT_KAFKA_BROKERS).split(',') } },
          { slug: 'redis', type: 'redis', config: { url: process.env.REDIS_URL ?? DEFAULT_REDIS_URL } },
          { slug: 'nats', type: 'nats', config: { servers: (process.env.NATS_URL ?? DEFAULT_NATS_URL).split(',') } },
        ],
        topics: [{ tag: 'new-orders' }],
      },
    ],
  };
}
