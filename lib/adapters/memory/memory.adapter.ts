import type {
  AdapterCapabilities,
  AdapterConsumer,
  AdapterContext,
  AdapterLogger,
  AdapterTopic,
  CompleteBrokerAdapter,
  ConsumeOptions,
  DeliveryListener,
  InboundMessage,
  OutboundMessage,
} from '../broker-adapter';
import { CLOUDEVENTS_SPEC_VERSION } from '../cloudevents';
import { NoGroupWarnings } from '../no-group-warnings';
import type { MemoryEnvConfig } from '../../interfaces/broker-options.interface';
import { DEFAULT_MEMORY_LIMITS, MemoryBrokerServer, type MemoryBrokerLimits } from './memory-broker-server';
import type { MemoryMessage } from './memory-queue';

export const MEMORY_CAPABILITIES: AdapterCapabilities = {
  fanOut: true,
  orderingPerKey: true,
  nativeDelay: true,
  nativeDeadLetters: true,
  detectsNoGroup: true,
};

/** The embedded broker adapter: a MemoryBrokerServer of its own, or a shared one named in the config. */
export class MemoryAdapter implements CompleteBrokerAdapter {
  readonly capabilities = MEMORY_CAPABILITIES;
  readonly server: MemoryBrokerServer;
  private readonly consumers = new Set<AdapterConsumer>();
  private readonly ownsServer: boolean;
  private readonly limits: MemoryBrokerLimits;
  private readonly noGroup: NoGroupWarnings;
  private readonly logger: AdapterLogger;
  /** What connect() logs: whose server this adapter uses. */
  private readonly serverName: string;

  constructor(config: MemoryEnvConfig['config'], context: AdapterContext) {
    this.logger = context.logger;
    this.serverName = config?.server === undefined ? 'a server of its own' : `the shared server '${config.server}'`;
    this.noGroup = new NoGroupWarnings(context.logger, context.envSlug);
    this.limits = {
      maxQueueLength: config?.maxQueueLength ?? DEFAULT_MEMORY_LIMITS.maxQueueLength,
      maxDeadLettersPerGroup: config?.maxDeadLettersPerGroup ?? DEFAULT_MEMORY_LIMITS.maxDeadLettersPerGroup,
    };
    this.ownsServer = config?.server === undefined;
    this.server = this.ownsServer
      ? new MemoryBrokerServer(context.logger)
      : MemoryBrokerServer.shared(config?.server as string, context.logger);
  }

  connect(): Promise<void> {
    this.logger.log(`connected to the in-memory broker (${this.serverName}, in this process)`);
    return Promise.resolve();
  }

  /** Written out rather than through settled(): no closure per message on the hot path. */
  publish(topic: AdapterTopic, message: OutboundMessage): Promise<void> {
    try {
      if (!this.server.hasGroups(topic.name)) {
        // No group yet: accepted and dropped (no group created later receives it), or refused.
        if (topic.whenNoGroup === 'reject') throw this.noGroup.error(topic.name);
        this.noGroup.warn(topic.name);
      }
      return this.server.publish(topic.name, toMemoryMessage(message), message.delayMs, this.limits) ?? ACCEPTED;
    } catch (error) {
      return rejection(error);
    }
  }

  sendToGroup(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    return settled(() => this.server.sendToGroup(topic.name, group, toMemoryMessage(message), message.delayMs, this.limits));
  }

  sendToDeadLetters(topic: AdapterTopic, group: string, message: OutboundMessage): Promise<void> {
    return settled(() => this.server.sendToDeadLetters(topic.name, group, toMemoryMessage(message), this.limits));
  }

  async drainDeadLetters(
    topic: AdapterTopic,
    group: string,
    limit: number,
    visit: (record: InboundMessage) => Promise<void>,
  ): Promise<number> {
    const deadLetters = this.server.queue(topic.name, group, 'dead-letters');
    const count = Math.min(limit, deadLetters.length);
    let removed = 0;
    for (let visited = 0; visited < count; visited++) {
      const message = deadLetters.peekOldest();
      if (!message) break;
      await visit({ body: message.body, headers: message.headers, metadata: message, raw: message });
      // A consumer of the dead letters may have taken it meanwhile: count only what this call removed.
      if (deadLetters.removeOldest(message)) removed++;
    }
    return removed;
  }

  consume(topic: AdapterTopic, options: ConsumeOptions, listener: DeliveryListener): Promise<AdapterConsumer> {
    const consumer = this.server.queue(topic.name, options.group, options.source).addConsumer(options.concurrency, listener);
    const what = `${options.source === 'messages' ? 'topic' : 'the dead letters of topic'} '${topic.name}' (group '${options.group}', concurrency ${options.concurrency})`;
    const handle: AdapterConsumer = {
      stop: () => {
        consumer.stop();
        return Promise.resolve();
      },
      close: () => {
        consumer.close();
        this.consumers.delete(handle);
        this.logger.debug(`consumer of ${what} closed`);
        return Promise.resolve();
      },
    };
    this.consumers.add(handle);
    this.logger.debug(`consumer of ${what} started`);
    return Promise.resolve(handle);
  }

  async close(): Promise<void> {
    await Promise.all([...this.consumers].map((consumer) => consumer.close()));
    if (this.ownsServer) this.server.clearTimers();
  }
}

/**
 * Runs a synchronous step as a promise: a full queue rejects it instead of throwing from the call,
 * and a step that returns a turn to wait for (see MemoryBrokerServer.publish) resolves after it.
 */
function settled(step: () => Promise<void> | undefined | void): Promise<void> {
  try {
    return step() ?? ACCEPTED;
  } catch (error) {
    return rejection(error);
  }
}

/** What the embedded broker answers a step it took at once: one resolved promise for all. */
const ACCEPTED: Promise<void> = Promise.resolve();

function rejection(error: unknown): Promise<never> {
  return Promise.reject(error instanceof Error ? error : new Error(String(error)));
}

/** One object per message: the broker's record of it is also its metadata (the embedded broker has no wire). */
function toMemoryMessage(message: OutboundMessage): MemoryMessage {
  return {
    body: message.body,
    headers: message.headers,
    key: message.key,
    messageId: message.messageId,
    specversion: CLOUDEVENTS_SPEC_VERSION,
    id: message.messageId,
    time: message.publishedAt,
    type: message.type,
    source: message.source,
    contentType: message.contentType,
    correlationId: message.correlationId,
    attempt: message.attempt,
  };
}

export function createMemoryAdapter(config: MemoryEnvConfig['config'], context: AdapterContext): CompleteBrokerAdapter {
  return new MemoryAdapter(config, context);
}
