import { MemoryBrokerServer } from '../../lib';
import { MEMORY_CAPABILITIES } from '../../lib/adapters/memory';
import { runConformanceSuite } from './conformance.suite';
import { FEATURES } from './declarations';
import { memoryRawReader } from '../support/memory';

// Every application of the suite shares one in-memory broker, as replicas share a real one.
const SERVER = 'conformance';

runConformanceSuite({
  broker: 'memory',
  capabilities: MEMORY_CAPABILITIES,
  features: FEATURES.memory,
  restart: {
    notApplicable:
      'the embedded broker lives in this process: there is no server to restart apart from the process itself (what a process restart keeps is the process-restart test: nothing)',
  },
  // A new process has a new embedded broker: the shared server of this one is gone.
  endProcess: () => MemoryBrokerServer.deleteShared(SERVER),
  batchFailure: { notApplicable: 'the embedded broker takes each publish as one call in this process: no producer batches, nothing to fail' },
  envConfig: (slug) => ({ slug, type: 'memory', config: { server: SERVER } }),
  publishRaw: async (topicName, body, headers) => MemoryBrokerServer.shared(SERVER).publishRaw(topicName, body, headers),
  // A plain reader of the embedded broker: a queue of its own, read straight off the server.
  rawReader: (topicName) => Promise.resolve(memoryRawReader(MemoryBrokerServer.shared(SERVER), topicName)),
});
