export { createNatsAdapter, describeServers, NatsAdapter, NATS_CAPABILITIES, NATS_DEFAULTS } from './nats.adapter';
