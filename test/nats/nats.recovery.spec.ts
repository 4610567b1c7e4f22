import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import type { AdapterConsumer, AdapterTopic, InboundDelivery, OutboundMessage } from '../../lib/adapters/broker-adapter';
import { AckPolicy, DeliverPolicy } from 'nats';
import { BrokerError } from '../../lib';
import { NatsAdapter } from '../../lib/adapters/nats';
import { delayConsumer, groupConsumer } from '../../lib/adapters/nats/nats-names';
import { describeWithBroker } from '../support/broker-availability';
import { runUnique } from '../support/names';
import { deleteCreatedNatsResourcesAfterAll, itWithNatsServer, NATS_URL, startPrivateNats, withRawConnection, type PrivateNatsServer } from '../support/nats';
import { sleep, waitFor } from '../support/wait';

/**
 * The adapter on its own (no module around it), where the service layer would hide what the
 * server does: a stopped subscription's open pulls, a stream or consumer deleted under a running
 * process, the stream settings. Real servers only: the shared one, and a private one where a test
 * deletes streams.
 */
const PRODUCT = runUnique('nats-recovery');
const SUITE = 'NATS adapter: stop, lost streams and consumers, limits';
const STREAM = `ductape_${PRODUCT.replace(/\./g, '_')}_prd`;

deleteCreatedNatsResourcesAfterAll();
const itWithServer = itWithNatsServer(SUITE);

class Logs {
  readonly lines: { level: string; text: string }[] = [];
  log = (text: string): void => void this.lines.push({ level: 'log', text });
  warn = (text: string): void => void this.lines.push({ level: 'warn', text });
  error = (text: string): void => void this.lines.push({ level: 'error', text });
  debug = (text: string): void => void this.lines.push({ level: 'debug', text });
  at(level: string): string[] {
    return this.lines.filter((line) => line.level === level).map((line) => line.text);
  }
}

describeWithBroker('nats', SUITE, () => {
  jest.setTimeout(40_000);
  const adapters: NatsAdapter[] = [];
  const servers: PrivateNatsServer[] = [];

  afterEach(async () => {
    await Promise.all(adapters.splice(0).map((adapter) => adapter.close()));
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });

  async function adapter(config: Record<string, unknown> = {}, logs = new Logs()): Promise<NatsAdapter> {
    const made = new NatsAdapter({ servers: [NATS_URL], connectTimeoutMs: 5000, reconnectDelayMs: 200, ackWaitMs: 5000, publishTimeoutMs: 5000, ...config }, logs);
    await made.connect();
    adapters.push(made);
    return made;
  }

  function newTopic(): AdapterTopic {
    const tag = `t-${randomUUID().slice(0, 8)}`;
    return { name: `${PRODUCT}.prd.${tag}`, tag };
  }

  function message(body: string, extra: Partial<OutboundMessage> = {}): OutboundMessage {
    return { body, messageId: randomUUID(), publishedAt: Date.now(), type: 'nats:test', source: `/${PRODUCT}/prd/test`, attempt: 1, headers: {}, ...extra };
  }

  /** A consumer that records each delivery and leaves it to the test to settle. */
  async function collect(from: NatsAdapter, topic: AdapterTopic, group: string, concurrency: number, settle: (delivery: InboundDelivery) => Promise<void> = (d) => d.ack()) {
    const got: InboundDelivery[] = [];
    const consumer: AdapterConsumer = await from.consume(topic, { group, concurrency, source: 'messages' }, async (delivery) => {
      got.push(delivery);
      await settle(delivery);
    });
    return { got, consumer };
  }

  describe('stop()', () => {
    it('leaves a message published after stop() to the next member, as its first attempt (no pull of the stopped one hands it round)', async () => {
      const topic = newTopic();
      const first = await adapter({ ackWaitMs: 2000 });
      const stopped = await collect(first, topic, 'stop', 40);
      // Its pull requests (40 slots) are open on the server now.
      await sleep(300);
      await stopped.consumer.stop();
      await first.publish(topic, message('after stop'));
      await sleep(1000);
      expect(stopped.got).toHaveLength(0);
      const second = await adapter({ ackWaitMs: 2000 });
      const next = await collect(second, topic, 'stop', 1);
      await waitFor(() => next.got.length >= 1, 'the message at the next member', 10_000);
      await sleep(500);
      expect(next.got.map((d) => d.attempt)).toEqual([1]);
      await stopped.consumer.close();
    });
  });

  describe('a stream or consumer deleted under a running process', () => {
    itWithServer('makes the message stream again when it was deleted: the next publish succeeds (a private server)', async () => {
      const server = await startPrivateNats();
      servers.push(server);
      const topic = newTopic();
      const publisher = await adapter({ servers: [server.url] });
      await publisher.publish(topic, message('before'));
      await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        await jsm.streams.delete(STREAM);
      }, server.url);
      await publisher.publish(topic, message('after'));
      await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        expect((await jsm.streams.info(STREAM)).state.messages).toBe(1);
      }, server.url);
    });

    itWithServer('moves a delayed message of a held stream deleted and made again, though its sequence is that of one moved before (a private server)', async () => {
      const server = await startPrivateNats();
      servers.push(server);
      const topic = newTopic();
      const member = await adapter({ servers: [server.url] });
      const { got } = await collect(member, topic, 'moved', 4);
      await member.publish(topic, message('first', { delayMs: 1 }));
      await waitFor(() => got.length === 1, 'the first delayed message', 5000);
      await withRawConnection(async (nc) => void (await (await nc.jetstreamManager()).streams.delete(`${STREAM}_held`)), server.url);
      // Made again by the mover's next pull, or by this publish: the message is sequence 1 again.
      await member.publish(topic, message('second', { delayMs: 1 }));
      await waitFor(() => got.length === 2, 'the second delayed message (not taken for a duplicate of the first)', 15_000);
      expect(got.map((d) => d.body.toString())).toEqual(['first', 'second']);
    });

    it("makes a group's consumer again when it was deleted, says so at error level, and the group gets what is published after", async () => {
      const logs = new Logs();
      const topic = newTopic();
      const member = await adapter({}, logs);
      const { got } = await collect(member, topic, 'deleted', 4);
      await member.publish(topic, message('first'));
      await waitFor(() => got.length === 1, 'the first message', 5000);
      const consumerName = await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        for await (const consumer of jsm.consumers.list(STREAM)) {
          if (consumer.config.filter_subject === topic.name) {
            await jsm.consumers.delete(STREAM, consumer.name);
            return consumer.name;
          }
        }
        throw new Error('no consumer of the group');
      });
      await waitFor(() => logs.at('error').some((text) => text.includes(consumerName) && /made again.*deliver policy new/.test(text)), 'the consumer made again', 10_000);
      await member.publish(topic, message('second'));
      await waitFor(() => got.length === 2, 'the message published after the consumer was made again', 10_000);
      expect(got.map((d) => d.body.toString())).toEqual(['first', 'second']);
    });

    it('does not leave a subscription pulling when its start failed after its consumer started (the delay mover could not be made)', async () => {
      // A product of its own, whose held stream nothing made yet.
      const tag = `t-${randomUUID().slice(0, 8)}`;
      const topic = { name: `${PRODUCT}-half.prd.${tag}`, tag };
      const stream = `ductape_${PRODUCT.replace(/\./g, '_')}-half_prd`;
      // A stream by the held stream's name with other subjects: the module refuses to touch it.
      await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        await jsm.streams.add({ name: `${stream}_held`, subjects: [`${PRODUCT}-foreign.held`] });
      });
      try {
        const member = await adapter();
        const error = await member.consume(topic, { group: 'half', concurrency: 8, source: 'messages' }, () => Promise.resolve()).catch((e: unknown) => e);
        expect(String(error)).toMatch(/exists without the subjects/);
        await sleep(300);
        const waiting = await withRawConnection(async (nc) => {
          const jsm = await nc.jetstreamManager();
          const found: number[] = [];
          for await (const consumer of jsm.consumers.list(stream)) if (consumer.config.filter_subject === topic.name) found.push(consumer.num_waiting);
          return found;
        });
        // The group's consumer was made, and no pull request of the failed subscription is left open on it.
        expect(waiting).toEqual([0]);
      } finally {
        await withRawConnection(async (nc) => void (await (await nc.jetstreamManager()).streams.delete(`${stream}_held`)));
      }
    });
  });

  describe('dead letters', () => {
    it('one made from a delivery is stored once when sent again (a crash between storing it and acking the delivery); two deliveries, two dead letters', async () => {
      const nats = await adapter();
      const topic = newTopic();
      const { got, consumer } = await collect(nats, topic, 'g', 2, () => Promise.resolve());
      await nats.publish(topic, message('"first"'));
      await nats.publish(topic, message('"second"'));
      await waitFor(() => got.length === 2, 'both deliveries');
      const [first, second] = got;
      expect(first.metadata.deliveryId).toMatch(new RegExp(`^${STREAM}/\\d+$`));
      expect(second.metadata.deliveryId).not.toBe(first.metadata.deliveryId);
      // The delivery layer's dead letter of `first`, sent twice as after a crash, and that of `second` once.
      const deadLetter = (delivery: InboundDelivery) => message(String(delivery.body), { fromDelivery: delivery.metadata.deliveryId });
      await nats.sendToDeadLetters(topic, 'g', deadLetter(first));
      await nats.sendToDeadLetters(topic, 'g', deadLetter(first));
      await nats.sendToDeadLetters(topic, 'g', deadLetter(second));
      // Another group's dead letter of the same delivery is its own.
      await nats.sendToDeadLetters(topic, 'other', deadLetter(first));
      const stored: string[] = [];
      await nats.drainDeadLetters(topic, 'g', 100, (record) => (stored.push(String(record.body)), Promise.resolve()));
      expect(stored.sort()).toEqual(['"first"', '"second"']);
      expect(await nats.drainDeadLetters(topic, 'other', 100, () => Promise.resolve())).toBe(1);
      await consumer.close();
    });
  });

  describe('concurrency', () => {
    itWithServer('runs at most `concurrency` handlers when a pull request thought lost was not (a private server frozen past the silence watchdog)', async () => {
      const server = await startPrivateNats();
      servers.push(server);
      const topic = newTopic();
      const member = await adapter({ servers: [server.url] });
      const publisher = await adapter({ servers: [server.url] });
      await publisher.publish(topic, message('makes the stream'));
      let running = 0;
      let most = 0;
      let release: () => void = () => undefined;
      const released = new Promise<void>((resolve) => (release = resolve));
      const { got } = await collect(member, topic, 'bounded', 2, async (delivery) => {
        running++;
        most = Math.max(most, running);
        await released;
        running--;
        await delivery.ack();
      });
      // Its pull request (2 slots) is open. Frozen for 4.3 s: no heartbeat for more than 3 s, so the
      // member takes the request for lost and asks again; the server, back, holds both (the first
      // expires 5 s after it was asked).
      await sleep(100);
      server.pause();
      await sleep(4300);
      server.resume();
      await Promise.all([1, 2, 3, 4].map((n) => publisher.publish(topic, message(`m${n}`))));
      await waitFor(() => got.length >= 2, 'two deliveries', 5000);
      await sleep(1000);
      expect(most).toBe(2);
      release();
      await waitFor(() => got.length === 4, 'all four, two at a time', 10_000);
      expect(most).toBe(2);
    });

    it('asks again after a pause, not at once, when the consumer refuses a pull for a limit (409 Exceeded MaxWaiting)', async () => {
      const topic = newTopic();
      const publisher = await adapter();
      await publisher.publish(topic, message('makes the stream'));
      // The group's consumer made beforehand with max_waiting 1 (an existing durable is kept as it is).
      await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        await jsm.consumers.add(STREAM, {
          durable_name: groupConsumer(topic.name, 'limited'),
          filter_subject: topic.name,
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.New,
          max_deliver: -1,
          max_waiting: 1,
        });
      });
      const logs = new Logs();
      const member = await adapter({}, logs);
      // Two slots in hand then freed while the first request (8) is still open: the next pull is one too many.
      const { got } = await collect(member, topic, 'limited', 8);
      await publisher.publish(topic, message('one'));
      await publisher.publish(topic, message('two'));
      await waitFor(() => got.length === 2, 'two deliveries', 5000);
      const pulls = await withRawConnection(async (nc) => {
        let count = 0;
        nc.subscribe(`$JS.API.CONSUMER.MSG.NEXT.${STREAM}.${groupConsumer(topic.name, 'limited')}`, { callback: () => void count++ });
        await nc.flush();
        await sleep(1000);
        return count;
      });
      // Paused 100 ms, doubling up to 2 s: a handful in a second (a loop sent them by the thousand).
      expect(pulls).toBeLessThan(10);
      expect(logs.at('warn').some((text) => /409 Exceeded MaxWaiting/i.test(text))).toBe(true);
    });
  });

  describe('a delay mover that cannot move', () => {
    it('gives a delayed message it cannot publish back after a growing pause, logging once (no loop of redeliveries and error lines)', async () => {
      // A product of its own, whose message stream's name a foreign stream holds: every move fails, and not for a while only.
      const tag = `t-${randomUUID().slice(0, 8)}`;
      const topic = { name: `${PRODUCT}-stuck.prd.${tag}`, tag };
      const stream = `ductape_${PRODUCT.replace(/\./g, '_')}-stuck_prd`;
      await withRawConnection(async (nc) => void (await (await nc.jetstreamManager()).streams.add({ name: stream, subjects: [`${PRODUCT}-foreign.stuck`] })));
      try {
        const logs = new Logs();
        const publisher = await adapter({}, logs);
        await publisher.publish(topic, message('never moved', { delayMs: 1 }));
        await sleep(2500);
        const delivered = await withRawConnection(async (nc) => (await (await nc.jetstreamManager()).consumers.info(`${stream}_held`, delayConsumer(topic.name))).delivered.consumer_seq);
        // Delivered at once, then after 1 s, then 2 s: at most three in 2.5 s (a loop delivered it hundreds of times).
        expect(delivered).toBeLessThanOrEqual(3);
        const failures = logs.at('error').filter((text) => text.includes('exists without the subjects'));
        expect(failures).toHaveLength(1);
      } finally {
        await withRawConnection(async (nc) => void (await (await nc.jetstreamManager()).streams.delete(stream)));
      }
    });
  });

  describe("the server's max_payload", () => {
    it('refuses a message larger than the max_payload the server announced with INVALID_MESSAGE, before sending it (the adapter itself, no service layer in front)', async () => {
      const topic = newTopic();
      const publisher = await adapter();
      const error = await publisher.publish(topic, message('x'.repeat(1024 * 1024 + 1))).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BrokerError);
      expect((error as BrokerError).code).toBe('INVALID_MESSAGE');
      expect((error as BrokerError).message).toBe('the message is 1048577 bytes, more than this NATS server takes (max_payload 1048576)');
      // One under it (with its headers) goes through.
      await publisher.publish(topic, message('x'.repeat(1024 * 1024 - 2048)));
    });
  });

  describe('stream and consumer settings', () => {
    it('takes a retentionMs under the 2-minute duplicate window: the window is cut to it and publishes succeed', async () => {
      const topic = newTopic();
      // A product of its own: the stream is made with this retention.
      const short = { ...topic, name: `${PRODUCT}-short.prd.${topic.tag}` };
      const publisher = await adapter({ retentionMs: 60_000 });
      await publisher.publish(short, message('kept a minute'));
      await withRawConnection(async (nc) => {
        const info = await (await nc.jetstreamManager()).streams.info(`ductape_${PRODUCT.replace(/\./g, '_')}-short_prd`);
        expect(info.config.max_age).toBe(60_000 * 1_000_000);
        expect(info.config.duplicate_window).toBe(60_000 * 1_000_000);
        expect(info.state.messages).toBe(1);
      });
    });

    it("runs the delay mover without a max_ack_pending (the delays it gave back count as pending), lifting an earlier version's limit", async () => {
      const topic = newTopic();
      const publisher = await adapter();
      await publisher.publish(topic, message('made'));
      const mover = delayConsumer(topic.name);
      // The mover as an earlier version made it: max_ack_pending 10,000.
      await publisher.publish(newTopic(), message('the held stream', { delayMs: 1 }));
      await withRawConnection(async (nc) => {
        const jsm = await nc.jetstreamManager();
        await jsm.consumers.add(`${STREAM}_held`, {
          durable_name: mover,
          filter_subject: `_ductape.delay.${topic.name}`,
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.All,
          max_deliver: -1,
          max_ack_pending: 10_000,
        });
      });
      const got: string[] = [];
      await publisher.consume(topic, { group: 'later', concurrency: 1, source: 'messages' }, async (delivery) => {
        got.push(delivery.body.toString());
        await delivery.ack();
      });
      await publisher.publish(topic, message('due', { delayMs: 200 }));
      await waitFor(() => got.includes('due'), 'the delayed message', 5000);
      await withRawConnection(async (nc) => {
        const info = await (await nc.jetstreamManager()).consumers.info(`${STREAM}_held`, mover);
        expect(info.config.max_ack_pending).toBe(-1);
      });
    });
  });
});
