import type { BrokerContext, MessageBrokerService, Subscription } from '../../lib';
import { BrokerError } from '../../lib';
import { itNeeding } from '../support/broker-availability';
import { sleep, waitFor } from '../support/wait';
import type { Harness, TestBody } from './harness';

const VOLUME = 2000;

/** Counts each message id a group's handler sees: every message accounted for, duplicates counted. */
export class Tally {
  readonly seen = new Map<string, number>();
  readonly handler = (_message: unknown, ctx: BrokerContext): void => void this.seen.set(ctx.messageId, (this.seen.get(ctx.messageId) ?? 0) + 1);
  missing(ids: readonly string[]): string[] {
    return ids.filter((id) => !this.seen.has(id));
  }
  duplicates(): number {
    let extra = 0;
    for (const count of this.seen.values()) extra += count - 1;
    return extra;
  }
  /** Ids it saw that nobody published (none, unless messages cross topics). */
  strangers(ids: readonly string[]): string[] {
    const known = new Set(ids);
    return [...this.seen.keys()].filter((id) => !known.has(id));
  }
}

/** Publishes ids[] 100 at a time; `during(sent)` runs (without waiting) once `sent` are out. */
async function publishAll(
  broker: MessageBrokerService,
  event: string,
  ids: readonly string[],
  options: { during?: Record<number, () => Promise<void>>; retryRejected?: boolean } = {},
): Promise<{ rejected: number; disruptions: Promise<void> }> {
  let rejected = 0;
  let disruptions = Promise.resolve();
  const send = async (messageId: string, n: number): Promise<void> => {
    for (;;) {
      try {
        await broker.publish({ env: 'prd', event, product_tag: 'conformance', input: { message: { n }, messageId } });
        return;
      } catch (error) {
        // A publish that rejects was not published: an application sends it again, as here.
        if (!options.retryRejected || !(error instanceof BrokerError) || error.code !== 'PUBLISH_FAILED') throw error;
        rejected++;
        await sleep(100);
      }
    }
  };
  for (let sent = 0; sent < ids.length; sent += 100) {
    const disruption = options.during?.[sent];
    if (disruption) disruptions = disruptions.then(disruption);
    await Promise.all(ids.slice(sent, sent + 100).map((id, i) => send(id, sent + i)));
  }
  return { rejected, disruptions };
}

function report(h: Harness, what: string, ids: readonly string[], tallies: Tally[], extra = ''): void {
  const parts = tallies.map((t, i) => `${tallies.length > 1 ? `group ${i}: ` : ''}${t.seen.size} received, ${t.missing(ids).length} lost, ${t.duplicates()} duplicates`);
  // eslint-disable-next-line no-console
  console.log(`conformance: ${h.target.broker} > ${what}: ${ids.length} published; ${parts.join('; ')}${extra}`);
}

/**
 * Volume and reconnects, per target: every message of 2,000 accounted for through one group and
 * through three; several subscriptions closed at once; 2,000 messages published across a restart
 * of the target's server (or what of it a test can restart); a failed batch of a batching producer.
 */
export function defineVolumeTests(h: Harness): void {
  const { target, it, startApp, newEvent, skip } = h;
  const ids = (prefix: string, count = VOLUME) => Array.from({ length: count }, (_, i) => `${prefix}-${i}`);
  const deliveryBound = 30_000;

  it(
    `accounts for every one of ${VOLUME} messages through one group: none lost, none duplicated`,
    async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const tally = new Tally();
      await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'one', concurrency: 20, callback: tally.handler } });
      const published = ids('one');
      await publishAll(broker, event, published);
      await waitFor(() => tally.missing(published).length === 0, `all ${VOLUME} messages`, deliveryBound).catch(() => undefined);
      await sleep(200);
      report(h, 'one group', published, [tally]);
      expect(tally.missing(published)).toEqual([]);
      expect(tally.duplicates()).toBe(0);
      expect(tally.strangers(published)).toEqual([]);
    },
    60_000,
  );

  it(
    target.features.fanOut
      ? `accounts for every one of ${VOLUME} messages in each of three groups: none lost, none duplicated`
      : `accounts for every one of ${VOLUME} messages shared by three instances of the one group (no fan-out): each handled once`,
    async () => {
      const tallies = [new Tally(), new Tally(), new Tally()];
      const { event } = newEvent();
      const brokers: MessageBrokerService[] = [];
      for (let i = 0; i < 3; i++) brokers.push(await startApp());
      await Promise.all(
        brokers.map((broker, i) =>
          broker.subscribe({
            env: 'prd',
            event,
            product_tag: 'conformance',
            input: { group: target.features.fanOut ? `group-${i}` : 'shared', concurrency: 10, callback: tallies[i].handler },
          }),
        ),
      );
      const published = ids('three');
      await publishAll(brokers[0], event, published);
      if (target.features.fanOut) {
        await waitFor(() => tallies.every((t) => t.missing(published).length === 0), `all ${VOLUME} messages in each group`, deliveryBound).catch(() => undefined);
        await sleep(200);
        report(h, 'three groups', published, tallies);
        for (const tally of tallies) {
          expect(tally.missing(published)).toEqual([]);
          expect(tally.duplicates()).toBe(0);
          expect(tally.strangers(published)).toEqual([]);
        }
      } else {
        const all = new Tally();
        const union = () => {
          all.seen.clear();
          for (const t of tallies) for (const [id, n] of t.seen) all.seen.set(id, (all.seen.get(id) ?? 0) + n);
          return all;
        };
        await waitFor(() => union().missing(published).length === 0, `all ${VOLUME} messages across the instances`, deliveryBound).catch(() => undefined);
        await sleep(200);
        union();
        report(h, 'three instances of one group', published, [all], ` (per instance: ${tallies.map((t) => t.seen.size).join(', ')})`);
        expect(all.missing(published)).toEqual([]);
        expect(all.duplicates()).toBe(0);
        expect(tallies.filter((t) => t.seen.size > 0).length).toBeGreaterThan(1);
      }
    },
    60_000,
  );

  it(
    'closes several subscriptions at once with messages in flight: each close resolves, nothing is handled after, nothing is lost',
    async () => {
      const broker = await startApp();
      const { event } = newEvent();
      const groups = target.features.fanOut ? ['c0', 'c1', 'c2', 'c3'] : ['c', 'c', 'c', 'c'];
      const tallies = new Map<string, Tally>(groups.map((g) => [g, new Tally()]));
      let closed = false;
      let handledAfterClose = 0;
      const subscribe = (group: string) =>
        broker.subscribe({
          env: 'prd',
          event,
          product_tag: 'conformance',
          input: {
            group,
            concurrency: 5,
            callback: async (message: unknown, ctx: BrokerContext) => {
              if (closed) handledAfterClose++;
              await sleep(5);
              tallies.get(group)!.handler(message, ctx);
            },
          },
        });
      const subs: Subscription[] = await Promise.all(groups.map(subscribe));
      const published = Array.from({ length: 300 }, (_, i) => `close-${i}`);
      await publishAll(broker, event, published);
      await waitFor(() => [...tallies.values()].some((t) => t.seen.size > 0), 'deliveries under way', h.timeout);
      const closing = Date.now();
      await Promise.all(subs.map((sub) => sub.unsubscribe()));
      const closeMs = Date.now() - closing;
      closed = true;
      await sleep(500);
      expect(handledAfterClose).toBe(0);
      // Each group, subscribed again, gets the rest: nothing of any group is lost.
      const resumed = await Promise.all([...new Set(groups)].map(subscribe));
      closed = false;
      for (const [group, tally] of tallies) {
        await waitFor(() => tally.missing(published).length === 0, `every message in group ${group}`, deliveryBound).catch(() => undefined);
      }
      report(h, `${subs.length} subscriptions closed at once (in ${closeMs} ms)`, published, [...new Set(tallies.values())]);
      for (const tally of new Set(tallies.values())) expect(tally.missing(published)).toEqual([]);
      await Promise.all(resumed.map((sub) => sub.unsubscribe()));
    },
    60_000,
  );

  const restart = target.restart;
  const restartVolume = ('volume' in restart && restart.volume) || VOLUME;
  const restartTitle = `loses none of ${restartVolume} messages published across a restart`;
  if ('notApplicable' in restart) {
    skip(restartTitle, restart.notApplicable, () => Promise.resolve());
  } else {
    const title = `${restartTitle} (${restart.what})`;
    const body: TestBody = async () => {
      const server = await restart.open();
      try {
        const broker = await startApp({ brokers: [{ tag: 'bk', envs: [server.envConfig('prd')] }] });
        const { event } = newEvent();
        const tally = new Tally();
        await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'restart', concurrency: 20, callback: tally.handler } });
        const published = ids('restart', restartVolume);
        let restarted = false;
        const { rejected, disruptions } = await publishAll(broker, event, published, {
          retryRejected: true,
          during: {
            600: async () => {
              await server.restart();
              restarted = true;
            },
          },
        });
        await disruptions;
        await waitFor(() => tally.missing(published).length === 0, `all ${restartVolume} messages`, 40_000).catch(() => undefined);
        report(h, title, published, [tally], `; ${rejected} publishes rejected during the outage and sent again`);
        expect(restarted).toBe(true);
        expect(tally.missing(published)).toEqual([]);
        expect(tally.strangers(published)).toEqual([]);
        // features.publishDuringOutage: publishes wait for the reconnect, or fail and are sent again.
        if (target.features.publishDuringOutage === 'waits') expect(rejected).toBe(0);
        if (target.features.publishDuringOutage === 'rejects') expect(rejected).toBeGreaterThan(0);
      } finally {
        await Promise.all(h.apps().splice(0).map((app) => app.close()));
        await server.close();
      }
    };
    if (restart.controlsServer || restart.tool) {
      // Only when asked (REQUIRE_BROKERS=1 or DUCTAPE_TEST_RESTART_BROKERS=1): a skip prints why.
      itNeeding(target.broker, `conformance: ${target.broker}`, { controlsServer: restart.controlsServer, tool: restart.tool })(title, h.inContext(body), 90_000);
    } else {
      it(title, body, 90_000);
    }
  }

  const batch = target.batchFailure;
  const batchTitle = 'fails or retries every publish of a failed batch: none left pending, none resolved and lost';
  if ('notApplicable' in batch) {
    skip(batchTitle, batch.notApplicable, () => Promise.resolve());
  } else {
    it(
      `${batchTitle} (${batch.what})`,
      async () => {
        const server = await batch.open();
        try {
          const broker = await startApp({ brokers: [{ tag: 'bk', envs: [server.envConfig('prd')] }] });
          const { event } = newEvent();
          const tally = new Tally();
          await broker.subscribe({ env: 'prd', event, product_tag: 'conformance', input: { group: 'batch', concurrency: 10, callback: tally.handler } });
          // Round 1: the batch's request fails once; its messages are sent again, one by one.
          // Round 2: the batch and the first resends fail; those publishes reject.
          const outcomes: { round: number; resolved: string[]; rejected: { id: string; error: unknown }[] }[] = [];
          for (const [round, failures] of [
            [1, 1],
            [2, 6],
          ] as const) {
            const published = Array.from({ length: 100 }, (_, i) => `batch${round}-${i}`);
            server.failNextRequests(failures);
            let timer: NodeJS.Timeout | undefined;
            const settled = await Promise.race([
              Promise.allSettled(
                published.map((messageId, n) => broker.publish({ env: 'prd', event, product_tag: 'conformance', input: { message: { n }, messageId } })),
              ),
              new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), 30_000))),
            ]);
            clearTimeout(timer);
            expect(settled).toBeDefined(); // every publish settled: none left pending
            const outcome = { round, resolved: [] as string[], rejected: [] as { id: string; error: unknown }[] };
            settled!.forEach((result, i) => (result.status === 'fulfilled' ? outcome.resolved.push(published[i]) : outcome.rejected.push({ id: published[i], error: result.reason })));
            outcomes.push(outcome);
          }
          const resolved = outcomes.flatMap((o) => o.resolved);
          await waitFor(() => tally.missing(resolved).length === 0, 'every resolved publish at the handler', deliveryBound).catch(() => undefined);
          await sleep(300);
          report(
            h,
            'failed batches (resolved publishes)',
            resolved,
            [tally],
            `; ${outcomes.map((o) => `round ${o.round}: ${o.resolved.length} resolved, ${o.rejected.length} rejected`).join('; ')}`,
          );
          // Nothing silently dropped: every publish that resolved reached the group.
          expect(tally.missing(resolved)).toEqual([]);
          // Round 1's one failure is absorbed by the resends: every publish resolves.
          expect(outcomes[0].rejected).toEqual([]);
          // Round 2 fails some publishes, each with PUBLISH_FAILED, never silently.
          expect(outcomes[1].rejected.length).toBeGreaterThan(0);
          for (const { error } of outcomes[1].rejected) expect(error).toMatchObject({ code: 'PUBLISH_FAILED' });
        } finally {
          await Promise.all(h.apps().splice(0).map((app) => app.close()));
          await server.close();
        }
      },
      90_000,
    );
  }
}
