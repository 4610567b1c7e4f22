import type { Consumer, EachBatchPayload, Kafka, KafkaMessage } from 'kafkajs';
import { describeError } from '../../errors';
import type { AdapterConsumer, AdapterLogger, DeliveryListener, InboundDelivery } from '../broker-adapter';
import { sleep } from '../../support/sleep';
import { waitAtMost } from '../../support/with-timeout';
import { DUE_HEADER, fromKafkaMessage, headerText } from './kafka-headers';

/** Records of a due topic's partition held in memory until due; past this the partition pauses. */
const HELD_PER_PARTITION = 1000;
/** Pause before a partition whose message was given back is read again. */
const RELEASE_PAUSE_MS = 1000;
/** Longest single pause of a partition waiting for a due time. */
const MAX_PAUSE_MS = 60_000;

export interface KafkaSubscriptionSpec {
  groupId: string;
  topics: string[];
  /** Topics whose messages wait for their due time (delayed publishes, retries). */
  dueTopics: ReadonlySet<string>;
  concurrency: number;
  listener: DeliveryListener;
  sessionTimeoutMs: number;
  heartbeatIntervalMs: number;
  /** How long start() waits for the group to assign this member its partitions. */
  joinWaitMs: number;
  /** How long a fetch waits for data (some brokers answer only then, even when data arrives). */
  fetchMaxWaitMs: number;
  /** How long close() waits for kafkajs's stop (and a first join still pending before it), then for its disconnect. */
  closeWaits: { stopMs: number; disconnectMs: number };
  /** `topic:partition` → the offset where this group starts if it is new there; earlier messages are passed over. */
  startAt: ReadonlyMap<string, bigint>;
  /** The group's committed offsets now, `topic:partition` → offset ('-1': none). */
  committedOffsets: (topics: string[]) => Promise<Map<string, string>>;
}

type Outcome = 'acked' | 'released' | 'abandoned';

/**
 * One partition of a due topic (delays, retries) as this member reads it: records are read ahead
 * and each is held on a timer until due, so none waits behind one due later; the group's offset
 * moves only past records that are done.
 */
interface HeldPartition {
  topic: string;
  partition: number;
  /** Offsets read and not done: held on a timer, or in a handler. */
  readonly open: Map<bigint, NodeJS.Timeout | undefined>;
  /** Offsets done above the committed one, so a re-read (after a rebalance) skips them. */
  readonly done: Set<bigint>;
  /** The offset committed for the group (the next one to read after a restart). */
  committed: bigint;
  /** The offset after the last one read. */
  readTo: bigint;
  /** Resumes the partition paused at HELD_PER_PARTITION. */
  resume?: () => void;
  /** No longer this member's (rebalanced away, or closing): nothing more is delivered or committed. */
  revoked: boolean;
}

/**
 * One subscription: a kafkajs consumer in its own consumer group. Partitions are handled
 * concurrently (up to `concurrency`), the messages of one partition one after the other, and an
 * offset is committed only once its handler resolved, never past an unfinished message. A message
 * that is not due yet pauses only its own partition.
 */
export class KafkaSubscription implements AdapterConsumer {
  private consumer?: Consumer;
  private stopped = false;
  private stopping?: Promise<void>;
  private readonly waiting = new Set<(outcome: Outcome) => void>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Due topics' partitions read ahead, by `topic:partition`. */
  private readonly held = new Map<string, HeldPartition>();
  /** Held records due and waiting for a delivery slot (at most `concurrency` delivered at once). */
  private readonly dueQueue: (() => void)[] = [];
  private heldInFlight = 0;
  /** `topic:partition` → offset below which this member passes messages over (a new group's start). */
  private readonly skipBelow = new Map<string, bigint>();
  private startReady: Promise<void> = Promise.resolve();
  /** Settles once kafkajs's run() is past its first join (or failed). */
  private runStarted: Promise<void> = Promise.resolve();

  constructor(
    private readonly kafka: Kafka,
    private readonly spec: KafkaSubscriptionSpec,
    private readonly logger: AdapterLogger,
  ) {}

  async start(): Promise<void> {
    const { groupId, topics, concurrency, sessionTimeoutMs, heartbeatIntervalMs, joinWaitMs } = this.spec;
    const consumer = this.kafka.consumer({
      groupId,
      sessionTimeout: sessionTimeoutMs,
      heartbeatInterval: heartbeatIntervalMs,
      maxWaitTimeInMs: this.spec.fetchMaxWaitMs,
      allowAutoTopicCreation: false,
      // The fetch loop retries after an error (a closed batch, say) only after this pause.
      // A closed subscription is not restarted after a crash.
      retry: { initialRetryTime: 100, restartOnFailure: () => Promise.resolve(!this.stopped) },
    });
    this.consumer = consumer;
    let joinedOnce: () => void = () => undefined;
    const joined = new Promise<void>((resolve) => (joinedOnce = resolve));
    let running = false;
    let assignment: Record<string, number[]> = {};
    let startCommitted = false;
    const commitStart = async (): Promise<void> => {
      await this.commitStartOffsets(assignment);
      if (Object.keys(assignment).length > 0) startCommitted = true;
    };
    consumer.on(consumer.events.GROUP_JOIN, (event) => {
      assignment = event.payload.memberAssignment;
      // Held records of partitions now another member's are that member's to read again.
      for (const [key, state] of this.held) {
        if (!(assignment[state.topic] ?? []).includes(state.partition)) this.revoke(key, state);
      }
      if (!running) return;
      if (!startCommitted) {
        // The first join failed inside run() (kafkajs restarts the consumer and joins again): the
        // start is committed on this join, before any batch. Without it the group read the whole
        // history, having no offsets.
        let ready: () => void = () => undefined;
        this.startReady = new Promise<void>((resolve) => (ready = resolve));
        void commitStart()
          .catch((error: unknown) => this.logger.error(`${describeError(error)}; messages published before the subscription may be delivered`))
          .finally(ready);
      }
      joinedOnce();
    });
    let crashedForGood: (error: Error) => void = () => undefined;
    const crashed = new Promise<never>((_, reject) => (crashedForGood = reject));
    crashed.catch(() => undefined);
    consumer.on(consumer.events.CRASH, (event) => {
      const { error, restart } = event.payload;
      if (restart) return this.logger.warn(`consumer group '${groupId}' crashed (${describeError(error)}); restarting`);
      // kafkajs gave up on this consumer: nothing is consumed until the subscription is made again.
      this.logger.error(`consumer group '${groupId}' stopped after an error kafkajs does not retry: ${describeError(error)}`);
      crashedForGood(error);
    });
    await consumer.connect();
    // Partitions without a committed offset (a new group's were set to the end before) start at the beginning.
    await consumer.subscribe({ topics, fromBeginning: true });
    let startReady: () => void = () => undefined;
    this.startReady = new Promise<void>((resolve) => (startReady = resolve));
    // run() resolves only once JoinGroup and SyncGroup are done. While another member of the group
    // is inside a long handler it does not rejoin, and the broker holds this join until it does or
    // its rebalance timeout drops it (60 s): subscribe does not wait for that beyond joinWaitMs. The
    // group's start offsets were taken before (spec.startAt), so nothing published from now on is missed.
    const started = consumer
      .run({ autoCommit: false, eachBatchAutoResolve: false, partitionsConsumedConcurrently: concurrency, eachBatch: this.eachBatch })
      .then(async () => {
        running = true;
        // The batches wait until this member has committed where a new group starts.
        try {
          await commitStart();
        } finally {
          startReady();
        }
        if (Object.keys(assignment).length > 0) joinedOnce();
      });
    this.runStarted = started.catch(() => undefined);
    if (!(await waitAtMost(Promise.race([started, crashed]), joinWaitMs))) {
      started.catch((error: unknown) => this.logger.error(`${describeError(error)}; messages published before the subscription may be delivered`));
      return;
    }
    // Once assigned, messages published from now on reach this member.
    await waitAtMost(Promise.race([joined, crashed]), joinWaitMs);
  }

  /**
   * Stops fetching at once. kafkajs's own stop, started here and not awaited, waits for the
   * handlers in flight (whose offsets are committed as they finish), then leaves the group.
   */
  stop(): Promise<void> {
    this.stopped = true;
    const consumer = this.consumer;
    if (consumer && !this.stopping) {
      try {
        consumer.pause(this.spec.topics.map((topic) => ({ topic })));
      } catch {
        // No consumer group (run() never started, or kafkajs is restarting it): nothing to pause.
      }
      // kafkajs's stop() does nothing while run() is still joining: stop once the join is over.
      this.stopping = this.runStarted.then(() => consumer.stop()).catch((error: unknown) => this.logger.warn(`stopping consumer group '${this.spec.groupId}': ${describeError(error)}`));
    }
    return Promise.resolve();
  }

  async close(): Promise<void> {
    await this.stop();
    // Handlers still running are abandoned: their offsets are not committed, so the group reads them again.
    for (const settle of this.waiting) settle('abandoned');
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    // Held records not delivered are not committed: the group reads them again.
    for (const [key, state] of this.held) this.revoke(key, state);
    this.dueQueue.length = 0;
    // A first join still pending (a broker may hold it up to the group's rebalance timeout, 60 s),
    // or a stop the brokers do not answer, is not waited for: disconnecting ends it.
    if (this.stopping && !(await waitAtMost(this.stopping, this.spec.closeWaits.stopMs))) {
      this.logger.warn(`consumer group '${this.spec.groupId}' did not stop within ${this.spec.closeWaits.stopMs} ms; disconnecting`);
    }
    const disconnected = this.consumer?.disconnect().catch((error: unknown) => this.logger.warn(`closing consumer group '${this.spec.groupId}': ${describeError(error)}`));
    if (disconnected) await waitAtMost(disconnected, this.spec.closeWaits.disconnectMs);
  }

  private readonly eachBatch = async (payload: EachBatchPayload): Promise<void> => {
    await this.startReady;
    // The session must not lapse while long handlers run; a rebalance waits for the batch to end.
    // One timer per batch: one per message cost a setInterval and a clearInterval each.
    // When a heartbeat learns the group is rebalancing (another member joined or left), this batch
    // takes no further message: the member rejoins as soon as its handler in flight is done instead
    // of holding the whole group until the batch ends. Per batch: a flag kept across batches stalled
    // the consumer for good when no rejoin followed (a coordinator that moved during a broker restart).
    const state = { rebalancing: false };
    const beat = setInterval(
      () =>
        void payload.heartbeat().catch((error: { type?: string }) => {
          if (error.type === 'REBALANCE_IN_PROGRESS' || error.type === 'ILLEGAL_GENERATION') state.rebalancing = true;
        }),
      this.spec.heartbeatIntervalMs,
    );
    try {
      await this.handleBatch(payload, state);
    } finally {
      clearInterval(beat);
    }
  };

  private async handleBatch(payload: EachBatchPayload, state: { rebalancing: boolean }): Promise<void> {
    const { batch } = payload;
    if (this.spec.dueTopics.has(batch.topic)) return this.holdBatch(payload);
    const startAt = this.skipBelow.get(`${batch.topic}:${batch.partition}`);
    let resolved = false;
    let passedOver = false;
    for (const message of batch.messages) {
      if (this.stopped || state.rebalancing || !payload.isRunning() || payload.isStale()) break;
      if (startAt !== undefined && BigInt(message.offset) < startAt) {
        // Published before this new group existed (kafkajs fetched before the start was committed).
        // Resolved at once up to the start: resolving them one by one committed offsets below the
        // start the group had committed, and a member that took the partition meanwhile (a restart,
        // a second replica) handled them all.
        if (!passedOver) payload.resolveOffset((startAt - 1n).toString());
        passedOver = resolved = true;
        continue;
      }
      const outcome = await this.deliver(batch.topic, batch.partition, message);
      if (outcome === 'abandoned') {
        // Closing: ending the batch with an error keeps kafkajs from heartbeating (and so from
        // rejoining a group it is about to leave) after it.
        if (resolved) await payload.commitOffsetsIfNecessary(ownOffsets(payload)).catch(() => undefined);
        throw new Error('the consumer closed with a handler still running; its message is not committed');
      }
      if (outcome === 'released') {
        this.resumeLater(payload.pause(), RELEASE_PAUSE_MS);
        break;
      }
      payload.resolveOffset(message.offset);
      resolved = true;
    }
    // Committed here, after the handlers resolved (kafkajs's own auto-commit is off).
    if (resolved) await payload.commitOffsetsIfNecessary(ownOffsets(payload));
  }

  /**
   * A batch of a due topic: each record is held on a timer until due (at once when it is), and
   * the batch ends without waiting, so the partition is read on. Past HELD_PER_PARTITION records
   * held, the partition pauses until half of them are done.
   */
  private holdBatch(payload: EachBatchPayload): void {
    const { batch } = payload;
    const key = `${batch.topic}:${batch.partition}`;
    if (batch.messages.length === 0) return;
    let state = this.held.get(key);
    if (!state || state.revoked) {
      const first = BigInt(batch.messages[0].offset);
      state = { topic: batch.topic, partition: batch.partition, open: new Map(), done: new Set(), committed: first, readTo: first, revoked: false };
      this.held.set(key, state);
    }
    const startAt = this.skipBelow.get(key);
    for (const message of batch.messages) {
      if (this.stopped || !payload.isRunning() || payload.isStale()) break;
      const offset = BigInt(message.offset);
      if (startAt !== undefined && offset < startAt) {
        // Published before this new group existed (see handleBatch).
        payload.resolveOffset((startAt - 1n).toString());
        if (state.committed < startAt) state.committed = state.readTo = startAt;
        continue;
      }
      if (offset < state.committed || state.open.has(offset) || state.done.has(offset)) {
        // Read again after a rebalance: held already, or done.
        payload.resolveOffset(message.offset);
        continue;
      }
      if (state.open.size >= HELD_PER_PARTITION) {
        // Read again from this record when resumed (its offset is not resolved).
        state.resume = payload.pause();
        break;
      }
      this.hold(state, message);
      if (offset + 1n > state.readTo) state.readTo = offset + 1n;
      payload.resolveOffset(message.offset);
    }
  }

  private hold(state: HeldPartition, message: KafkaMessage): void {
    const offset = BigInt(message.offset);
    const wait = Number(headerText(message.headers, DUE_HEADER) ?? 0) - Date.now();
    const due = () => {
      state.open.set(offset, undefined);
      this.whenSlotFree(() => void this.deliverHeld(state, message));
    };
    if (wait <= 0) return due();
    // A long wait is cut into the longest a Node.js timer takes.
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!state.revoked) due();
    }, Math.min(wait, 2_147_483_647));
    timer.unref();
    this.timers.add(timer);
    state.open.set(offset, timer);
  }

  private whenSlotFree(start: () => void): void {
    if (this.heldInFlight < this.spec.concurrency) {
      this.heldInFlight++;
      start();
    } else this.dueQueue.push(start);
  }

  private async deliverHeld(state: HeldPartition, message: KafkaMessage): Promise<void> {
    const offset = BigInt(message.offset);
    try {
      if (state.revoked || this.stopped) return;
      const outcome = await this.deliver(state.topic, state.partition, message);
      if (outcome !== 'acked' || state.revoked) {
        // Given back (closing): left open, so it is not committed and is read again.
        return;
      }
      state.open.delete(offset);
      state.done.add(offset);
      await this.commitHeld(state);
      if (state.resume && state.open.size < HELD_PER_PARTITION / 2) {
        const resume = state.resume;
        state.resume = undefined;
        resume();
      }
    } finally {
      this.heldInFlight--;
      const next = this.dueQueue.shift();
      if (next) {
        this.heldInFlight++;
        next();
      }
    }
  }

  /** Commits the partition up to its lowest record not done. */
  private async commitHeld(state: HeldPartition): Promise<void> {
    let watermark = state.readTo;
    for (const offset of state.open.keys()) if (offset < watermark) watermark = offset;
    if (watermark <= state.committed || state.revoked || !this.consumer) return;
    try {
      await this.consumer.commitOffsets([{ topic: state.topic, partition: state.partition, offset: watermark.toString() }]);
      if (watermark > state.committed) state.committed = watermark;
      for (const offset of state.done) if (offset < state.committed) state.done.delete(offset);
    } catch (error) {
      // Done records above the committed offset may be read again (at least once); the next commit tries again.
      this.logger.warn(`committing '${state.topic}' partition ${state.partition} at ${watermark}: ${describeError(error)}`);
    }
  }

  private revoke(key: string, state: HeldPartition): void {
    state.revoked = true;
    for (const timer of state.open.values()) {
      if (timer) {
        clearTimeout(timer);
        this.timers.delete(timer);
      }
    }
    this.held.delete(key);
  }

  /** Hands one message to the delivery layer and waits until it is acked or given back. */
  private deliver(topic: string, partition: number, message: KafkaMessage): Promise<Outcome> {
    return new Promise<Outcome>((resolve) => {
      const settle = (outcome: Outcome) => {
        this.waiting.delete(settle);
        resolve(outcome);
      };
      this.waiting.add(settle);
      const { body, headers, metadata } = fromKafkaMessage(topic, partition, message);
      const delivery: InboundDelivery = {
        body,
        headers,
        metadata,
        raw: { topic, partition, offset: message.offset, key: message.key, headers: message.headers, timestamp: message.timestamp },
        ack: () => {
          settle('acked');
          return Promise.resolve();
        },
        release: () => {
          settle('released');
          return Promise.resolve();
        },
      };
      this.spec.listener(delivery).catch((error: unknown) => this.logger.error(`delivery on '${topic}' failed: ${describeError(error)}`));
    });
  }

  /**
   * At its first join, a member commits where the group starts on each assigned partition the
   * group has committed nothing on yet (the end offset seen when subscribe began), and passes over
   * what lies before it. Another instance that subscribes later then finds the group started and
   * passes over nothing; a partition the group already committed on is never moved. If the commit
   * cannot be made, the subscription fails rather than risk passing over a message later.
   */
  private async commitStartOffsets(assignment: Record<string, number[]>): Promise<void> {
    const candidates: { topic: string; partition: number; offset: bigint }[] = [];
    for (const [topic, partitions] of Object.entries(assignment)) {
      for (const partition of partitions) {
        const offset = this.spec.startAt.get(`${topic}:${partition}`);
        if (offset !== undefined) candidates.push({ topic, partition, offset });
      }
    }
    if (candidates.length === 0 || !this.consumer) return;
    const committed = await this.spec.committedOffsets([...new Set(candidates.map((c) => c.topic))]);
    const fresh = candidates.filter(({ topic, partition }) => (committed.get(`${topic}:${partition}`) ?? '-1') === '-1');
    if (fresh.length === 0) return;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.consumer.commitOffsets(fresh.map(({ topic, partition, offset }) => ({ topic, partition, offset: offset.toString() })));
        break;
      } catch (error) {
        if (attempt >= 3) throw new Error(`consumer group '${this.spec.groupId}' could not commit where it starts: ${describeError(error)}`);
        await sleep(200 * attempt);
      }
    }
    for (const { topic, partition, offset } of fresh) this.skipBelow.set(`${topic}:${partition}`, offset);
  }

  /** Resumes a paused partition later; a long wait is cut into minutes (it pauses again if still not due). */
  private resumeLater(resume: () => void, ms: number): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.stopped) resume();
    }, Math.min(ms, MAX_PAUSE_MS));
    timer.unref();
    this.timers.add(timer);
  }
}

/**
 * The batch's own partition's offsets to commit. kafkajs's uncommittedOffsets() has every assigned
 * partition's: for one a new group has not read yet, that is the beginning, where kafkajs started
 * (the group had no offsets when it joined), and committing it moved the group back from the start
 * it had committed: a member that took the partition then (a restart, a second replica) handled
 * the whole history.
 */
function ownOffsets(payload: EachBatchPayload): ReturnType<EachBatchPayload['uncommittedOffsets']> {
  const { topic, partition } = payload.batch;
  const { topics } = payload.uncommittedOffsets();
  return {
    topics: topics
      .filter((entry) => entry.topic === topic)
      // kafkajs keys its offsets by partition as object keys: strings, whatever its types say.
      .map((entry) => ({ topic, partitions: entry.partitions.filter((offset) => Number(offset.partition) === partition) }))
      .filter((entry) => entry.partitions.length > 0),
  };
}
