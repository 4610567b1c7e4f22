export { BrokerHealthIndicator } from './broker-health.indicator';
export type { BrokerHealth } from '../interfaces/message-broker.interface';
