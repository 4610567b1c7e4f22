import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { CreateQueueCommand, DeleteMessageBatchCommand, PurgeQueueCommand, ReceiveMessageCommand, SendMessageCommand } from '@aws-sdk/client-sqs';
import { topicQueueName } from '../lib/adapters/sqs';
import { sqsClient, sqsEnv } from '../test/support/sqs';
import { alternate, benchApp, consumeClock, inWindows, MESSAGE, perSecond, within, type Ratio, type ScenarioResult } from './harness';
import type { BenchOptions } from './memory.bench';

const WINDOW = 100;
const CONCURRENCY = 10;

/**
 * SQS on the test suite's endpoint (fauxqs unless SQS_ENDPOINT is set): publish with 100 in flight,
 * and consume 10 at a time with delete after the handler, ours against the plain AWS SDK doing the
 * same requests. On an emulator this mostly measures the emulator; the ratio is what counts.
 */
export async function benchSqs(options: BenchOptions): Promise<{ results: ScenarioResult[]; ratios: Ratio[] }> {
  const count = options.quick ? 1500 : 10_000;
  const tag = `bench-${randomUUID().slice(0, 8)}`;
  const { app, broker } = await benchApp('sq', sqsEnv('prd'));
  const event = `sq:${tag}`;
  const client = sqsClient();
  const ourQueue = (await client.send(new CreateQueueCommand({ QueueName: topicQueueName(`bench.prd.${tag}`, false) }))).QueueUrl!;
  const rawQueue = (await client.send(new CreateQueueCommand({ QueueName: `bench-raw-${tag}` }))).QueueUrl!;
  const body = JSON.stringify(MESSAGE);
  const ourPublish = () => broker.publish({ env: 'prd', event, product_tag: 'bench', input: { message: MESSAGE } });
  const rawSend = () => client.send(new SendMessageCommand({ QueueUrl: rawQueue, MessageBody: body }));
  // What ours sends for the same message: the message's JSON as the body, and the required
  // CloudEvents attributes (specversion, id, source, type) as message attributes; its time is SQS's
  // SentTimestamp and application/json the content type a body without one has.
  const source = '/bench/prd/bench';
  const rawSendOursWork = () =>
    client.send(
      new SendMessageCommand({
        QueueUrl: rawQueue,
        MessageBody: JSON.stringify(MESSAGE),
        MessageAttributes: {
          'ce-specversion': { DataType: 'String', StringValue: '1.0' },
          'ce-id': { DataType: 'String', StringValue: randomUUID() },
          'ce-source': { DataType: 'String', StringValue: source },
          'ce-type': { DataType: 'String', StringValue: event },
        },
      }),
    );
  const purge = async () => {
    await client.send(new PurgeQueueCommand({ QueueUrl: ourQueue }));
    await client.send(new PurgeQueueCommand({ QueueUrl: rawQueue }));
  };

  /** One publish round of `one` with 100 in flight: its rate, then both queues emptied for the next contender. */
  const publishRound = (one: () => Promise<unknown>) => async () => {
    const start = process.hrtime.bigint();
    await inWindows(count, WINDOW, one);
    const rate = perSecond(count, start);
    await purge();
    return rate;
  };
  const publish = await alternate('sqs publish (100 in flight)', 'msg/s', options.rounds, [
    { name: 'ours', run: publishRound(ourPublish) },
    { name: 'AWS SDK SendMessage', run: publishRound(rawSend) },
    { name: 'AWS SDK SendMessage doing ours’ work (the same body and CloudEvents attributes)', run: publishRound(rawSendOursWork) },
  ]);

  const consume = await alternate('sqs consume (10 at a time, delete after the handler)', 'msg/s', options.rounds, [
    {
      name: 'ours',
      run: async () => {
        await inWindows(count, WINDOW, ourPublish);
        const clock = consumeClock(count);
        const subscription = await broker.subscribe({ env: 'prd', event, product_tag: 'bench', input: { concurrency: CONCURRENCY, callback: clock.handled } });
        await within(clock.done, 120_000, 'ours sqs consume');
        await subscription.unsubscribe();
        return clock.rate();
      },
    },
    {
      name: 'AWS SDK receive 10, DeleteMessageBatch',
      run: async () => {
        await inWindows(count, WINDOW, rawSend);
        const clock = consumeClock(count);
        let handled = 0;
        while (handled < count) {
          const { Messages = [] } = await client.send(new ReceiveMessageCommand({ QueueUrl: rawQueue, MaxNumberOfMessages: 10, WaitTimeSeconds: 1, MessageAttributeNames: ['All'], MessageSystemAttributeNames: ['ApproximateReceiveCount'] }));
          for (const message of Messages) {
            JSON.parse(message.Body!);
            clock.handled();
          }
          if (Messages.length > 0) {
            await client.send(new DeleteMessageBatchCommand({ QueueUrl: rawQueue, Entries: Messages.map((message, i) => ({ Id: String(i), ReceiptHandle: message.ReceiptHandle })) }));
          }
          handled += Messages.length;
        }
        return clock.rate();
      },
    },
  ]);
  await app.close();
  return {
    results: [publish, consume],
    ratios: [
      { name: 'sqs-publish-vs-aws-sdk', value: publish.medians.ours / publish.medians['AWS SDK SendMessage'], target: 0.9 },
      { name: 'sqs-publish-vs-aws-sdk-doing-ours-work', value: publish.medians.ours / publish.medians['AWS SDK SendMessage doing ours’ work (the same body and CloudEvents attributes)'] },
      // What the four CloudEvents attributes cost the plain SDK: the ceiling of ours against a bare SendMessage.
      { name: 'sqs-aws-sdk-publish-with-ours-attributes-vs-bare', value: publish.medians['AWS SDK SendMessage doing ours’ work (the same body and CloudEvents attributes)'] / publish.medians['AWS SDK SendMessage'] },
      { name: 'sqs-consume-vs-aws-sdk', value: consume.medians.ours / consume.medians['AWS SDK receive 10, DeleteMessageBatch'], target: 0.9 },
    ],
  };
}
