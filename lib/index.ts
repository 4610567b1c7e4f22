export { DuctapeBrokerModule } from './broker.module';
export { BROKER_MODULE_OPTIONS, type BrokerOptionsFactory } from './broker.module-definition';
import type { BROKER_ASYNC_OPTIONS_TYPE } from './broker.module-definition';
/** What `DuctapeBrokerModule.forRootAsync()` takes. */
export type DuctapeBrokerModuleAsyncOptions = typeof BROKER_ASYNC_OPTIONS_TYPE;
export { MessageBrokerService } from './message-broker.service';
export { OnBrokerEvent, type OnBrokerEventMetadata } from './decorators';
export { BrokerError, isBrokerError, type BrokerErrorCode } from './errors';
export { DUCTAPE_BROKER_OPTIONS, DEAD_LETTER_HEADERS } from './constants';
export { DEFAULT_RETRY_POLICY } from './delivery/retry';
export * from './interfaces';
export type {
  BrokerAdapter,
  AdapterCapabilities,
  AdapterConsumer,
  AdapterTopic,
  ConsumeOptions,
  DeliveryListener,
  InboundDelivery,
  InboundMessage,
  OutboundMessage,
} from './adapters/broker-adapter';
export { MemoryBrokerServer, type MemoryBrokerStats } from './adapters/memory';
