import type { BrokerModuleOptions } from '../lib';

/** The one event of the sample: `<broker tag>:<topic tag>`. */
export const NEW_ORDERS_EVENT = 'sqsbroker:new-orders';

/** Consumer group of the (always failing) invoicing listener; its dead letters are consumed by this name. */
export const INVOICING_GROUP = 'orders.invoicing';

/** The broker module options of the orders service, for the environment `env` (DUCTAPE_ENV, default 'dev'). */
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
          { slug: 'prd', type: 'memory' },
        ],
        topics: [{ tag: 'new-orders' }],
      },
    ],
  };
}
