import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import type { INestApplication } from '@nestjs/common';
import type { ConsumeMessage } from 'amqplib';
import { BrokerError, type BrokerContext, type BrokerModuleOptions, type MessageBrokerService, type RabbitMqEnvConfig } from '../../lib';
import { CapturingLogger, createBrokerApp } from '../support/app';
import { describeWithBroker, itNeeding } from '../support/broker-availability';
import { TerminusModule } from '@nestjs/terminus';
import { BrokerHealthIndicator } from '../../lib/health';
import { holdExclusively } from '../support/exclusive';
import { listQueues, queueDepth, RABBITMQ_URL, rabbitEnv, rabbitmqctl, recordDeclarations, runUnique, withRawConnection } from '../support/rabbitmq';
import { startTcpProxy } from '../support/tcp-proxy';
import { gate, sleep, waitFor } from '../support/wait';

// A product of this run's own: every queue and exchange the file declares is named after it.
const PRODUCT = runUnique('rmq-resilience');
const MESSAGES = 5000;
const SUITE = 'RabbitMQ: connection loss, broker restart and shutdown';

const declared = recordDeclarations();
/** Set once a test stopped the broker's app or closed its connections. */
let controlledServer = false;

// Some tests close every connection and restart the broker: nothing else may use it meanwhile.
holdExclusively('rabbitmq', {
  cleanup: async () => {
    if (controlledServer) {
      // Whatever happened, leave the broker running for whoever comes next.
      await rabbitmqctl('start_app').catch(() => undefined);
      await rabbitmqctl('await_startup').catch(() => undefined);
    }
    await declared.deleteAll();
  },
});

/**
 * The tests that stop RabbitMQ's app or close all its connections (rabbitmqctl, on this machine's
 * node): only when asked, since on a laptop that node is the user's own broker.
 */
const itControllingServer = itNeeding('rabbitmq', SUITE, {
  controlsServer: "stops the RabbitMQ server's app or closes all its connections (rabbitmqctl)",
  tool: 'rabbitmqctl',
});

/** rabbitmqctl, for the tests that drive the server; noted so the cleanup starts the app again. */
function serverControl(...args: string[]): Promise<string> {
  controlledServer = true;
  return rabbitmqctl(...args);
}

describeWithBroker('rabbitmq', SUITE, () => {
  jest.setTimeout(60_000);
  const apps: INestApplication[] = [];

  async function start(config: Partial<RabbitMqEnvConfig['config']> = {}, logger?: CapturingLogger) {
    const options: BrokerModuleOptions = {
      env: 'prd',
      product: PRODUCT,
      brokers: [{ tag: 'rmq', envs: [rabbitEnv('prd', { publishTimeoutMs: 30_000, ...config })] }],
      shutdownTimeoutMs: 5000,
    };
    const started = await createBrokerApp(options, {}, logger);
    apps.push(started.app);
    return started.broker;
  }

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
  });

  function newEvent() {
    const tag = `t-${randomUUID().slice(0, 8)}`;
    return { event: `rmq:${tag}`, topic: `${PRODUCT}.prd.${tag}` };
  }

  /** Counts each messageId the handler sees. */
  function counter() {
    const seen = new Map<string, number>();
    return {
      seen,
      handler: (_message: unknown, ctx: BrokerContext) => void seen.set(ctx.messageId, (seen.get(ctx.messageId) ?? 0) + 1),
      deliveries: () => [...seen.values()].reduce((sum, n) => sum + n, 0),
    };
  }

  /**
   * Publishes MESSAGES messages, 50 at a time, and starts `at[n]` (without waiting for it) once n
   * were sent, so the disruption lands while publishes and deliveries are in flight.
   */
  async function publishAll(broker: MessageBrokerService, event: string, at: Record<number, () => Promise<void>>) {
    // One disruption at a time: the next waits for the previous one to be over.
    let disruptions = Promise.resolve();
    for (let sent = 0; sent < MESSAGES; sent += 50) {
      const disruption = at[sent];
      if (disruption) disruptions = disruptions.then(disruption);
      await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n: sent + i }, messageId: `m-${sent + i}` } }),
        ),
      );
    }
    await disruptions;
  }

  function report(what: string, received: ReturnType<typeof counter>) {
    const lost = MESSAGES - received.seen.size;
    const duplicates = received.deliveries() - received.seen.size;
    // eslint-disable-next-line no-console
    console.log(`${what}: ${MESSAGES} published, ${received.seen.size} received, ${lost} lost, ${duplicates} duplicate deliveries`);
    return { lost, duplicates };
  }

  itControllingServer('reports the broker down while the server has closed its connections, and up once they are back (BrokerHealthIndicator for @nestjs/terminus)', async () => {
    const options: BrokerModuleOptions = { env: 'prd', product: PRODUCT, brokers: [{ tag: 'rmq', envs: [rabbitEnv('prd', { reconnectDelayMs: 500 })] }], shutdownTimeoutMs: 5000 };
    const { app, broker } = await createBrokerApp(options, { imports: [TerminusModule], providers: [BrokerHealthIndicator] });
    apps.push(app);
    const health = app.get(BrokerHealthIndicator);
    const { event } = newEvent();
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { callback: () => undefined } });
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'opens both connections' } });
    expect(health.isHealthy('broker')).toEqual({ broker: { status: 'up', brokers: [{ broker: 'rmq', env: 'prd', type: 'rabbitmq', up: true }] } });

    await serverControl('close_all_connections', 'test');
    await waitFor(() => health.isHealthy('broker').broker.status === 'down', 'the indicator to report the broker down', 5000);
    const down = health.isHealthy('broker');
    expect(down.broker.brokers[0]).toMatchObject({ broker: 'rmq', env: 'prd', type: 'rabbitmq', up: false });
    expect(down.broker.brokers[0].reason).toMatch(/connection to \S+ not open \(reconnecting\)/);
    // The URL's password is in no report.
    const password = new URL(RABBITMQ_URL).password;
    if (password) expect(JSON.stringify(down)).not.toContain(`:${password}@`);
    await waitFor(() => health.isHealthy('broker').broker.status === 'up', 'the indicator to report the broker up again', 20_000);
  });

  itControllingServer(`loses none of ${MESSAGES} messages while every connection is closed twice from the server`, async () => {
    const broker = await start();
    const { event } = newEvent();
    const received = counter();
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'loss', concurrency: 20, callback: received.handler } });
    const closed: number[] = [];
    const closeAll = async () => {
      // If the previous closure is still being recovered from, there is nothing to close yet: wait for it.
      for (let tries = 0; tries < 50; tries++) {
        const out = await serverControl('close_all_connections', 'test');
        const count = Number(/Closed (\d+) connections/.exec(out)?.[1] ?? 0);
        if (count > 0) return void closed.push(count);
        await sleep(100);
      }
    };
    await publishAll(broker, event, { 1000: closeAll, 3000: closeAll });
    // On a timeout the counts are still reported, and the loss assertion below fails.
    await waitFor(() => received.seen.size === MESSAGES, `all ${MESSAGES} messages at the handler`, 20_000).catch(() => undefined);
    const { lost } = report('close_all_connections x2', received);
    expect(closed).toHaveLength(2);
    expect(closed.every((n) => n >= 1)).toBe(true);
    expect(lost).toBe(0);
  });

  itControllingServer(`loses none of ${MESSAGES} messages across a broker restart, and consumers come back by themselves`, async () => {
    const broker = await start();
    // A second application with a short publish timeout: its publishes fail, bounded, while the broker is down.
    const impatient = await start({ publishTimeoutMs: 500 });
    const { event, topic } = newEvent();
    const received = counter();
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'restart', concurrency: 20, callback: received.handler } });
    // Connected before the outage (adapters connect on first use).
    await impatient.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'impatient', callback: () => undefined } });
    let outageError: unknown;
    let outageMs = 0;
    const restart = async () => {
      await serverControl('stop_app');
      const before = Date.now();
      outageError = await impatient.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'during the outage' } }).catch((e: unknown) => e);
      outageMs = Date.now() - before;
      await sleep(500);
      await serverControl('start_app');
    };
    await publishAll(broker, event, { 1500: restart });
    // On a timeout the counts are still reported, and the loss assertion below fails.
    await waitFor(() => received.seen.size === MESSAGES, `all ${MESSAGES} messages at the handler`, 20_000).catch(() => undefined);
    const { lost } = report('stop_app/start_app', received);
    expect(lost).toBe(0);
    expect(outageError).toBeInstanceOf(BrokerError);
    expect((outageError as BrokerError).code).toBe('PUBLISH_FAILED');
    expect((outageError as BrokerError).message).toMatch(/within 500 ms \(publishTimeoutMs\)/);
    expect(outageMs).toBeLessThan(3000);
    // The consumer re-attached: a message published now still arrives, with no restart of the app.
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'after', messageId: 'after-restart' } });
    await waitFor(() => received.seen.has('after-restart'), 'a message published after the restart', 10_000);
    // The durable queue survived the restart with nothing left in it.
    const queue = (await listQueues()).find((q) => q.name === `${topic}:restart`);
    expect(queue).toEqual({ name: `${topic}:restart`, ready: 0, unacked: 0 });
  });

  itControllingServer('delivers again a message whose handler was in flight when the connection dropped; the late ack is harmless', async () => {
    const logger = new CapturingLogger();
    const broker = await start({}, logger);
    const { event, topic } = newEvent();
    const calls: { id: string; redelivered: boolean }[] = [];
    const hold = gate();
    let firstFinished = false;
    await broker.subscribe({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: {
        group: 'inflight',
        concurrency: 1,
        callback: async (_message: unknown, ctx: BrokerContext) => {
          calls.push({ id: ctx.messageId, redelivered: (ctx.raw as ConsumeMessage).fields.redelivered });
          if (calls.length === 1) {
            await hold.promise;
            firstFinished = true;
          }
        },
      },
    });
    const { messageId } = await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'slow' } });
    await waitFor(() => calls.length === 1, 'the handler to start');
    await serverControl('close_all_connections', 'test');
    await waitFor(() => calls.length === 2, 'the redelivery after the reconnect', 10_000);
    expect(calls).toEqual([
      { id: messageId, redelivered: false },
      { id: messageId, redelivered: true },
    ]);
    // The first handler now finishes: its ack belongs to a channel that no longer exists.
    hold.open();
    await waitFor(() => firstFinished, 'the first handler to finish');
    await sleep(300);
    const { messageId: next } = await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'next' } });
    await waitFor(() => calls.length === 3, 'the next message, on a healthy consumer', 5000);
    expect(calls[2].id).toBe(next);
    await sleep(500);
    expect(calls).toHaveLength(3);
    // The old delivery's ack went nowhere: acked on the new channel, its tag would have made the
    // broker close that channel (PRECONDITION_FAILED), or acked another message.
    expect(logger.texts.filter((line) => /closed by the broker|PRECONDITION/.test(line))).toEqual([]);
    expect(logger.texts.some((line) => line.includes('connection to RabbitMQ at amqp://127.0.0.1:5672 lost'))).toBe(true);
    const queue = (await listQueues()).find((q) => q.name === `${topic}:inflight`);
    expect(queue).toEqual({ name: `${topic}:inflight`, ready: 0, unacked: 0 });
  });

  it('on app.close(), finishes and acks 100 in-flight messages: none reaches the next instance', async () => {
    const leaving = await start();
    const staying = await start();
    const { event, topic } = newEvent();
    let started = 0;
    let finished = 0;
    await leaving.subscribe({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: {
        group: 'drain',
        concurrency: 100,
        callback: async () => {
          started++;
          await sleep(500);
          finished++;
        },
      },
    });
    await Promise.all(Array.from({ length: 100 }, (_, i) => leaving.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { i } } })));
    await waitFor(() => started === 100, 'all 100 handlers to start', 5000);
    const elsewhere = counter();
    await staying.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'drain', concurrency: 10, callback: elsewhere.handler } });
    await apps[0].close();
    expect(finished).toBe(100);
    await sleep(1000);
    expect(elsewhere.deliveries()).toBe(0);
    // Read through AMQP: once the other instance is closed too, a message left unacked would be
    // back in the queue, ready; the queue is still there (durable), empty.
    await Promise.all(apps.splice(0).map((app) => app.close()));
    expect(await queueDepth(`${topic}:drain`)).toBe(0);
  });
  it('declares again a queue deleted under a running consumer, and goes on consuming', async () => {
    const broker = await start();
    const { event, topic } = newEvent();
    const got: unknown[] = [];
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'phoenix', callback: (m: unknown) => void got.push(m) } });
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'before' } });
    await waitFor(() => got.length === 1, 'the first message');
    await withRawConnection(async (connection) => void (await (await connection.createChannel()).deleteQueue(`${topic}:phoenix`)));
    const deadline = Date.now() + 5000;
    while ((await queueDepth(`${topic}:phoenix`)) === undefined && Date.now() < deadline) await sleep(50);
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'after' } });
    await waitFor(() => got.length === 2, 'a message published after the queue came back', 5000);
    expect(got).toEqual(['before', 'after']);
  });

  it('an exchange deleted under the publisher costs only that channel: other topics lose nothing', async () => {
    const logger = new CapturingLogger();
    const broker = await start({}, logger);
    const gone = newEvent();
    const healthy = newEvent();
    const received = counter();
    await broker.subscribe({ env: 'prd', event: gone.event, product_tag: PRODUCT, input: { group: 'g', callback: () => undefined } });
    await broker.subscribe({ env: 'prd', event: healthy.event, product_tag: PRODUCT, input: { group: 'h', concurrency: 10, callback: received.handler } });
    await broker.publish({ env: 'prd', event: gone.event, product_tag: PRODUCT, input: { message: 'declared' } });
    await withRawConnection(async (connection) => void (await (await connection.createChannel()).deleteExchange(gone.topic)));
    const results = await Promise.allSettled([
      broker.publish({ env: 'prd', event: gone.event, product_tag: PRODUCT, input: { message: 'to a deleted exchange' } }),
      ...Array.from({ length: 200 }, (_, i) =>
        broker.publish({ env: 'prd', event: healthy.event, product_tag: PRODUCT, input: { message: { i }, messageId: `h-${i}` } }),
      ),
    ]);
    // The broker closed the publisher's channel (404); the exchange was declared again, without the
    // bindings its deletion took with it: that one publish finds no group. Sent again as a probe
    // (mandatory), its return says so: it resolves (whenNoGroup 'accept') with the warning.
    expect(logger.texts.some((line) => line.includes('404'))).toBe(true);
    expect(results.every((result) => result.status === 'fulfilled')).toBe(true);
    expect(logger.texts.some((line) => line.includes(`topic '${gone.topic}' [prd] has no subscription group yet`))).toBe(true);
    await waitFor(() => received.seen.size === 200, 'all 200 messages of the healthy topic', 10_000);
  });

  it('a link that drops while a declaration channel closes stalls nothing', async () => {
    const proxy = await startTcpProxy(Number(new URL(RABBITMQ_URL).port || 5672));
    try {
      const url = new URL(RABBITMQ_URL);
      url.port = String(proxy.port);
      const broker = await start({ url: url.toString(), publishTimeoutMs: 5000 });
      const { event } = newEvent();
      const got: number[] = [];
      await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'd', callback: (m: unknown) => void got.push(m as number) } });
      // A delayed publish declares its delay queue on a short-lived channel; cut the link as that channel closes.
      proxy.dropOnClientMethod(20, 40);
      const started = Date.now();
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 1, delayMs: 100 } });
      expect(proxy.drops).toBe(1);
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 2, delayMs: 150 } });
      expect(Date.now() - started).toBeLessThan(4000);
      await waitFor(() => got.length === 2, 'both delayed messages, after the consumer re-attached', 10_000);
      expect(got.sort()).toEqual([1, 2]);
    } finally {
      await Promise.all(apps.splice(0).map((app) => app.close()));
      proxy.close();
    }
  });
});
