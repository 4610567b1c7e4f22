import { MemoryBrokerServer } from '../../lib';
import { MEMORY_CAPABILITIES } from '../../lib/adapters/memory';
import { runConformanceSuite } from './conformance.suite';

// Every application of the suite shares one in-memory broker, as replicas share a real one.
const SERVER = 'conformance';

runConformanceSuite({
  broker: 'memory',
  capabilities: MEMORY_CAPABILITIES,
  envConfig: (slug) => ({ slug, type: 'memory', config: { server: SERVER } }),
  publishRaw: async (topicName, body) => MemoryBrokerServer.shared(SERVER).publishRaw(topicName, body),
});
