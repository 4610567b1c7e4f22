import type { AdapterConsumer } from './broker-adapter';

/**
 * The consumers an adapter has handed out, so that closing the adapter closes them. Shared by the
 * adapters of real brokers; it knows nothing of any client library.
 */
export class OpenConsumers {
  private readonly open = new Set<AdapterConsumer>();
  private closed = false;

  /** Hands out a started consumer, or closes it when the adapter closed while it started. */
  async adopt(consumer: AdapterConsumer, adapter: string): Promise<AdapterConsumer> {
    if (this.closed) {
      await consumer.close();
      throw new Error(`the ${adapter} adapter closed while the consumer started`);
    }
    this.open.add(consumer);
    return {
      stop: () => consumer.stop(),
      close: async () => {
        this.open.delete(consumer);
        await consumer.close();
      },
    };
  }

  async closeAll(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.open].map((consumer) => consumer.close()));
    this.open.clear();
  }
}
