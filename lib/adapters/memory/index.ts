export { MemoryAdapter, MEMORY_CAPABILITIES, createMemoryAdapter } from './memory.adapter';
export { MemoryBrokerServer, DEFAULT_MEMORY_LIMITS } from './memory-broker-server';
export type { MemoryBrokerLimits, MemoryBrokerStats } from './memory-broker-server';
