import 'reflect-metadata';
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import type { INestApplication } from '@nestjs/common';
import { BrokerError, type BrokerContext, type BrokerModuleOptions, type NatsEnvConfig } from '../../lib';
import { createBrokerApp, type CapturingLogger } from '../support/app';
import { describeWithBroker } from '../support/broker-availability';
import { startGroupMemberProcess } from '../support/group-member';
import { runUnique } from '../support/names';
import { deleteCreatedNatsResourcesAfterAll, itWithNatsServer, NATS_URL, natsEnv, startPrivateNats, withRawConnection, type PrivateNatsServer } from '../support/nats';
import { gate, sleep, waitFor } from '../support/wait';

// A product of this run's own: every stream and consumer the file makes is named after it.
const PRODUCT = runUnique('nats-resilience');
const MESSAGES = 5000;
const SUITE = 'NATS: server restart, a killed consumer process and shutdown';

const created = deleteCreatedNatsResourcesAfterAll();
const itWithServer = itWithNatsServer(SUITE);

describeWithBroker('nats', SUITE, () => {
  jest.setTimeout(60_000);
  const apps: INestApplication[] = [];
  const servers: PrivateNatsServer[] = [];
  const children: ChildProcess[] = [];

  async function start(config: Partial<NatsEnvConfig['config']> = {}, logger?: CapturingLogger, shutdownTimeoutMs = 5000) {
    const options: BrokerModuleOptions = {
      env: 'prd',
      product: PRODUCT,
      brokers: [{ tag: 'nats', envs: [natsEnv('prd', { publishTimeoutMs: 30_000, ...config })] }],
      shutdownTimeoutMs,
    };
    const started = await createBrokerApp(options, {}, logger);
    apps.push(started.app);
    return started;
  }

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
    for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
    // A private server's streams go with its store directory.
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });

  function newEvent() {
    const tag = `t-${randomUUID().slice(0, 8)}`;
    return { tag, event: `nats:${tag}`, topic: `${PRODUCT}.prd.${tag}` };
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

  itWithServer(`loses none of ${MESSAGES} messages published while its server restarts (same store directory); publishers and consumers recover by themselves`, async () => {
    const server = await startPrivateNats();
    servers.push(server);
    const { broker } = await start({ servers: [server.url] });
    // A second application with a short publish timeout: its publish fails, bounded, while the server is down.
    const { broker: impatient } = await start({ servers: [server.url], publishTimeoutMs: 500 });
    const { event } = newEvent();
    const received = counter();
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'restart', concurrency: 20, callback: received.handler } });
    await impatient.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'impatient', callback: () => undefined } });
    let outageError: unknown;
    let outageMs = 0;
    const restart = async () => {
      await server.stop();
      const before = Date.now();
      outageError = await impatient.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'during the outage' } }).catch((e: unknown) => e);
      outageMs = Date.now() - before;
      await sleep(500);
      await server.start();
    };
    let disruption = Promise.resolve();
    for (let sent = 0; sent < MESSAGES; sent += 50) {
      if (sent === 1500) disruption = restart();
      await Promise.all(
        Array.from({ length: 50 }, (_, i) => broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n: sent + i }, messageId: `m-${sent + i}` } })),
      );
    }
    await disruption;
    // On a timeout the counts are still reported, and the loss assertion below fails.
    await waitFor(() => received.seen.size === MESSAGES, `all ${MESSAGES} messages at the handler`, 30_000).catch(() => undefined);
    const lost = MESSAGES - received.seen.size;
    const duplicates = received.deliveries() - received.seen.size;
    // eslint-disable-next-line no-console
    console.log(`NATS server restart: ${MESSAGES} published, ${received.seen.size} received, ${lost} lost, ${duplicates} duplicate deliveries`);
    // eslint-disable-next-line no-console
    if (lost > 0) console.log(`lost: ${Array.from({ length: MESSAGES }, (_, n) => `m-${n}`).filter((id) => !received.seen.has(id)).join(' ')}`);
    if (lost > 0) {
      await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        const stream = await jsm.streams.info(`ductape_${PRODUCT}_prd`);
        // eslint-disable-next-line no-console
        console.log(JSON.stringify(stream.state));
        // eslint-disable-next-line no-console
        for await (const c of jsm.consumers.list(`ductape_${PRODUCT}_prd`)) console.log(c.name, c.num_pending, c.num_ack_pending, c.num_redelivered, JSON.stringify(c.delivered), JSON.stringify(c.ack_floor));
      }, server.url);
    }
    expect(lost).toBe(0);
    expect(outageError).toBeInstanceOf(BrokerError);
    expect((outageError as BrokerError).code).toBe('PUBLISH_FAILED');
    expect((outageError as BrokerError).message).toMatch(/within publishTimeoutMs \(500 ms\)/);
    expect(outageMs).toBeLessThan(3000);
    // The consumer came back without a restart of the app: a message published now still arrives.
    await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: 'after', messageId: 'after-restart' } });
    await waitFor(() => received.seen.has('after-restart'), 'a message published after the restart', 10_000);
  });

  it('gives the message of a consumer process killed (SIGKILL) mid-handler to another member of the group, as attempt 2', async () => {
    const { event } = newEvent();
    const group = 'killed';
    const got: { id: string; attempt: number }[] = [];
    // The other member: in this process, with the same short ack wait.
    const { broker } = await start({ ackWaitMs: 2000 });
    await broker.subscribe({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: { group, concurrency: 1, callback: (_m: unknown, ctx: BrokerContext) => void got.push({ id: ctx.messageId, attempt: ctx.attempt }) },
    });
    const member = await startGroupMemberProcess({ product: PRODUCT, event, group, concurrency: 1, env: natsEnv('prd', { servers: [NATS_URL], ackWaitMs: 2000 }) });
    const child = member.child;
    children.push(child);
    // Publish until one message lands in the child's handler (the two members share the group's messages).
    for (let i = 0; i < 20 && !member.started(); i++) {
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { i }, messageId: `kill-${i}` } });
      await sleep(100);
    }
    const { messageId: inChild, attempt } = member.started() ?? { messageId: 'none', attempt: 0 };
    expect(attempt).toBe(1);
    expect(got.some((entry) => entry.id === inChild)).toBe(false);
    child.kill('SIGKILL');
    // After the ack wait (2 s) the server gives it to the member that is left.
    await waitFor(() => got.some((entry) => entry.id === inChild), 'the killed process\'s message at the other member', 15_000);
    expect(got.find((entry) => entry.id === inChild)?.attempt).toBe(2);
  });

  it('on app.close(), finishes and acks the handlers in flight and gives back the unfinished one: only that one reaches the next instance', async () => {
    const { event } = newEvent();
    const { app, broker } = await start({ ackWaitMs: 2000 }, undefined, 1500);
    const quick = gate();
    const handled: string[] = [];
    await broker.subscribe({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: {
        group: 'drain',
        concurrency: 10,
        callback: async (message: { n: number }, ctx: BrokerContext) => {
          // Nine finish once shutdown began; one never finishes within shutdownTimeoutMs.
          if (message.n === 0) return new Promise<never>(() => undefined);
          await quick.promise;
          handled.push(ctx.messageId);
        },
      },
    });
    for (let n = 0; n < 10; n++) await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n }, messageId: `drain-${n}` } });
    await sleep(500);
    const closing = app.close();
    apps.splice(apps.indexOf(app), 1);
    await sleep(100);
    quick.open();
    await closing;
    expect(handled.sort()).toEqual(Array.from({ length: 9 }, (_, i) => `drain-${i + 1}`).sort());
    const next: { id: string; attempt: number }[] = [];
    const { broker: second } = await start({ ackWaitMs: 2000 });
    await second.subscribe({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: { group: 'drain', callback: (_m: unknown, ctx: BrokerContext) => void next.push({ id: ctx.messageId, attempt: ctx.attempt }) },
    });
    await waitFor(() => next.length >= 1, 'the unfinished message at the next instance', 10_000);
    await sleep(2500);
    expect(next).toEqual([{ id: 'drain-0', attempt: 2 }]);
  });

  it('deletes only what it made: every consumer this file made is recorded', async () => {
    const { event, topic } = newEvent();
    const { broker } = await start();
    await broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group: 'recorded', callback: () => undefined } });
    expect([...created.streams]).toEqual(expect.arrayContaining([`ductape_${PRODUCT}_prd`]));
    await withRawConnection(async (nc) => {
      const jsm = await nc.jetstreamManager();
      const names: string[] = [];
      for await (const consumer of jsm.consumers.list(`ductape_${PRODUCT}_prd`)) if (consumer.config.filter_subject === topic) names.push(consumer.name);
      expect(names).toHaveLength(1);
      expect(created.consumers.has(`ductape_${PRODUCT}_prd/${names[0]}`)).toBe(true);
    });
  });
});
