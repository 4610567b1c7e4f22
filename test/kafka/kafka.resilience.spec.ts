import 'reflect-metadata';
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import type { INestApplication } from '@nestjs/common';
import type { BrokerContext, BrokerModuleOptions, KafkaEnvConfig } from '../../lib';
import { createBrokerApp } from '../support/app';
import { describeWithBroker } from '../support/broker-availability';
import { startGroupMemberProcess } from '../support/group-member';
import { runUnique } from '../support/names';
import { deleteCreatedKafkaResourcesAfterAll, kafkaEnv } from '../support/kafka';
import { gate, sleep, waitFor } from '../support/wait';

// A product of this run's own; the file deletes exactly the topics and groups it created.
const PRODUCT = runUnique('kafka-resilience');

deleteCreatedKafkaResourcesAfterAll();

describeWithBroker('kafka', 'Kafka: a killed consumer process and shutdown', () => {
  jest.setTimeout(60_000);
  const apps: INestApplication[] = [];
  const children: ChildProcess[] = [];

  async function start(config: Partial<KafkaEnvConfig['config']> = {}, shutdownTimeoutMs = 5000) {
    const options: BrokerModuleOptions = { env: 'prd', product: PRODUCT, brokers: [{ tag: 'kf', envs: [kafkaEnv('prd', config)] }], shutdownTimeoutMs };
    const started = await createBrokerApp(options);
    apps.push(started.app);
    return started;
  }

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
    for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
  });

  function newEvent() {
    const tag = `t-${randomUUID().slice(0, 8)}`;
    return { tag, event: `kf:${tag}` };
  }

  it('gives the message of a consumer process killed (SIGKILL) mid-handler to the other member of the group, as a first attempt', async () => {
    const { event } = newEvent();
    const group = 'killed';
    const got: { id: string; attempt: number; at: number }[] = [];
    // The other member: in this process.
    const { broker } = await start();
    await broker.subscribe({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: { group, concurrency: 6, callback: (_m: unknown, ctx: BrokerContext) => void got.push({ id: ctx.messageId, attempt: ctx.attempt, at: Date.now() }) },
    });
    const member = await startGroupMemberProcess({ product: PRODUCT, event, group, concurrency: 6, env: kafkaEnv('prd') });
    const child = member.child;
    children.push(child);
    // The rebalance that gives the child its share of the partitions ends a moment after it joined.
    for (let i = 0; i < 60 && !member.started(); i++) {
      await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { i }, messageId: `kill-${i}`, key: `key-${i}` } });
      await sleep(150);
    }
    const { messageId: inChild, attempt } = member.started() ?? { messageId: 'none', attempt: 0 };
    expect(attempt).toBe(1);
    await sleep(500);
    expect(got.some((entry) => entry.id === inChild)).toBe(false);
    child.kill('SIGKILL');
    const killedAt = Date.now();
    // The group drops the dead member after its session timeout (6 s in the tests' config) and
    // gives its partitions to this one, from the last offset committed: the unfinished message.
    await waitFor(() => got.some((entry) => entry.id === inChild), "the killed process's message at the other member", 30_000);
    const taken = got.find((entry) => entry.id === inChild)!;
    // eslint-disable-next-line no-console
    console.log(`kafka: the killed consumer's message reached the other member ${taken.at - killedAt} ms after SIGKILL`);
    // The attempt travels in the record: a delivery that never finished does not count.
    expect(taken.attempt).toBe(1);
    expect(got.filter((entry) => entry.id === inChild)).toHaveLength(1);
  });

  it('on app.close() with a message in flight, finishes it and commits it, reads no further: the next instance starts right after it', async () => {
    const { event } = newEvent();
    const group = 'drain';
    const { app, broker } = await start({}, 5000);
    const finish = gate();
    const handled: number[] = [];
    await broker.subscribe({
      env: 'prd',
      event,
      product_tag: PRODUCT,
      input: {
        group,
        concurrency: 6,
        callback: async (message: { n: number }) => {
          // The first is still running when shutdown begins; it finishes during the drain.
          if (message.n === 0) await finish.promise;
          handled.push(message.n);
        },
      },
    });
    // One key: one partition, read in order.
    for (let n = 0; n < 12; n++) await broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message: { n }, key: 'one-key' } });
    await sleep(1000);
    expect(handled).toEqual([]);
    const closing = app.close();
    apps.splice(apps.indexOf(app), 1);
    await sleep(200);
    finish.open();
    await closing;
    expect(handled).toEqual([0]);

    const again: number[] = [];
    const { broker: next } = await start();
    await next.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { group, concurrency: 6, callback: (message: { n: number }) => void again.push(message.n) } });
    await waitFor(() => again.length >= 11, 'the unread messages at the next instance', 20_000);
    await sleep(1000);
    // eslint-disable-next-line no-console
    console.log(`kafka close: handled during shutdown ${handled.join(',')}; the next instance read ${again.join(',')}`);
    expect(again).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  });
});
