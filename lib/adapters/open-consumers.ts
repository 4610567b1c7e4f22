import type { AdapterConsumer, AdapterLogger } from './broker-adapter';

/**
 * The consumers an adapter has handed out, so that closing the adapter closes them. Shared by the
 * adapters of real brokers; it knows nothing of any client library.
 */
export class OpenConsumers {
  private readonly open = new Set<AdapterConsumer>();
  private closed = false;

  /**
   * Hands out a started consumer, or closes it when the adapter closed while it started. Its start
   * and close are logged at debug, as `what` (the queue or stream and group it reads).
   */
  async adopt(consumer: AdapterConsumer, adapter: string, logger: AdapterLogger, what: string): Promise<AdapterConsumer> {
    if (this.closed) {
      await consumer.close();
      throw new Error(`the ${adapter} adapter closed while the consumer started`);
    }
    this.open.add(consumer);
    logger.debug(`consumer of ${what} started`);
    return {
      stop: () => consumer.stop(),
      close: async () => {
        this.open.delete(consumer);
        await consumer.close();
        logger.debug(`consumer of ${what} closed`);
      },
    };
  }

  async closeAll(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.open].map((consumer) => consumer.close()));
    this.open.clear();
  }
}
