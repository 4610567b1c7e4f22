/**
 * `@ductape/nestjs-broker/testing`: run an application's broker module on the embedded in-memory
 * broker in @nestjs/testing, and watch what it publishes, what its handlers do and its dead letters.
 */
export { useInMemoryBrokers, getBrokerTestHarness, type InMemoryBrokersOptions } from './in-memory-brokers';
export type {
  BrokerTestHarness,
  DeadLetter,
  EnvFilter,
  HandledMessage,
  PublishedMessage,
  WaitForHandledOptions,
  WaitForPublishedOptions,
} from './broker-test-harness';
