export { createRabbitMqAdapter, RabbitMqAdapter, RABBITMQ_CAPABILITIES, RABBITMQ_DEFAULTS } from './rabbitmq.adapter';
