import type {
  AdapterConsumer,
  AdapterTopic,
  BrokerAdapter,
  ConsumeOptions,
  DeliveryListener,
  InboundDelivery,
  InboundMessage,
  OutboundMessage,
} from '../adapters/broker-adapter';
import { hasDeadLetterStore, hasGroupSender } from '../adapters/broker-adapter';
import { describeError } from '../errors';

/** A drain over a consumer ends once no dead letter arrived for this long. */
const DRAIN_QUIET_MS = 500;
/** ... and waits this long for the first one. */
const DRAIN_FIRST_WAIT_MS = 2000;

/**
 * What the delivery layer needs of an adapter beyond publishing: a copy for one group (retries,
 * reprocessed dead letters), the group's dead letters (kept, consumed, drained), and a consume
 * that also reads what those parts put aside. An adapter's own implementation is used where it has
 * one (see GroupSender, DeadLetterStore); the rest is built here once, from the core transport:
 *
 * - no `sendToGroup`: the group's copies go to the topic `<topic>.<group>.retry` (with `delayMs`,
 *   so a broker without native delay must emulate it in `publish`), and the group's consumer reads
 *   that topic beside its own, with the same group name.
 * - no `sendToDeadLetters`: dead letters go to the topic `<topic>.<group>.dead-letters`, read as
 *   the same group name; a messages subscription creates that group on the broker when it starts,
 *   so a dead letter is kept even before anyone reads dead letters.
 * - no `drainDeadLetters`: the dead letters are read through `consume`, one at a time, each acked
 *   once `visit` resolved for it; the drain ends at `limit`, at the first failure, or once none
 *   arrived for a moment (a consumer cannot tell what was there when the drain started).
 */
export interface DeliveryParts {
  sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void>;
  sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void>;
  drainDeadLetters(topic: AdapterTopic, group: string, limit: number, visit: (record: InboundMessage) => Promise<void>): Promise<number>;
  consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer>;
}

const partsOf = new WeakMap<BrokerAdapter, DeliveryParts>();

/** The adapter's delivery parts, native or emulated; one object per adapter. */
export function deliveryParts(adapter: BrokerAdapter): DeliveryParts {
  let parts = partsOf.get(adapter);
  if (!parts) {
    parts = buildParts(adapter);
    partsOf.set(adapter, parts);
  }
  return parts;
}

/** The topic that holds one group's copies when the adapter cannot send to one group. */
export function emulatedRetryTopic(topic: AdapterTopic, group: string): AdapterTopic {
  return { name: `${topic.name}.${group}.retry`, tag: topic.tag, config: topic.config, whenNoGroup: 'reject' };
}

/** The topic that holds one group's dead letters when the adapter keeps none itself. */
export function emulatedDeadLetterTopic(topic: AdapterTopic, group: string): AdapterTopic {
  return { name: `${topic.name}.${group}.dead-letters`, tag: topic.tag, config: topic.config, whenNoGroup: 'reject' };
}

function buildParts(adapter: BrokerAdapter): DeliveryParts {
  // The emulations publish through the core. A stand-in without publish (a test's slice of the
  // interface) gets none: only what it implements is used, and a missing part fails when called.
  const emulates = typeof adapter.publish === 'function';
  const nativeGroupSender = typeof adapter.sendToGroup === 'function' || !emulates;
  // A store is the adapter's only when whole: dead letters kept in one place and drained from another would be lost to reprocessing.
  const nativeDeadLetters = hasDeadLetterStore(adapter) || !emulates;
  if (hasGroupSender(adapter) && hasDeadLetterStore(adapter)) {
    // Every part is the adapter's own: straight through, nothing added on any path.
    return {
      sendToGroup: adapter.sendToGroup.bind(adapter),
      sendToDeadLetters: adapter.sendToDeadLetters.bind(adapter),
      drainDeadLetters: adapter.drainDeadLetters.bind(adapter),
      consume: adapter.consume.bind(adapter),
    };
  }

  const sendToGroup = adapter.sendToGroup
    ? adapter.sendToGroup.bind(adapter)
    : emulates
      ? (topic: AdapterTopic, group: string, message: OutboundMessage) => adapter.publish(emulatedRetryTopic(topic, group), message)
      : () => Promise.reject(missing('sendToGroup'));

  const sendToDeadLetters = adapter.sendToDeadLetters && nativeDeadLetters
    ? adapter.sendToDeadLetters.bind(adapter)
    : emulates
      ? (topic: AdapterTopic, group: string, message: OutboundMessage) => adapter.publish(emulatedDeadLetterTopic(topic, group), message)
      : () => Promise.reject(missing('sendToDeadLetters'));

  /** Where a group's dead letters are read from: the adapter's own store, or the emulated topic. */
  const consumeDeadLetters = (topic: AdapterTopic, group: string, concurrency: number, listener: DeliveryListener): Promise<AdapterConsumer> =>
    nativeDeadLetters
      ? adapter.consume(topic, { group, concurrency, source: 'dead-letters' }, listener)
      : adapter.consume(emulatedDeadLetterTopic(topic, group), { group, concurrency, source: 'messages' }, listener);

  const consume = async (topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> => {
    if (options.source === 'dead-letters') return consumeDeadLetters(topic, options.group, options.concurrency, listener);
    const consumers: AdapterConsumer[] = [];
    // Two consumers (the group's copies beside its messages) share the subscription's concurrency.
    const limit = nativeGroupSender ? undefined : sharedLimit(listener, options.concurrency);
    try {
      if (!nativeDeadLetters) {
        // Created now, read later: a dead letter sent before anyone reads dead letters is kept.
        // A dead letter delivered meanwhile is left unacked: closing gives it back.
        const declared = await consumeDeadLetters(topic, options.group, 1, () => UNSETTLED);
        await declared.close();
      }
      if (limit) consumers.push(await adapter.consume(emulatedRetryTopic(topic, options.group), options, limit.listener));
      consumers.push(await adapter.consume(topic, options, limit?.listener ?? listener));
    } catch (error) {
      await Promise.all(consumers.map((consumer) => consumer.close().catch(() => undefined)));
      throw error;
    }
    return consumers.length === 1 ? consumers[0] : allOf(consumers, limit);
  };

  const drainDeadLetters =
    typeof adapter.drainDeadLetters === 'function' && nativeDeadLetters
      ? adapter.drainDeadLetters.bind(adapter)
      : (topic: AdapterTopic, group: string, limit: number, visit: (record: InboundMessage) => Promise<void>) =>
          drainThroughConsumer((listener) => consumeDeadLetters(topic, group, 1, listener), limit, visit);

  return { sendToGroup, sendToDeadLetters, drainDeadLetters, consume };
}

const UNSETTLED: Promise<void> = Promise.resolve();

function missing(part: string): Error {
  return new Error(`the broker adapter has neither ${part} nor publish to emulate it with`);
}

function allOf(consumers: AdapterConsumer[], limit?: SharedLimit): AdapterConsumer {
  return {
    stop: async () => {
      limit?.stop();
      await Promise.all(consumers.map((consumer) => consumer.stop()));
    },
    close: async () => void (await Promise.all(consumers.map((consumer) => consumer.close()))),
  };
}

interface SharedLimit {
  listener: DeliveryListener;
  /** Deliveries still waiting for a slot are not handled: left unacked, their consumer's close gives them back. */
  stop(): void;
}

/** At most `concurrency` deliveries in `listener` at once, whichever consumer they came from. */
function sharedLimit(listener: DeliveryListener, concurrency: number): SharedLimit {
  let active = 0;
  let stopped = false;
  const waiting: (() => void)[] = [];
  const release = (): void => {
    const next = waiting.shift();
    if (next) next(); // the slot passes straight to the next waiting delivery
    else active--;
  };
  return {
    listener: async (delivery) => {
      if (active < concurrency) active++;
      else await new Promise<void>((resolve) => waiting.push(resolve));
      try {
        if (!stopped) await listener(delivery);
      } finally {
        release();
      }
    },
    stop: () => {
      stopped = true;
    },
  };
}

/**
 * Reads dead letters one at a time through a consumer, acking each once `visit` resolved for it.
 * Resolves with the number acked; rejects with the first failure of `visit` (that dead letter is
 * given back when the consumer closes).
 */
async function drainThroughConsumer(
  open: (listener: DeliveryListener) => Promise<AdapterConsumer>,
  limit: number,
  visit: (record: InboundMessage) => Promise<void>,
): Promise<number> {
  if (limit <= 0) return 0;
  let taken = 0;
  let removed = 0;
  let failure: unknown;
  let done = false;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  let quiet: NodeJS.Timeout | undefined;
  const waitQuietly = (ms: number): void => {
    clearTimeout(quiet);
    quiet = setTimeout(finish, ms);
  };
  // What is not acked stays unsettled, and the consumer's close gives it back: released at once,
  // it would come straight back to this same consumer.
  const listener = async (delivery: InboundDelivery): Promise<void> => {
    // An ack may hand over the next delivery before it returns: count what was taken, not acked.
    if (done || taken >= limit) return;
    taken++;
    clearTimeout(quiet);
    try {
      await visit(delivery);
    } catch (error) {
      done = true;
      failure = error;
      return finish();
    }
    try {
      await delivery.ack();
    } catch (error) {
      // Not removed: the drain ends here rather than wait for a delivery that cannot come.
      done = true;
      failure = error;
      return finish();
    }
    if (++removed >= limit) {
      done = true;
      return finish();
    }
    waitQuietly(DRAIN_QUIET_MS);
  };
  const consumer = await open(listener);
  if (taken === 0 && !done) waitQuietly(DRAIN_FIRST_WAIT_MS);
  try {
    await finished;
  } finally {
    done = true;
    clearTimeout(quiet);
    await consumer.stop().catch(() => undefined);
    await consumer.close().catch(() => undefined);
  }
  if (failure !== undefined) throw failure instanceof Error ? failure : new Error(describeError(failure));
  return removed;
}
