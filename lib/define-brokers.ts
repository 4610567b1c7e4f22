import type { BrokerConfig } from './interfaces/broker-options.interface';

/**
 * Returns `brokers` as given. It exists for its type: the broker and topic tags and each topic's
 * schema keep their literal types, so `InferEvents<typeof brokers>` can give each event the
 * message type of its schema. The array still goes to `forRoot({ brokers })` as it is. For the
 * built-in broker types (a custom type's env entry does not match their constraint).
 */
export function defineBrokers<const Brokers extends BrokerConfig[]>(brokers: Brokers): Brokers {
  return brokers;
}
