import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { INestApplication } from '@nestjs/common';
import {
  SetQueueAttributesCommand,
  ChangeMessageVisibilityCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSClient,
  type Message,
} from '@aws-sdk/client-sqs';
import { GetSubscriptionAttributesCommand, ListSubscriptionsByTopicCommand, ListTopicsCommand } from '@aws-sdk/client-sns';
import { BrokerError, DEAD_LETTER_HEADERS, type BrokerContext, type BrokerModuleOptions, type MessageBrokerService, type SqsEnvConfig, type TopicConfig } from '../../lib';
import { OVERFLOW_ATTRIBUTE } from '../../lib/adapters/sqs';
import { CapturingLogger, createBrokerApp, startupError } from '../support/app';
import { describeWithBroker } from '../support/broker-availability';
import { runUnique } from '../support/names';
import { deleteCreatedSqsResourcesAfterAll, queueUrl, rawSendToTopicQueue, snsClient, sqsClient, sqsEnv } from '../support/sqs';
import { gate, sleep, waitFor } from '../support/wait';

// A product of this run's own; the file deletes exactly the queues and topics it created.
const PRODUCT = runUnique('sqs-adapter');
deleteCreatedSqsResourcesAfterAll();

interface Received {
  message: unknown;
  ctx: BrokerContext;
}

/** One SDK call the adapter made: the command's name and input, and its output once it resolved. */
interface Call {
  command: string;
  input: Record<string, unknown>;
  output?: Record<string, unknown>;
}

describeWithBroker('sqs', 'SQS adapter', () => {
  const apps: INestApplication[] = [];
  let calls: Call[] = [];
  /** While set, delete requests wait for it before they go to the server. */
  let deletesHeld: Promise<void> | undefined;
  /** While set, a SendMessage whose body has a character beyond the BMP is refused, as fauxqs 1.9.2 and other emulators do. */
  let refuseAstral = false;

  beforeEach(() => {
    calls = [];
    deletesHeld = undefined;
    refuseAstral = false;
    // A spy, not a mock: every request still goes to the SQS server; this only records them.
    const send = SQSClient.prototype.send;
    // eslint-disable-next-line @typescript-eslint/no-misused-promises -- send has overloads; this is the promise one
    jest.spyOn(SQSClient.prototype, 'send').mockImplementation(function (this: SQSClient, ...args: Parameters<SQSClient['send']>) {
      const [command] = args as unknown as [{ constructor: { name: string }; input: Record<string, unknown> }];
      const call: Call = { command: command.constructor.name.replace(/Command$/, ''), input: command.input };
      calls.push(call);
      const sendNow = () => (send as (...a: unknown[]) => Promise<Record<string, unknown>>).apply(this, args);
      // The stand-in for an emulator's refusal (fauxqs here takes them, as SQS does): the one error the server cannot produce.
      const refused = refuseAstral && call.command === 'SendMessage' && /[\u{10000}-\u{10FFFF}]/u.test(String(call.input.MessageBody));
      const result = refused
        ? Promise.reject(Object.assign(new Error('Invalid characters found.'), { name: 'AWS.SimpleQueueService.InvalidMessageContents' }))
        : deletesHeld && call.command.startsWith('DeleteMessage')
          ? deletesHeld.then(sendNow)
          : sendNow();
      result.then(
        (output) => void (call.output = output),
        () => undefined,
      );
      return result as unknown as ReturnType<SQSClient['send']>;
    } as SQSClient['send']);
  });

  afterEach(async () => {
    await Promise.all(apps.splice(0).map((app) => app.close()));
    jest.restoreAllMocks();
  });

  function options(env: SqsEnvConfig, overrides: Partial<BrokerModuleOptions> = {}, topics?: TopicConfig[]): BrokerModuleOptions {
    return {
      env: 'prd',
      product: PRODUCT,
      brokers: [{ tag: 'sq', envs: [env], topics }],
      retry: { maxAttempts: 3, initialDelayMs: 50 },
      shutdownTimeoutMs: 5000,
      ...overrides,
    };
  }

  async function start(config: Partial<SqsEnvConfig['config']> = {}, overrides: Partial<BrokerModuleOptions> = {}, topics?: TopicConfig[]) {
    const started = await createBrokerApp(options(sqsEnv('prd', config), overrides, topics));
    apps.push(started.app);
    return started;
  }

  function newTopic() {
    const tag = `t-${randomUUID().slice(0, 8)}`;
    return { tag, event: `sq:${tag}`, queue: `${PRODUCT}_prd_${tag}` };
  }

  function publish(broker: MessageBrokerService, event: string, message: unknown, input: Record<string, unknown> = {}) {
    return broker.publish({ env: 'prd', event, product_tag: PRODUCT, input: { message, ...input } });
  }

  function subscribe(broker: MessageBrokerService, event: string, callback: (message: unknown, ctx: BrokerContext) => unknown, input: Record<string, unknown> = {}) {
    return broker.subscribe({ env: 'prd', event, product_tag: PRODUCT, input: { callback, ...input } });
  }

  /** Notes, per key, the order `seq` arrived in, after a jitter that would reorder an unordered queue. */
  function orderRecorder(seen: Map<string, number[]>, onDone: () => void) {
    return async (message: unknown, ctx: BrokerContext) => {
      const { seq } = message as { seq: number };
      await sleep((seq * 7) % 5);
      seen.set(ctx.key!, [...(seen.get(ctx.key!) ?? []), seq]);
      onDone();
    };
  }

  function collector(into: Received[], behaviour?: (ctx: BrokerContext) => Promise<void> | void) {
    return async (message: unknown, ctx: BrokerContext) => {
      into.push({ message, ctx });
      await behaviour?.(ctx);
    };
  }

  /** Visible and in-flight message counts of a queue, as SQS reports them. */
  async function counts(name: string): Promise<{ visible: number; inFlight: number; delayed: number }> {
    const { QueueUrl } = await sqsClient().send(new GetQueueUrlCommand({ QueueName: name }));
    const { Attributes = {} } = await sqsClient().send(
      new GetQueueAttributesCommand({
        QueueUrl,
        AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesDelayed'],
      }),
    );
    return {
      visible: Number(Attributes.ApproximateNumberOfMessages),
      inFlight: Number(Attributes.ApproximateNumberOfMessagesNotVisible),
      delayed: Number(Attributes.ApproximateNumberOfMessagesDelayed ?? 0),
    };
  }

  /** Reads (and leaves hidden for a minute) what a queue holds, with a plain SDK client. */
  async function rawReceive(name: string, max = 10): Promise<Message[]> {
    const { QueueUrl } = await sqsClient().send(new GetQueueUrlCommand({ QueueName: name }));
    const { Messages = [] } = await sqsClient().send(
      new ReceiveMessageCommand({
        QueueUrl,
        MaxNumberOfMessages: max,
        WaitTimeSeconds: 1,
        VisibilityTimeout: 60,
        MessageAttributeNames: ['All'],
        MessageSystemAttributeNames: ['SentTimestamp'],
      }),
    );
    return Messages;
  }

  /** Checks that `promise` rejects with a BrokerError of `code` whose message matches `text`. */
  async function expectRefusal(promise: Promise<unknown>, code: string, text: string | RegExp): Promise<void> {
    const error = await promise.then(
      () => undefined,
      (thrown: unknown) => thrown,
    );
    expect(error).toBeInstanceOf(BrokerError);
    expect((error as BrokerError).code).toBe(code);
    expect((error as BrokerError).message).toMatch(text);
  }

  function callsOf(command: string, queueName?: string): Call[] {
    return calls.filter((call) => call.command === command && (queueName === undefined || String(call.input.QueueUrl).endsWith(`/${queueName}`)));
  }

  /** Messages sent to a queue that the server has answered for: on the queue, not just on their way. */
  function sentTo(queueName: string): Call[] {
    return callsOf('SendMessage', queueName).filter((call) => call.output !== undefined);
  }

  describe('receiving', () => {
    it('long-polls for up to 10 messages at a time within the concurrency, and deletes each only after its handler resolved', async () => {
      const { broker } = await start();
      const { event, queue } = newTopic();
      const received: Received[] = [];
      const hold = gate();
      let running = 0;
      let peak = 0;
      await subscribe(
        broker,
        event,
        collector(received, async () => {
          peak = Math.max(peak, ++running);
          await hold.promise;
          running--;
        }),
        { concurrency: 15 },
      );
      await Promise.all(Array.from({ length: 25 }, (_, i) => publish(broker, event, { i })));
      await waitFor(() => received.length === 15, '15 handlers running', 5000);
      await sleep(300);
      // The concurrency caps what is taken off the queue: 15 in flight, 10 still waiting there.
      expect(received).toHaveLength(15);
      expect(await counts(queue)).toEqual({ visible: 10, inFlight: 15, delayed: 0 });
      expect(callsOf('DeleteMessage', queue).length + callsOf('DeleteMessageBatch', queue).length).toBe(0);
      hold.open();
      await waitFor(() => received.length === 25, 'all 25', 5000);
      await waitFor(() => running === 0, 'the handlers to finish', 5000);
      await sleep(200);
      expect(await counts(queue)).toEqual({ visible: 0, inFlight: 0, delayed: 0 });
      expect(peak).toBe(15);

      const receives = callsOf('ReceiveMessage', queue);
      expect(receives.every((call) => call.input.WaitTimeSeconds === 1)).toBe(true);
      expect(receives.every((call) => (call.input.MaxNumberOfMessages as number) <= 10)).toBe(true);
      expect(Math.max(...receives.map((call) => ((call.output?.Messages as unknown[] | undefined) ?? []).length))).toBe(10);
      const deleted =
        callsOf('DeleteMessage', queue).length + callsOf('DeleteMessageBatch', queue).reduce((sum, call) => sum + (call.input.Entries as unknown[]).length, 0);
      expect(deleted).toBe(25);
      expect(callsOf('DeleteMessageBatch', queue).length).toBeGreaterThan(0);

      // Idle, the pollers wait in long polls instead of spinning: 2 pollers, 1 s polls.
      const before = callsOf('ReceiveMessage', queue).length;
      await sleep(2500);
      expect(callsOf('ReceiveMessage', queue).length - before).toBeLessThanOrEqual(8);
    });

    it('frees a slot once the handler is done, without waiting for its delete, until as many deletes as the concurrency are on their way', async () => {
      const { broker } = await start();
      const { event, queue } = newTopic();
      const deletes = gate();
      deletesHeld = deletes.promise;
      let handled = 0;
      let running = 0;
      let peak = 0;
      await subscribe(
        broker,
        event,
        async () => {
          peak = Math.max(peak, ++running);
          await sleep(20);
          running--;
          handled++;
        },
        { concurrency: 2 },
      );
      await Promise.all(Array.from({ length: 8 }, (_, i) => publish(broker, event, { i })));
      try {
        // Every delete is held. The first 2 free their slots at once (had each slot waited for its
        // delete, only 2 messages would be handled); the next 2 keep theirs, as 2 deletes already wait.
        await waitFor(() => handled === 4, '4 handled while their deletes wait', 5000);
        await sleep(500);
        expect(handled).toBe(4);
        expect(peak).toBeLessThanOrEqual(2);
        expect(await counts(queue)).toEqual({ visible: 4, inFlight: 4, delayed: 0 });
      } finally {
        deletes.open();
      }
      await waitFor(() => handled === 8, 'the other 4, once the deletes went through', 5000);
      await waitFor(async () => (await counts(queue)).inFlight === 0, 'the deletes to land', 5000);
      expect(await counts(queue)).toEqual({ visible: 0, inFlight: 0, delayed: 0 });
    });

    it('keeps a slow handler’s message invisible past its visibility timeout: no other consumer gets it, and it is deleted once done', async () => {
      const slow = await start({ visibilityTimeoutSeconds: 2 });
      const other = await start({ visibilityTimeoutSeconds: 2 });
      const { event, queue } = newTopic();
      const first: Received[] = [];
      const second: Received[] = [];
      let finished = false;
      await subscribe(
        slow.broker,
        event,
        collector(first, async () => {
          await sleep(5000);
          finished = true;
        }),
        { group: 'workers' },
      );
      await publish(slow.broker, event, { slow: true });
      await waitFor(() => first.length === 1, 'the slow handler to start', 5000);
      await subscribe(other.broker, event, collector(second), { group: 'workers' });
      await waitFor(() => finished, 'the slow handler to finish', 8000);
      await sleep(2500);
      expect(first).toHaveLength(1);
      expect(second).toHaveLength(0);
      const extensions = [...callsOf('ChangeMessageVisibility', queue), ...callsOf('ChangeMessageVisibilityBatch', queue)];
      expect(extensions.length).toBeGreaterThanOrEqual(2);
      expect(await counts(queue)).toEqual({ visible: 0, inFlight: 0, delayed: 0 });
    }, 20_000);
  });

  describe('retries and dead letters', () => {
    it('retries through the visibility timeout with the backoff, then dead-letters into <queue>-dead-letters; reprocessDeadLetters moves it back', async () => {
      const { broker } = await start();
      const { event, queue } = newTopic();
      const attempts: { attempt: number; at: number; publishedAt: number }[] = [];
      let healthy = false;
      await subscribe(
        broker,
        event,
        (_message, ctx) => {
          attempts.push({ attempt: ctx.attempt, at: Date.now(), publishedAt: ctx.publishedAt.getTime() });
          if (!healthy) throw new Error('payment service is down');
        },
        { retry: { maxAttempts: 3, initialDelayMs: 1000, multiplier: 2 } },
      );
      await publish(broker, event, { order: 1 }, { headers: { tenant: 'acme' } });
      await waitFor(() => attempts.length === 3, 'three attempts', 8000);
      await waitFor(() => sentTo(`${queue}-dead-letters`).length === 1, 'the dead letter', 3000);
      expect(attempts.map((a) => a.attempt)).toEqual([1, 2, 3]);
      expect(attempts[1].at - attempts[0].at).toBeGreaterThanOrEqual(950);
      expect(attempts[2].at - attempts[1].at).toBeGreaterThanOrEqual(1950);
      // The same message waited out its visibility timeout: never sent again for a retry.
      expect(callsOf('SendMessage', queue)).toHaveLength(1);
      expect(callsOf('ChangeMessageVisibility', queue).map((call) => call.input.VisibilityTimeout)).toEqual([1, 2]);

      const [dead] = await rawReceive(`${queue}-dead-letters`);
      const attributes = Object.fromEntries(Object.entries(dead.MessageAttributes ?? {}).map(([name, value]) => [name, value.StringValue]));
      expect(attributes).toMatchObject({
        [DEAD_LETTER_HEADERS.attempts]: '3',
        [DEAD_LETTER_HEADERS.reason]: 'max-attempts',
      });
      expect(attributes[DEAD_LETTER_HEADERS.error]).toContain('payment service is down');
      // The bytes as published, the same CloudEvents id; the attempt only as x-ductape-attempts.
      const [published] = callsOf('SendMessage', queue);
      const sentAttributes = published.input.MessageAttributes as Record<string, { StringValue: string }>;
      expect(dead.Body).toBe(published.input.MessageBody);
      expect(dead.Body).toBe(JSON.stringify({ order: 1 }));
      expect(attributes['ce-id']).toBe(sentAttributes['ce-id'].StringValue);
      expect(attributes['ce-ductapeattempt']).toBeUndefined();
      // A first publish's time is SQS's SentTimestamp (no ce-time); the dead letter, sent later, carries it as ce-time.
      expect(sentAttributes['ce-time']).toBeUndefined();
      expect(attributes['ce-time']).toBe(new Date(attempts[0].publishedAt).toISOString());
      expect(attempts.every((a) => a.publishedAt === attempts[0].publishedAt)).toBe(true);
      // Ten attributes, each its own: 4 CloudEvents, 4 x-ductape-*, ce-time, the application header.
      expect(Object.keys(attributes).sort()).toEqual(
        ['ce-id', 'ce-source', 'ce-specversion', 'ce-time', 'ce-type', 'tenant', ...Object.values(DEAD_LETTER_HEADERS)].sort(),
      );
      await sqsClient().send(
        new ChangeMessageVisibilityCommand({ QueueUrl: await queueUrl(`${queue}-dead-letters`), ReceiptHandle: dead.ReceiptHandle, VisibilityTimeout: 0 }),
      );

      healthy = true;
      expect(await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: PRODUCT })).toBe(1);
      await waitFor(() => attempts.length === 4, 'the reprocessed message', 5000);
      expect(attempts[3].attempt).toBe(1);
      // Sent again, it keeps the time it was first published at.
      expect(attempts[3].publishedAt).toBe(attempts[0].publishedAt);
      await sleep(300);
      expect(await counts(`${queue}-dead-letters`)).toEqual({ visible: 0, inFlight: 0, delayed: 0 });
      expect(await counts(queue)).toEqual({ visible: 0, inFlight: 0, delayed: 0 });
    }, 20_000);

    it("uses the queue's redrive policy target as its dead-letter queue, for a queue given by URL", async () => {
      const id = randomUUID().slice(0, 8);
      const targetUrl = await queueUrl(`custom-dlq-${id}`);
      const { Attributes } = await sqsClient().send(new GetQueueAttributesCommand({ QueueUrl: targetUrl, AttributeNames: ['QueueArn'] }));
      const workUrl = await queueUrl(`orders-${id}`, {
        RedrivePolicy: JSON.stringify({ deadLetterTargetArn: Attributes!.QueueArn, maxReceiveCount: '10' }),
      });
      const { broker } = await start({}, {}, [{ tag: 'orders', queueUrls: [{ env_slug: 'prd', url: workUrl }] }]);
      const attempts: number[] = [];
      let healthy = false;
      await subscribe(
        broker,
        'sq:orders',
        (_message, ctx) => {
          attempts.push(ctx.attempt);
          if (!healthy) throw new Error('not yet');
        },
        { retry: { maxAttempts: 2, initialDelayMs: 0 } },
      );
      await publish(broker, 'sq:orders', { n: 1 });
      await waitFor(() => sentTo(`custom-dlq-${id}`).length === 1, 'the dead letter in the redrive target', 5000);
      expect(attempts).toEqual([1, 2]);
      expect(await counts(`custom-dlq-${id}`)).toMatchObject({ visible: 1 });
      // No queue of its own was made for dead letters.
      const lookup = await sqsClient()
        .send(new GetQueueUrlCommand({ QueueName: `orders-${id}-dead-letters` }))
        .then(
          () => 'exists',
          (error: Error) => error.name,
        );
      expect(lookup).toBe('QueueDoesNotExist');
      healthy = true;
      expect(await broker.reprocessDeadLetters({ env: 'prd', event: 'sq:orders', product_tag: PRODUCT })).toBe(1);
      await waitFor(() => attempts.length === 3, 'the reprocessed message', 5000);
      expect(attempts[2]).toBe(1);
    }, 15_000);

    it('reprocessDeadLetters ends while the group consumes, even when a dead letter fails again at once (a poison body)', async () => {
      const { broker } = await start();
      const { event, queue } = newTopic();
      await subscribe(broker, event, () => undefined);
      await rawSendToTopicQueue(`${PRODUCT}.prd.${event.slice(3)}`, Buffer.from('not an envelope'));
      await waitFor(() => sentTo(`${queue}-dead-letters`).length === 1, 'the poison dead letter', 5000);
      // Sent back to the queue, it is dead-lettered again at once, as a new SQS message: only the first is moved.
      const startedAt = Date.now();
      expect(await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: PRODUCT })).toBe(1);
      expect(Date.now() - startedAt).toBeLessThan(5000);
      await waitFor(() => sentTo(`${queue}-dead-letters`).length === 2, 'the poison dead-lettered again', 5000);
    });
  });

  describe('FIFO queues', () => {
    it('makes the key the message group: order per key holds with concurrency; messageId deduplicates; a reprocessed message is not deduplicated away', async () => {
      const { broker } = await start({ fifo: true });
      const { event, queue } = newTopic();
      const seen = new Map<string, number[]>();
      let done = 0;
      await subscribe(
        broker,
        event,
        orderRecorder(seen, () => done++),
        { concurrency: 4 },
      );
      for (let seq = 0; seq < 30; seq++) await publish(broker, event, { seq }, { key: `key-${seq % 3}` });
      await waitFor(() => done === 30, 'all 30', 10_000);
      for (let k = 0; k < 3; k++) expect(seen.get(`key-${k}`)).toEqual(Array.from({ length: 10 }, (_, i) => i * 3 + k));
      const sends = callsOf('SendMessage', `${queue}.fifo`);
      expect(sends).toHaveLength(30);
      expect(sends[0].input).toMatchObject({ MessageGroupId: 'key-0' });
      expect(sends[0].input.MessageDeduplicationId).toEqual(expect.any(String));

      // The same messageId twice: SQS keeps one.
      await publish(broker, event, { seq: 100 }, { messageId: 'order-100', key: 'dup' });
      await publish(broker, event, { seq: 101 }, { messageId: 'order-100', key: 'dup' });
      await sleep(1500);
      expect(seen.get('dup')).toEqual([100]);
      // No key: one default group.
      await publish(broker, event, { seq: 200 });
      expect(callsOf('SendMessage', `${queue}.fifo`).pop()!.input).toMatchObject({ MessageGroupId: 'default' });
    }, 20_000);

    it('with SNS fan-out: a FIFO topic and FIFO group queues keep order per key in every group', async () => {
      const { broker } = await start({ fanout: 'sns', fifo: true });
      const { event, queue } = newTopic();
      const seen = { billing: new Map<string, number[]>(), shipping: new Map<string, number[]>() };
      let done = 0;
      for (const group of ['billing', 'shipping'] as const) {
        await subscribe(
          broker,
          event,
          orderRecorder(seen[group], () => done++),
          { group, concurrency: 4 },
        );
      }
      for (let seq = 0; seq < 30; seq++) await publish(broker, event, { seq }, { key: `key-${seq % 3}` });
      await waitFor(() => done === 60, 'all 30 in both groups', 10_000);
      for (const group of ['billing', 'shipping'] as const) {
        for (let k = 0; k < 3; k++) expect(seen[group].get(`key-${k}`)).toEqual(Array.from({ length: 10 }, (_, i) => i * 3 + k));
      }
      const { Topics = [] } = await snsClient().send(new ListTopicsCommand({}));
      expect(Topics.some((topic) => topic.TopicArn!.endsWith(`:${queue}.fifo`))).toBe(true);
      expect(callsOf('CreateQueue').map((call) => call.input.QueueName)).toEqual(expect.arrayContaining([`${queue}__billing.fifo`, `${queue}__shipping.fifo`]));
    }, 20_000);

    it('re-sends a reprocessed dead letter with a fresh deduplication id, and refuses delayMs on FIFO', async () => {
      const { broker } = await start({ fifo: true });
      const { event, queue } = newTopic();
      const handled: Received[] = [];
      let healthy = false;
      await subscribe(
        broker,
        event,
        collector(handled, () => {
          if (!healthy) throw new Error('no');
        }),
        { retry: { maxAttempts: 1, initialDelayMs: 0 } },
      );
      await publish(broker, event, { n: 1 }, { messageId: 'fifo-1' });
      await waitFor(() => sentTo(`${queue}-dead-letters.fifo`).length === 1, 'the dead letter', 5000);
      healthy = true;
      expect(await broker.reprocessDeadLetters({ env: 'prd', event, product_tag: PRODUCT })).toBe(1);
      await waitFor(() => handled.length === 2, 'the reprocessed message (same messageId, within the deduplication window)', 5000);
      expect(handled[1].ctx.messageId).toBe('fifo-1');

      const before = callsOf('SendMessage').length;
      await expectRefusal(publish(broker, event, { late: true }, { delayMs: 2000 }), 'INVALID_MESSAGE', 'FIFO');
      expect(callsOf('SendMessage').length).toBe(before);
    }, 15_000);
  });

  describe('limits', () => {
    it('maps delayMs to DelaySeconds and refuses a delay over 15 minutes with INVALID_MESSAGE, sending nothing', async () => {
      const { broker } = await start();
      const { event, queue } = newTopic();
      const received: number[] = [];
      await subscribe(broker, event, () => void received.push(Date.now()));
      const sent = Date.now();
      await publish(broker, event, { soon: true }, { delayMs: 1500 });
      expect(callsOf('SendMessage', queue)[0].input.DelaySeconds).toBe(2);
      await waitFor(() => received.length === 1, 'the delayed message', 5000);
      expect(received[0] - sent).toBeGreaterThanOrEqual(1490);

      await expectRefusal(publish(broker, event, { late: true }, { delayMs: 900_001 }), 'INVALID_MESSAGE', '900 s');
      expect(callsOf('SendMessage', queue)).toHaveLength(1);
      await publish(broker, event, { latest: true }, { delayMs: 900_000 });
      expect(callsOf('SendMessage', queue).pop()!.input.DelaySeconds).toBe(900);
    });

    it('carries the metadata and headers as message attributes while they fit (10), and beyond in one overflow attribute, the CloudEvents ones first', async () => {
      const { broker } = await start();
      const { event, queue } = newTopic();
      const received: Received[] = [];
      await subscribe(broker, event, collector(received));
      const few = { tenant: 'acme', region: 'eu' };
      const many = Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`h${i}`, `v${i}`]));
      await publish(broker, event, 'few', { headers: few, correlationId: 'c-1' });
      await publish(broker, event, 'many', { headers: many, correlationId: 'c-2', key: 'k-2' });
      await waitFor(() => received.length === 2, 'both messages', 5000);
      const byMessage = Object.fromEntries(received.map((r) => [r.message as string, r.ctx]));
      expect(byMessage.few.headers).toEqual(few);
      expect(byMessage.many.headers).toEqual(many);
      expect(byMessage.many).toMatchObject({ correlationId: 'c-2', key: 'k-2' });
      const [fewSend, manySend] = callsOf('SendMessage', queue).map((call) => call.input.MessageAttributes as Record<string, { StringValue: string }>);
      expect(Object.keys(fewSend).sort()).toEqual(['ce-correlationid', 'ce-id', 'ce-source', 'ce-specversion', 'ce-type', 'region', 'tenant']);
      expect(Object.keys(manySend)).toHaveLength(10);
      // The 4 every message has, correlation id, key, then the headers in their order.
      expect(Object.keys(manySend)).toEqual(['ce-specversion', 'ce-id', 'ce-source', 'ce-type', 'ce-correlationid', 'ce-partitionkey', 'h0', 'h1', 'h2', OVERFLOW_ATTRIBUTE]);
      const overflow = JSON.parse(manySend[OVERFLOW_ATTRIBUTE].StringValue) as Record<string, string>;
      expect(overflow).toEqual(Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`h${i + 3}`, `v${i + 3}`])));
    });

    it("keeps a dead letter's x-ductape-* attributes its own when the attributes overflow: after the required CloudEvents ones, before the rest", async () => {
      const { broker } = await start();
      const { event, queue } = newTopic();
      const dead: Received[] = [];
      await subscribe(broker, event, () => Promise.reject(new Error('always')), { retry: { maxAttempts: 1, initialDelayMs: 0 } });
      await subscribe(broker, event, collector(dead), { deadLetter: true });
      const headers = { tenant: 'acme', region: 'eu' };
      await publish(broker, event, { n: 1 }, { headers, correlationId: 'c-1', key: 'k-1' });
      await waitFor(() => dead.length === 1, 'the dead letter', 5000);
      const [sent] = sentTo(`${queue}-dead-letters`);
      const attributes = sent.input.MessageAttributes as Record<string, { StringValue: string }>;
      expect(Object.keys(attributes)).toEqual([
        'ce-specversion',
        'ce-id',
        'ce-source',
        'ce-type',
        DEAD_LETTER_HEADERS.error,
        DEAD_LETTER_HEADERS.attempts,
        DEAD_LETTER_HEADERS.failedAt,
        DEAD_LETTER_HEADERS.reason,
        'ce-time',
        OVERFLOW_ATTRIBUTE,
      ]);
      expect(JSON.parse(attributes[OVERFLOW_ATTRIBUTE].StringValue)).toEqual({ 'ce-correlationid': 'c-1', 'ce-partitionkey': 'k-1', ...headers });
      // Read back whole: the dead-letter handler sees everything.
      expect(dead[0].message).toEqual({ n: 1 });
      expect(dead[0].ctx).toMatchObject({ correlationId: 'c-1', key: 'k-1', attempt: 1, messageId: (callsOf('SendMessage', queue)[0].input.MessageAttributes as Record<string, { StringValue: string }>)['ce-id'].StringValue });
      expect(dead[0].ctx.headers).toMatchObject({ ...headers, [DEAD_LETTER_HEADERS.reason]: 'max-attempts', [DEAD_LETTER_HEADERS.error]: expect.stringContaining('always') as unknown });
    });

    it('refuses a message over 256 KiB with INVALID_MESSAGE before sending', async () => {
      const { broker } = await start({}, { maxMessageBytes: 2 * 1024 * 1024 });
      const { event, queue } = newTopic();
      await subscribe(broker, event, () => undefined);
      await expectRefusal(publish(broker, event, 'x'.repeat(256 * 1024)), 'INVALID_MESSAGE', '256 KiB');
      // 4 KiB are kept for the headers a dead letter gains.
      await expectRefusal(publish(broker, event, 'x'.repeat(253 * 1024)), 'INVALID_MESSAGE', 'kept for the headers of a dead letter');
      expect(callsOf('SendMessage', queue)).toHaveLength(0);
      await publish(broker, event, 'x'.repeat(250 * 1024));
      expect(callsOf('SendMessage', queue)).toHaveLength(1);
    });

    it.each([
      ['the longest error text, 3 bytes a character', 'é€'.repeat(600)],
      ['an error text of control characters, 6 bytes each in JSON', '\u0001'.repeat(1000)],
    ])('dead-letters a message published near the limit into a dead-letter queue of 256 KiB (%s)', async (_title, errorText) => {
      // SQS refused the dead letter (its headers come twice, in the envelope and as attributes), and
      // the handler ran on, once a second. The redrive target has the long-standing 256 KiB limit.
      const id = randomUUID().slice(0, 8);
      const targetUrl = await queueUrl(`small-dlq-${id}`, { MaximumMessageSize: String(256 * 1024) });
      const { Attributes } = await sqsClient().send(new GetQueueAttributesCommand({ QueueUrl: targetUrl, AttributeNames: ['QueueArn'] }));
      const workUrl = await queueUrl(`big-${id}`, { RedrivePolicy: JSON.stringify({ deadLetterTargetArn: Attributes!.QueueArn, maxReceiveCount: '100' }) });
      const { broker } = await start({}, { maxMessageBytes: 2 * 1024 * 1024 }, [{ tag: 'orders', queueUrls: [{ env_slug: 'prd', url: workUrl }] }]);
      let calls = 0;
      await subscribe(
        broker,
        'sq:orders',
        () => {
          calls++;
          throw new Error(errorText);
        },
        { retry: { maxAttempts: 1, initialDelayMs: 0 } },
      );
      // Up to as close to the limit as publish allows (the last one is refused).
      let accepted = 0;
      for (let size = 252 * 1024 - 600; ; size += 200) {
        const refused = await publish(broker, 'sq:orders', 'x'.repeat(size)).then(
          () => false,
          () => true,
        );
        if (refused) break;
        accepted++;
      }
      expect(accepted).toBeGreaterThanOrEqual(2);
      await waitFor(async () => (await counts(`small-dlq-${id}`)).visible === accepted, 'every dead letter in the 256 KiB queue', 10_000);
      await sleep(1500);
      // Each handled once (maxAttempts 1), none again.
      expect(calls).toBe(accepted);
      expect(await counts(`big-${id}`)).toEqual({ visible: 0, inFlight: 0, delayed: 0 });
    }, 20_000);
  });

  describe('queue mode and fan-out', () => {
    it('refuses a second group on a queue-mode topic with SUBSCRIBE_FAILED that says how to fan out', async () => {
      const { broker } = await start();
      const { event } = newTopic();
      await subscribe(broker, event, () => undefined, { group: 'billing' });
      await expectRefusal(subscribe(broker, event, () => undefined, { group: 'shipping' }), 'SUBSCRIBE_FAILED', "fanout: 'sns'");
      // The same group again is fine: more competing consumers.
      await subscribe(broker, event, () => undefined, { group: 'billing' });
    });

    it('fan-out: keeps the other statements of a group queue’s policy; reprocessing an unknown group makes no queue', async () => {
      const { event, queue } = newTopic();
      const url = await queueUrl(`${queue}__billing`);
      const foreign = { Sid: 'operators', Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::111122223333:root' }, Action: 'sqs:ReceiveMessage', Resource: '*' };
      await sqsClient().send(new SetQueueAttributesCommand({ QueueUrl: url, Attributes: { Policy: JSON.stringify({ Version: '2012-10-17', Statement: [foreign] }) } }));
      const { broker } = await start({ fanout: 'sns' });
      await subscribe(broker, event, () => undefined, { group: 'billing' });
      const { Attributes } = await sqsClient().send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['Policy'] }));
      const statements = (JSON.parse(Attributes!.Policy!) as { Statement: { Sid: string; Principal: unknown }[] }).Statement;
      expect(statements.map((statement) => statement.Sid)).toEqual(['operators', expect.stringMatching(/^ductape-sns-/)]);
      expect(statements[1].Principal).toEqual({ Service: 'sns.amazonaws.com' });
      // A second start finds its statement there and leaves the policy as it is.
      const writes = callsOf('SetQueueAttributes', `${queue}__billing`).length;
      const again = await start({ fanout: 'sns' });
      await subscribe(again.broker, event, () => undefined, { group: 'billing' });
      expect(callsOf('SetQueueAttributes', `${queue}__billing`)).toHaveLength(writes);

      await expectRefusal(broker.reprocessDeadLetters({ env: 'prd', event, product_tag: PRODUCT, group: 'biling' }), 'PUBLISH_FAILED', 'never subscribed');
      expect(callsOf('CreateQueue').filter((call) => String(call.input.QueueName).includes('__biling'))).toHaveLength(0);
    });

    it('takes FIFO from a queue URL, and refuses at startup a topic whose fifo setting contradicts it', async () => {
      const url = await queueUrl(`given-${randomUUID().slice(0, 8)}.fifo`, { FifoQueue: 'true' });
      const { broker } = await start({}, {}, [{ tag: 'ordered', queueUrls: [{ env_slug: 'prd', url }] }]);
      await publish(broker, 'sq:ordered', { n: 1 }, { key: 'k' });
      expect(callsOf('SendMessage').pop()!.input).toMatchObject({ MessageGroupId: 'k' });
      await expectRefusal(start({}, {}, [{ tag: 'wrong', fifo: false, queueUrls: [{ env_slug: 'prd', url }] }]), 'CONFIG_INVALID', /fifo is false but its queue URL for env 'prd' is a FIFO queue/);
    });

    it('fan-out: an SNS topic with one queue per group, subscribed with raw delivery; a delayed message reaches every group', async () => {
      const { broker } = await start({ fanout: 'sns' });
      const { event, queue } = newTopic();
      const billing: Received[] = [];
      const shipping: Received[] = [];
      await subscribe(broker, event, collector(billing), { group: 'billing' });
      await subscribe(broker, event, collector(shipping), { group: 'shipping' });
      const { Topics = [] } = await snsClient().send(new ListTopicsCommand({}));
      const topicArn = Topics.map((topic) => topic.TopicArn!).find((arn) => arn.endsWith(`:${queue}`))!;
      expect(topicArn).toBeDefined();
      const { Subscriptions = [] } = await snsClient().send(new ListSubscriptionsByTopicCommand({ TopicArn: topicArn }));
      expect(Subscriptions.map((s) => s.Endpoint!.split(':').pop()).sort()).toEqual([`${queue}__billing`, `${queue}__shipping`]);
      for (const subscription of Subscriptions) {
        const { Attributes } = await snsClient().send(new GetSubscriptionAttributesCommand({ SubscriptionArn: subscription.SubscriptionArn }));
        expect(Attributes?.RawMessageDelivery).toBe('true');
      }
      const sent = Date.now();
      await publish(broker, event, { delayed: true }, { delayMs: 1000 });
      await publish(broker, event, { now: true });
      await waitFor(() => billing.length === 2 && shipping.length === 2, 'both messages in both groups', 5000);
      const delayedAt = billing.find((r) => (r.message as { delayed?: boolean }).delayed)!;
      expect(delayedAt.ctx.headers).toEqual({});
      expect(Date.now() - sent).toBeGreaterThanOrEqual(990);
      expect(shipping.map((r) => r.message)).toEqual(expect.arrayContaining([{ delayed: true }, { now: true }]));
    });

    it('fan-out: a publish before any group resolves with one warning naming the topic and env, and the group subscribing later never gets it', async () => {
      const logger = new CapturingLogger();
      const { app, broker } = await createBrokerApp(options(sqsEnv('prd', { fanout: 'sns' })), {}, logger);
      apps.push(app);
      const { event, queue } = newTopic();
      const noGroup = () => logger.entries.filter((entry) => entry.level === 'warn' && entry.message.includes('has no subscription group yet'));
      await publish(broker, event, { early: 1 });
      await publish(broker, event, { early: 2 });
      // A delayed one goes to the subscribed queues themselves: none, so nowhere.
      await publish(broker, event, { early: 3 }, { delayMs: 1000 });
      await waitFor(() => noGroup().length > 0, 'the no-group warning', 3000);
      await sleep(300);
      expect(noGroup()).toHaveLength(1);
      expect(noGroup()[0].message).toContain(`topic '${PRODUCT}.prd.${event.slice(3)}' [prd]`);
      const billing: Received[] = [];
      await subscribe(broker, event, collector(billing), { group: 'billing' });
      await publish(broker, event, { after: true });
      await waitFor(() => billing.length === 1, 'the message published after the group subscribed', 5000);
      await sleep(1500);
      expect(billing.map((r) => r.message)).toEqual([{ after: true }]);
      expect(await counts(`${queue}__billing`)).toEqual({ visible: 0, inFlight: 0, delayed: 0 });
      expect(noGroup()).toHaveLength(1);
    });

    it("fan-out: whenNoGroup: 'reject' fails a publish (delayed or not) with PUBLISH_FAILED while no group has subscribed, sending nothing", async () => {
      const { tag } = newTopic();
      const { broker } = await start({ fanout: 'sns' }, {}, [{ tag, whenNoGroup: 'reject' }]);
      const event = `sq:${tag}`;
      await expectRefusal(publish(broker, event, { n: 1 }), 'PUBLISH_FAILED', `topic '${PRODUCT}.prd.${tag}' [prd] has no subscription group yet`);
      await expectRefusal(publish(broker, event, { n: 2 }, { delayMs: 1000 }), 'PUBLISH_FAILED', 'no subscription group yet');
      const received: Received[] = [];
      await subscribe(broker, event, collector(received), { group: 'strict' });
      await publish(broker, event, { n: 3 });
      await waitFor(() => received.length === 1, 'the message published once the group existed', 5000);
      expect(received[0].message).toEqual({ n: 3 });
    });

    it("queue mode: the queue is the group, so a publish before any consumer is kept for it, also under whenNoGroup: 'reject'", async () => {
      const { tag, queue } = newTopic();
      const logger = new CapturingLogger();
      const { app, broker } = await createBrokerApp(options(sqsEnv('prd'), {}, [{ tag, whenNoGroup: 'reject' }]), {}, logger);
      apps.push(app);
      await publish(broker, `sq:${tag}`, { early: true });
      expect(await counts(queue)).toMatchObject({ visible: 1 });
      const received: Received[] = [];
      await subscribe(broker, `sq:${tag}`, collector(received));
      await waitFor(() => received.length === 1, 'the message kept in the queue', 5000);
      expect(logger.entries.filter((entry) => entry.message.includes('no subscription group'))).toEqual([]);
    });
  });

  describe('wire format: what plain AWS SDK clients write and read', () => {
    /** String (and Number) attributes by name, as a plain client reads them. */
    function strings(attributes: Message['MessageAttributes']): Record<string, string> {
      return Object.fromEntries(Object.entries(attributes ?? {}).map(([name, value]) => [name, value.StringValue!]));
    }

    it("handles a plain SDK's JSON (no ce- attributes): ctx.messageId is SQS's MessageId on every delivery, publishedAt its SentTimestamp, attributes the headers", async () => {
      const { broker } = await start();
      const { event, queue } = newTopic();
      const received: Received[] = [];
      await subscribe(
        broker,
        event,
        collector(received, (ctx) => {
          if (ctx.attempt === 1) throw new Error('once');
        }),
        { retry: { maxAttempts: 2, initialDelayMs: 0 } },
      );
      const before = Date.now();
      const { MessageId } = await sqsClient().send(
        new SendMessageCommand({
          QueueUrl: await queueUrl(queue),
          MessageBody: JSON.stringify({ orderId: 'p-1', from: 'java' }),
          MessageAttributes: {
            'x-origin': { DataType: 'String', StringValue: 'billing-java' },
            'x-count': { DataType: 'Number', StringValue: '3' },
            'x-blob': { DataType: 'Binary', BinaryValue: Buffer.from([1, 2]) },
          },
        }),
      );
      await waitFor(() => received.length === 2, 'the delivery and its redelivery', 5000);
      const [first, second] = received;
      expect(MessageId).toEqual(expect.any(String));
      expect(first.message).toEqual({ orderId: 'p-1', from: 'java' });
      expect([first.ctx.messageId, second.ctx.messageId]).toEqual([MessageId, MessageId]);
      expect([first.ctx.attempt, second.ctx.attempt]).toEqual([1, 2]);
      // The same message: a retry waits out its visibility timeout, nothing is sent again (the one send is the plain client's).
      expect(callsOf('SendMessage', queue)).toHaveLength(1);
      const sentAt = Number((first.ctx.raw as Message).Attributes!.SentTimestamp);
      expect(sentAt).toBeGreaterThanOrEqual(before - 1000);
      expect([first.ctx.publishedAt.getTime(), second.ctx.publishedAt.getTime()]).toEqual([sentAt, sentAt]);
      expect(first.ctx.headers).toEqual({ 'x-origin': 'billing-java', 'x-count': '3' });
      expect(first.ctx.correlationId).toBeUndefined();
      expect(first.ctx.key).toBeUndefined();
    });

    it("on a FIFO queue, a plain SDK message's group id is its key", async () => {
      const { broker } = await start({ fifo: true });
      const { event, queue } = newTopic();
      const received: Received[] = [];
      await subscribe(broker, event, collector(received));
      const url = await queueUrl(`${queue}.fifo`, { FifoQueue: 'true' });
      await sqsClient().send(new SendMessageCommand({ QueueUrl: url, MessageBody: '{"n":1}', MessageGroupId: 'customer-7', MessageDeduplicationId: 'd-1' }));
      await waitFor(() => received.length === 1, 'the plain FIFO message', 5000);
      expect(received[0].ctx.key).toBe('customer-7');
    });

    it('puts the bare JSON in the body for a plain SDK ReceiveMessage, its metadata in ce- attributes (its time in SentTimestamp), headers as attributes', async () => {
      const { broker } = await start();
      const { event, queue } = newTopic();
      const message = { orderId: '12345', unicode: 'é 漢字 🎉' };
      const before = Date.now();
      const { messageId } = await publish(broker, event, message, { headers: { tenant: 'acme' }, correlationId: 'corr-1', key: 'k-1' });
      // U+FFFF: SQS refuses it in a body, JSON.stringify leaves it as it is: it goes \u-escaped, the same JSON value.
      await publish(broker, event, { odd: 'a\uFFFFb' }, { messageId: 'odd-1' });
      const records = await rawReceive(queue);
      const ours = records.find((record) => strings(record.MessageAttributes)['ce-id'] === messageId)!;
      expect(ours.Body).toBe(JSON.stringify(message));
      expect(strings(ours.MessageAttributes)).toEqual({
        'ce-specversion': '1.0',
        'ce-id': messageId,
        'ce-source': `/${PRODUCT}/prd/${PRODUCT}`,
        'ce-type': event,
        'ce-correlationid': 'corr-1',
        'ce-partitionkey': 'k-1',
        tenant: 'acme',
      });
      expect(Number(ours.Attributes!.SentTimestamp)).toBeGreaterThanOrEqual(before - 1000);
      const odd = records.find((record) => strings(record.MessageAttributes)['ce-id'] === 'odd-1')!;
      expect(odd.Body).toBe('{"odd":"a\\uffffb"}');
      expect(JSON.parse(odd.Body!)).toEqual({ odd: 'a\uFFFFb' });
    });

    it('on a FIFO queue, a key travels as the message group id only when it is one; a key-less message is in the default group', async () => {
      const { broker } = await start({ fifo: true });
      const { event, queue } = newTopic();
      await publish(broker, event, { n: 1 }, { key: 'k-1' });
      await publish(broker, event, { n: 2 }, { key: 'default' });
      await publish(broker, event, { n: 3 }, { key: 'not ascii: é' });
      await publish(broker, event, { n: 4 });
      const sends = callsOf('SendMessage', `${queue}.fifo`).map((call) => ({
        group: call.input.MessageGroupId,
        key: (call.input.MessageAttributes as Record<string, { StringValue: string }>)['ce-partitionkey']?.StringValue,
      }));
      expect(sends).toEqual([
        { group: 'k-1', key: undefined },
        { group: 'default', key: 'default' },
        { group: expect.stringMatching(/^[0-9a-f]{64}$/) as unknown, key: 'not ascii: é' },
        { group: 'default', key: undefined },
      ]);
      const received: Received[] = [];
      await subscribe(broker, event, collector(received));
      await waitFor(() => received.length === 4, 'all four', 8000);
      const keys = Object.fromEntries(received.map((r) => [(r.message as { n: number }).n, r.ctx.key]));
      expect(keys).toEqual({ 1: 'k-1', 2: 'default', 3: 'not ascii: é', 4: undefined });
    }, 15_000);

    it('reads a message 0.1.0 wrote as before: its message-id and correlation-id attributes are not headers', async () => {
      const { broker } = await start();
      const { event, tag } = newTopic();
      const received: Received[] = [];
      await subscribe(broker, event, collector(received));
      const envelope = { v: 1, id: 'old-1', publishedAt: 1_700_000_000_000, attempt: 1, headers: { tenant: 'acme' }, correlationId: 'c-old', message: { n: 1 } };
      await rawSendToTopicQueue(`${PRODUCT}.prd.${tag}`, Buffer.from(JSON.stringify(envelope)), { 'message-id': 'old-1', 'correlation-id': 'c-old', tenant: 'acme' });
      await waitFor(() => received.length === 1, 'the 0.1.0 message', 5000);
      expect(received[0].message).toEqual({ n: 1 });
      expect(received[0].ctx).toMatchObject({ messageId: 'old-1', correlationId: 'c-old' });
      expect(received[0].ctx.headers).toEqual({ tenant: 'acme' });
    });

    it('an endpoint that refuses characters beyond the BMP (as emulators do) gets them \\u-escaped from then on, with one warning: the same JSON value', async () => {
      const logger = new CapturingLogger();
      const { app, broker } = await createBrokerApp(options(sqsEnv('prd')), {}, logger);
      apps.push(app);
      const { event, queue } = newTopic();
      const received: Received[] = [];
      await subscribe(broker, event, collector(received));
      refuseAstral = true;
      await publish(broker, event, { party: '🎉', n: 1 });
      await publish(broker, event, { party: '🎉', n: 2 });
      await waitFor(() => received.length === 2, 'both messages', 5000);
      expect(received.map((r) => r.message).sort((a, b) => (a as { n: number }).n - (b as { n: number }).n)).toEqual([
        { party: '🎉', n: 1 },
        { party: '🎉', n: 2 },
      ]);
      // The first refused, then sent escaped; the second escaped at once.
      expect(callsOf('SendMessage', queue).map((call) => call.input.MessageBody)).toEqual([
        JSON.stringify({ party: '🎉', n: 1 }),
        '{"party":"\\ud83c\\udf89","n":1}',
        '{"party":"\\ud83c\\udf89","n":2}',
      ]);
      expect(logger.entries.filter((entry) => entry.level === 'warn' && entry.message.includes('Basic Multilingual Plane'))).toHaveLength(1);
    });
  });

  describe('bad input and safety', () => {
    const SECRET = 'wJalrXUtnFEMI-K7MDENG-bPxRfiCYzEXAMPLEKEY';

    it('refuses a malformed SQS config with CONFIG_INVALID naming each field, without echoing secrets', async () => {
      const error = await startupError(
        options(
          {
            slug: 'prd',
            type: 'sqs',
            config: {
              region: '',
              endpoint: 'ftp://sqs.local',
              secretAccessKey: SECRET,
              fanout: 'topic' as 'sns',
              fifo: 'yes' as unknown as boolean,
              waitTimeSeconds: 30,
              visibilityTimeoutSeconds: 0,
              createMissing: 1 as unknown as boolean,
            },
          },
          {},
          [{ tag: 'orders', fanout: 'kafka' as 'sns', fifo: 1 as unknown as boolean }],
        ),
      );
      expect(error.code).toBe('CONFIG_INVALID');
      expect(error.problems).toEqual([
        'brokers[0].envs[0].config.region: must be a non-empty string',
        "brokers[0].envs[0].config.endpoint: protocol must be 'http:' or 'https:' (got 'ftp:')",
        'brokers[0].envs[0].config: accessKeyId and secretAccessKey must be given together (or neither, for the default credential chain)',
        "brokers[0].envs[0].config.fanout: must be 'queue' or 'sns'",
        'brokers[0].envs[0].config.fifo: must be a boolean',
        'brokers[0].envs[0].config.createMissing: must be a boolean',
        'brokers[0].envs[0].config.waitTimeSeconds: must be an integer from 1 to 20',
        'brokers[0].envs[0].config.visibilityTimeoutSeconds: must be an integer from 2 to 43200',
        "brokers[0].topics[0].fanout: must be 'queue' or 'sns'",
        'brokers[0].topics[0].fifo: must be a boolean',
      ]);
      expect(error.message).not.toContain(SECRET);
    });

    it('a wrong queue URL and a missing queue give clear errors', async () => {
      const missingUrl = (await queueUrl(`exists-${randomUUID().slice(0, 8)}`)).replace(/exists-/, 'missing-');
      const { broker } = await start({}, {}, [{ tag: 'orders', queueUrls: [{ env_slug: 'prd', url: missingUrl }] }, { tag: 'other' }]);
      await expectRefusal(publish(broker, 'sq:orders', { n: 1 }), 'PUBLISH_FAILED', /queue .*missing-.* does not exist/);
      await expectRefusal(subscribe(broker, 'sq:orders', () => undefined), 'SUBSCRIBE_FAILED', 'does not exist');

      const strict = await start({ createMissing: false });
      await expectRefusal(publish(strict.broker, 'sq:other', { n: 1 }), 'PUBLISH_FAILED', `SQS queue '${PRODUCT}_prd_other' does not exist`);
      expect(callsOf('CreateQueue').filter((call) => call.input.QueueName === `${PRODUCT}_prd_other`)).toHaveLength(0);
    });

    it('an unreachable endpoint gives an error naming it, never the secret key', async () => {
      const logger = new CapturingLogger();
      const { app, broker } = await createBrokerApp(
        options({ slug: 'prd', type: 'sqs', config: { region: 'eu-west-1', endpoint: 'http://127.0.0.1:1', accessKeyId: 'AKIDEXAMPLE', secretAccessKey: SECRET, waitTimeSeconds: 1 } }),
        {},
        logger,
      );
      apps.push(app);
      const error = (await publish(broker, 'sq:anything', { n: 1 }).catch((thrown: unknown) => thrown)) as Error & { code: string };
      expect(error.code).toBe('PUBLISH_FAILED');
      expect(error.message).toContain('http://127.0.0.1:1');
      expect(error.message).toContain('ECONNREFUSED');
      expect(`${error.message} ${error.stack} ${logger.texts.join(' ')}`).not.toContain(SECRET);
    });

    it('rejected credentials give a clear error without the secret key (a stand-in server answers as AWS does: fauxqs checks no credentials)', async () => {
      // fauxqs accepts any credentials, so this one HTTP server stands in for AWS refusing them,
      // with the answer SQS's JSON protocol gives an unknown access key.
      const seen: string[] = [];
      const server: Server = createServer((request, response) => {
        let body = '';
        request.on('data', (chunk: Buffer) => (body += chunk.toString()));
        request.on('end', () => {
          seen.push(`${String(request.headers['x-amz-target'])} ${String(request.headers.authorization).slice(0, 40)} ${body}`);
          response.writeHead(400, { 'content-type': 'application/x-amz-json-1.0', 'x-amzn-query-error': 'InvalidClientTokenId;Sender' });
          response.end(JSON.stringify({ __type: 'com.amazon.coral.service#UnrecognizedClientException', message: 'The security token included in the request is invalid.' }));
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      try {
        const port = (server.address() as AddressInfo).port;
        const logger = new CapturingLogger();
        const { app, broker } = await createBrokerApp(
          options({ slug: 'prd', type: 'sqs', config: { region: 'eu-west-1', endpoint: `http://127.0.0.1:${port}`, accessKeyId: 'AKIDEXAMPLE', secretAccessKey: SECRET, sessionToken: 'session-token-secret' } }),
          {},
          logger,
        );
        apps.push(app);
        const error = (await publish(broker, 'sq:anything', { n: 1 }).catch((thrown: unknown) => thrown)) as Error & { code: string };
        expect(error.code).toBe('PUBLISH_FAILED');
        expect(error.message).toContain('credentials were rejected');
        expect(error.message).toMatch(/InvalidClientTokenId|UnrecognizedClientException/);
        const everything = `${error.message} ${error.stack} ${logger.texts.join(' ')}`;
        expect(everything).not.toContain(SECRET);
        expect(everything).not.toContain('session-token-secret');
        expect(seen[0]).toContain('AmazonSQS.ListQueues');
      } finally {
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
    });
  });

  describe('shutdown', () => {
    it('stops polling, lets in-flight handlers finish and deletes their messages; what is still running becomes visible again at once', async () => {
      const { app, broker } = await start({}, { shutdownTimeoutMs: 300 });
      apps.splice(apps.indexOf(app), 1);
      const { event, queue } = newTopic();
      const quick = gate();
      const stuck = gate();
      const started: string[] = [];
      await subscribe(
        broker,
        event,
        async (message) => {
          const { kind } = message as { kind: string };
          started.push(kind);
          await (kind === 'quick' ? quick.promise : stuck.promise);
        },
        { concurrency: 2 },
      );
      await publish(broker, event, { kind: 'quick' });
      await publish(broker, event, { kind: 'stuck' });
      await waitFor(() => started.length === 2, 'both handlers to start', 5000);
      expect(await counts(queue)).toEqual({ visible: 0, inFlight: 2, delayed: 0 });
      const closing = app.close();
      await sleep(50);
      quick.open();
      await closing;
      const receivesAfterClose = callsOf('ReceiveMessage', queue).length;
      // The finished one is deleted; the stuck one is visible again now, not after its 30 s timeout.
      expect(await counts(queue)).toEqual({ visible: 1, inFlight: 0, delayed: 0 });
      await sleep(1500);
      expect(callsOf('ReceiveMessage', queue).length).toBe(receivesAfterClose);
      stuck.open();
      const [left] = await rawReceive(queue);
      expect(left.Body).toBe(JSON.stringify({ kind: 'stuck' }));
    });
  });
});
