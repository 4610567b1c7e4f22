export { DuctapeBrokerModule } from './broker.module';
export type { BrokerModuleExtras, BrokerOptionsFactory, DuctapeBrokerModuleAsyncOptions } from './broker.module-definition';
export { MessageBrokerService } from './message-broker.service';
export { defineBrokers } from './define-brokers';
export { BrokerHandlerInvoker, type BrokerHandlerDescriptor } from './broker-handler-invoker';
export { OnBrokerEvent, BrokerMessage, BrokerCtx, type OnBrokerEventMetadata } from './decorators';
export { BrokerError, isBrokerError, NonRetryableError, type BrokerErrorCode, type NonRetryableReason } from './errors';
export { DUCTAPE_BROKER_OPTIONS, DEAD_LETTER_HEADERS, BROKER_CONTEXT_TYPE, type BrokerContextType } from './constants';
export { brokerArgumentsOf, type BrokerRequest } from './enhancers/broker-handler-enhancer';
export type { DeadLetterReason } from './delivery/dead-letters';
export { DEFAULT_RETRY_POLICY } from './delivery/retry';
export { TRACE_ATTRIBUTES, TRACE_HEADERS, TRACER_NAME } from './tracing';
export * from './interfaces';
export { hasGroupSender, hasDeadLetterStore } from './adapters/broker-adapter';
export type {
  BrokerAdapter,
  CompleteBrokerAdapter,
  GroupSender,
  DeadLetterStore,
  AdapterContext,
  AdapterLogger,
  AdapterCapabilities,
  AdapterConsumer,
  AdapterTopic,
  ConsumeOptions,
  DeliveryListener,
  InboundDelivery,
  InboundMessage,
  InboundMetadata,
  OutboundMessage,
} from './adapters/broker-adapter';
export { MemoryBrokerServer, type MemoryBrokerStats } from './adapters/memory';
