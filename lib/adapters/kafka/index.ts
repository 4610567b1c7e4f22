export { createKafkaAdapter, KafkaAdapter, KAFKA_CAPABILITIES, KAFKA_DEFAULTS } from './kafka.adapter';
