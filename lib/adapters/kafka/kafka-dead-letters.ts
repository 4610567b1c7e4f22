import type { Kafka } from 'kafkajs';
import { describeError, IncompleteDrainError } from '../../errors';
import { waitAtMost } from '../../support/with-timeout';
import type { AdapterLogger, InboundMessage } from '../broker-adapter';
import { fromKafkaMessage } from './kafka-headers';
import { deadLetterGroupId, deadLetterTopic } from './kafka-names';
import type { KafkaTopology } from './kafka-topology';

export interface DeadLetterReaderSettings {
  /** How long one drain may take, its reader's join included; then it stops with what it moved. */
  drainTimeoutMs: number;
  sessionTimeoutMs: number;
  heartbeatIntervalMs: number;
  fetchMaxWaitMs: number;
}

/**
 * Reads a group's dead letters as the consumer group `T:G:dead-letters` (the one a dead-letter
 * subscription uses), so a dead letter counts as removed once that group's offset passed it.
 * Kafka lets one reader own a partition: this refuses while a dead-letter subscription runs.
 */
export async function drainKafkaDeadLetters(
  kafka: Kafka,
  topology: KafkaTopology,
  settings: DeadLetterReaderSettings,
  logger: AdapterLogger,
  request: { topic: string; group: string; limit: number; visit: (record: InboundMessage) => Promise<void> },
): Promise<number> {
  const { group, limit, visit } = request;
  const source = deadLetterTopic(request.topic, group);
  const groupId = deadLetterGroupId(request.topic, group);
  await topology.ensureTopics([source]);
  if (await topology.hasMembers(groupId)) {
    throw new Error(`the dead letters of '${group}' are being consumed (consumer group '${groupId}'); stop that subscription to reprocess them`);
  }
  // What the group had when the call started: from its committed offset up to the end now.
  const remaining = await topology.uncommittedEnds(groupId, source);
  if (remaining.size === 0 || limit <= 0) return 0;
  let visited = 0;
  let failure: unknown;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const consumer = kafka.consumer({
    groupId,
    sessionTimeout: settings.sessionTimeoutMs,
    heartbeatInterval: settings.heartbeatIntervalMs,
    maxWaitTimeInMs: settings.fetchMaxWaitMs,
    allowAutoTopicCreation: false,
  });
  await consumer.connect();
  try {
    await consumer.subscribe({ topics: [source], fromBeginning: true });
    await consumer.run({
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 1,
      eachBatch: async (payload) => {
        const { batch } = payload;
        const end = remaining.get(batch.partition);
        let moved = 0;
        let drained = false;
        for (const message of batch.messages) {
          if (failure !== undefined || visited + moved >= limit || end === undefined || BigInt(message.offset) >= end) break;
          try {
            await visit({ ...fromKafkaMessage(batch.topic, batch.partition, message), raw: message });
          } catch (error) {
            failure = error;
            break;
          }
          payload.resolveOffset(message.offset);
          moved++;
          if (BigInt(message.offset) + 1n >= end) drained = true;
        }
        try {
          await payload.commitOffsetsIfNecessary(payload.uncommittedOffsets());
          // Counted as removed only once the group's offset has passed them.
          visited += moved;
          if (drained) remaining.delete(batch.partition);
        } catch (error) {
          failure = error;
        }
        if (failure !== undefined || visited >= limit || remaining.size === 0) finish();
      },
    });
    const done = await waitAtMost(finished, settings.drainTimeoutMs);
    if (!done && failure === undefined) {
      failure = new IncompleteDrainError(visited, `the drain's time limit (drainTimeoutMs ${settings.drainTimeoutMs} ms) passed`);
      logger.warn(`reprocessing the dead letters of '${group}' stopped after ${settings.drainTimeoutMs} ms with ${visited} moved; the others remain`);
    }
  } finally {
    await consumer.disconnect().catch(() => undefined);
  }
  if (failure instanceof IncompleteDrainError) throw failure;
  // Stopped by a failure after moving some: the caller learns how many moved, and why it stopped.
  if (failure !== undefined && visited > 0) throw new IncompleteDrainError(visited, describeError(failure));
  if (failure !== undefined) throw failure instanceof Error ? failure : new Error(describeError(failure));
  return visited;
}
