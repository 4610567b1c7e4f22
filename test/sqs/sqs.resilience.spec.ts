import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import type { INestApplication } from '@nestjs/common';
import { BrokerError, type BrokerModuleOptions } from '../../lib';
import { CapturingLogger, createBrokerApp } from '../support/app';
import { describeWithBroker } from '../support/broker-availability';
import { runUnique } from '../support/names';
import { deleteCreatedSqsResourcesAfterAll, rawSendToTopicQueue, SQS_ENDPOINT, sqsEnv } from '../support/sqs';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy';
import { sleep, waitFor } from '../support/wait';

// A product of this run's own; the file deletes exactly the queues and topics it created.
const PRODUCT = runUnique('sqs-resilience');
deleteCreatedSqsResourcesAfterAll();

/**
 * The endpoint going away mid-stream (every link cut, new ones refused for a while), through a
 * TCP proxy in front of the emulator: receives, deletes and visibility changes fail meanwhile.
 */
describeWithBroker('sqs', 'SQS adapter when the endpoint goes away', () => {
  let proxy: TcpProxy;
  let app: INestApplication | undefined;

  beforeEach(async () => {
    proxy = await startTcpProxy(Number(new URL(SQS_ENDPOINT).port), new URL(SQS_ENDPOINT).hostname);
  });

  afterEach(async () => {
    proxy.refuse(false);
    await app?.close();
    app = undefined;
    proxy.close();
  });

  it('loses nothing that publish confirmed: failed publishes reject, and every confirmed message is handled once the endpoint is back', async () => {
    const logger = new CapturingLogger();
    const tag = `t-${randomUUID().slice(0, 8)}`;
    const event = `sq:${tag}`;
    const options: BrokerModuleOptions = {
      env: 'prd',
      product: PRODUCT,
      // Short visibility: a message whose delete was lost in the outage comes back in seconds.
      brokers: [{ tag: 'sq', envs: [sqsEnv('prd', { endpoint: `http://127.0.0.1:${proxy.port}`, visibilityTimeoutSeconds: 2 })] }],
      retry: { maxAttempts: 10, initialDelayMs: 100 },
      shutdownTimeoutMs: 3000,
    };
    const started = await createBrokerApp(options, {}, logger);
    app = started.app;
    const broker = started.broker;
    const handled = new Map<string, number>();
    await broker.subscribe({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: {
        concurrency: 5,
        callback: async (_message, ctx) => {
          handled.set(ctx.messageId, (handled.get(ctx.messageId) ?? 0) + 1);
          // Slow enough that deliveries are in flight when the links are cut: their deletes fail.
          await sleep(50);
        },
      },
    });

    const confirmed: string[] = [];
    const refused: string[] = [];
    let restoredAt = Number.POSITIVE_INFINITY;
    const publishing = (async () => {
      // Publishes go on through the outage, until 100 more were confirmed after it.
      for (let i = 0; confirmed.length < restoredAt + 100; i++) {
        const messageId = `m-${i}`;
        await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { i }, messageId } }).then(
          () => confirmed.push(messageId),
          (error: unknown) => {
            expect(error).toBeInstanceOf(BrokerError);
            expect((error as BrokerError).code).toBe('PUBLISH_FAILED');
            refused.push(messageId);
          },
        );
        await sleep(5);
      }
    })();
    await waitFor(() => confirmed.length >= 100 && handled.size >= 50, '100 confirmed publishes, 50 handled', 10_000);
    proxy.refuse(true);
    proxy.cutAll();
    await sleep(2500);
    proxy.refuse(false);
    restoredAt = confirmed.length;
    await publishing;

    await waitFor(() => confirmed.every((id) => handled.has(id)), 'every confirmed message to be handled', 30_000);
    const lost = confirmed.filter((id) => !handled.has(id));
    const duplicates = [...handled.values()].reduce((sum, count) => sum + count - 1, 0);
    // eslint-disable-next-line no-console
    console.log(`SQS outage: ${confirmed.length} confirmed, ${refused.length} refused, ${lost.length} lost, ${duplicates} duplicate deliveries`);
    expect(refused.length).toBeGreaterThan(0);
    expect(lost).toEqual([]);
    // The pollers said what went wrong, and never with a secret.
    expect(logger.entries.some((entry) => entry.level === 'warn' && entry.message.includes('receiving failed'))).toBe(true);
    expect(logger.texts.join(' ')).not.toContain('test-secret-key');
  }, 60_000);

  it('a connection that goes silent (packets dropped, nothing cut) does not stop the consumer: its receive times out and polling goes on', async () => {
    const logger = new CapturingLogger();
    const tag = `t-${randomUUID().slice(0, 8)}`;
    const event = `sq:${tag}`;
    const started = await createBrokerApp(
      {
        env: 'prd',
        product: PRODUCT,
        brokers: [{ tag: 'sq', envs: [sqsEnv('prd', { endpoint: `http://127.0.0.1:${proxy.port}`, requestTimeoutMs: 2000 })] }],
        shutdownTimeoutMs: 3000,
      },
      {},
      logger,
    );
    app = started.app;
    const handled: unknown[] = [];
    await started.broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { callback: (message) => void handled.push(message) } });
    await started.broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'before' } });
    await waitFor(() => handled.length === 1, 'the first message', 5000);
    proxy.blackhole(true);
    await sleep(3000);
    proxy.blackhole(false);
    // Published around the consumer's stalled link, straight to the emulator.
    await rawSendToTopicQueue(`${PRODUCT}.prd.${tag}`, Buffer.from(JSON.stringify('after')));
    await waitFor(() => handled.length === 2, 'the message sent after the silence', 20_000);
    expect(handled).toEqual(['before', 'after']);
    expect(logger.entries.some((entry) => entry.level === 'warn' && /receiving failed/.test(entry.message))).toBe(true);
  }, 40_000);
});
