import { MemoryBrokerServer } from '../../lib';
import { MEMORY_CAPABILITIES } from '../../lib/adapters/memory';
import { runConformanceSuite } from './conformance.suite';
import { memoryRawReader } from '../support/memory';

// Every application of the suite shares one in-memory broker, as replicas share a real one.
const SERVER = 'conformance';

runConformanceSuite({
  broker: 'memory',
  capabilities: MEMORY_CAPABILITIES,
  envConfig: (slug) => ({ slug, type: 'memory', config: { server: SERVER } }),
  publishRaw: async (topicName, body, headers) => MemoryBrokerServer.shared(SERVER).publishRaw(topicName, body, headers),
  // A plain reader of the embedded broker: a queue of its own, read straight off the server.
  rawReader: (topicName) => Promise.resolve(memoryRawReader(MemoryBrokerServer.shared(SERVER), topicName)),
});
