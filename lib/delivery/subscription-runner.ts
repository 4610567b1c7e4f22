import type { Logger } from '@nestjs/common';
import type { AdapterConsumer, BrokerAdapter, InboundDelivery } from '../adapters/broker-adapter';
import { DEAD_LETTER_HEADERS } from '../constants';
import { describeError, NonRetryableError } from '../errors';
import type { RetryPolicy } from '../interfaces/broker-options.interface';
import type { StandardSchemaV1 } from '../interfaces/standard-schema.interface';
import type { BrokerContext, BrokerMessageHandler } from '../interfaces/message-broker.interface';
import type { Route } from '../routing/route-resolver';
import { deliveryParts, type DeliveryParts } from './adapter-parts';
import { deadLetterHeaders, type DeadLetterReason } from './dead-letters';
import { decodeInbound, outboundOf, undecoded, type DecodedMessage } from './message-codec';
import { backoffDelayMs } from './retry';

/** Pause before a message that could not be settled goes back, and before a failed dead letter is put back. */
const SETTLE_FAILURE_PAUSE_MS = 1000;

export interface SubscriptionSpec {
  route: Route;
  group: string;
  concurrency: number;
  retry: Required<RetryPolicy>;
  /** 'dead-letters': consume the group's dead letters instead of its messages. */
  source: 'messages' | 'dead-letters';
  handler: BrokerMessageHandler;
}

/**
 * Runs one subscription: reads each delivery (any producer's JSON), calls the handler, and only after it resolves
 * acks; on failure retries with backoff, then dead-letters. Written once for every adapter.
 */
export class SubscriptionRunner {
  private consumer?: AdapterConsumer;
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  private stopping?: Promise<void>;
  /** Set once the runner gave up its deliveries: nothing may be acked or re-sent after it. */
  private detached = false;
  private readonly pauses = new Set<{ timer: NodeJS.Timeout; wake: () => void }>();
  /** The adapter's own group sender and dead-letter store, or their emulation over its core. */
  private readonly parts: DeliveryParts;

  constructor(
    private readonly spec: SubscriptionSpec,
    adapter: BrokerAdapter,
    private readonly logger: Logger,
  ) {
    this.parts = deliveryParts(adapter);
  }

  async start(): Promise<void> {
    const { route, group, concurrency, source } = this.spec;
    this.consumer = await this.parts.consume(route.topic, { group, concurrency, source }, this.onDelivery);
  }

  /**
   * Stops intake, waits for in-flight handlers up to `timeoutMs`, then detaches: whatever is still
   * running then is never acked, so the broker delivers it again.
   */
  stop(timeoutMs: number): Promise<void> {
    this.stopping ??= this.drain(timeoutMs);
    return this.stopping;
  }

  private async drain(timeoutMs: number): Promise<void> {
    const consumer = this.consumer;
    if (!consumer) return;
    await consumer.stop().catch((error: unknown) => this.logger.warn(`${this.name}: stopping intake failed: ${describeError(error)}`));
    for (const pause of this.pauses) pause.wake();
    if (!(await this.idle(timeoutMs))) {
      this.logger.warn(
        `${this.name}: ${this.inFlight} handler(s) still running after ${timeoutMs} ms; their messages are not acked and will be delivered again`,
      );
    }
    this.detached = true;
    await consumer.close().catch((error: unknown) => this.logger.warn(`${this.name}: closing the consumer failed: ${describeError(error)}`));
  }

  private get name(): string {
    return `${this.spec.route.event} [${this.spec.route.env}] group ${this.spec.group}`;
  }

  /**
   * Settles one delivery. Written without async frames on the path of a handler that returns
   * without a promise (one frame and promise less per message than `await` at each level).
   */
  private readonly onDelivery = (delivery: InboundDelivery): Promise<void> => {
    this.inFlight++;
    let settling: Promise<void>;
    try {
      settling = this.spec.source === 'messages' ? this.handleMessage(delivery) : this.handleDeadLetter(delivery);
    } catch (error) {
      return this.unsettled(delivery, error);
    }
    // Promise.resolve hands a native promise back as it is; it also covers an adapter whose ack returned nothing.
    return Promise.resolve(settling).then(this.settledOne, (error: unknown) => this.unsettled(delivery, error));
  };

  private readonly settledOne = (): void => {
    if (--this.inFlight === 0 && this.idleWaiters.length > 0) {
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
  };

  /**
   * Neither acked nor re-sent (the broker refused the retry, say): give it back after a pause, so
   * the broker delivers it again and the slot is not held for ever.
   */
  private async unsettled(delivery: InboundDelivery, error: unknown): Promise<void> {
    try {
      this.logger.error(`${this.name}: could not settle a message, it will be delivered again: ${describeError(error)}`);
      await this.pause(SETTLE_FAILURE_PAUSE_MS);
      if (!this.detached) await delivery.release().catch(() => undefined);
    } finally {
      this.settledOne();
    }
  }

  private handleMessage(delivery: InboundDelivery): Promise<void> {
    let decoded: DecodedMessage;
    try {
      decoded = decodeInbound(delivery);
    } catch (error) {
      const poison = undecoded(delivery);
      return this.deadLetter(delivery, poison, error, delivery.attempt ?? poison.attempt, 'poison');
    }
    const attempt = delivery.attempt ?? decoded.attempt;
    if (this.spec.route.schema) return this.validateThenHandle(delivery, decoded, attempt, this.spec.route.schema);
    return this.invokeHandler(delivery, decoded, attempt, decoded.message);
  }

  private async validateThenHandle(delivery: InboundDelivery, decoded: DecodedMessage, attempt: number, schema: StandardSchemaV1): Promise<void> {
    let result: Awaited<ReturnType<StandardSchemaV1['~standard']['validate']>>;
    try {
      result = await schema['~standard'].validate(decoded.message);
    } catch (error) {
      return this.deadLetter(delivery, decoded, error, attempt, 'schema');
    }
    if (result.issues) {
      const issues = result.issues.map((issue) => issue.message).join('; ');
      return this.deadLetter(delivery, decoded, new Error(`message fails its schema: ${issues}`), attempt, 'schema');
    }
    return this.invokeHandler(delivery, decoded, attempt, result.value);
  }

  private invokeHandler(delivery: InboundDelivery, decoded: DecodedMessage, attempt: number, message: unknown): Promise<void> {
    let result: unknown;
    try {
      result = this.spec.handler(message, this.context(decoded, attempt, delivery));
    } catch (error) {
      return this.handlerFailed(delivery, decoded, attempt, error);
    }
    if (isThenable(result)) return this.awaitHandler(result, delivery, decoded, attempt);
    return this.ack(delivery);
  }

  private async awaitHandler(result: PromiseLike<unknown>, delivery: InboundDelivery, decoded: DecodedMessage, attempt: number): Promise<void> {
    try {
      await result;
    } catch (error) {
      return this.handlerFailed(delivery, decoded, attempt, error);
    }
    return this.ack(delivery);
  }

  private ack(delivery: InboundDelivery): Promise<void> {
    return this.detached ? Promise.resolve() : delivery.ack();
  }

  private handlerFailed(delivery: InboundDelivery, decoded: DecodedMessage, attempt: number, error: unknown): Promise<void> {
    // A message that can never succeed (refused by a guard or a pipe, or said so by its handler): no retries.
    if (error instanceof NonRetryableError) return this.deadLetter(delivery, decoded, error, attempt, error.reason);
    if (attempt >= this.spec.retry.maxAttempts) return this.deadLetter(delivery, decoded, error, attempt, 'max-attempts');
    return this.retry(delivery, decoded, attempt, error);
  }

  private async retry(delivery: InboundDelivery, decoded: DecodedMessage, attempt: number, error: unknown): Promise<void> {
    const delayMs = backoffDelayMs(this.spec.retry, attempt);
    if (this.detached) return this.abandoned(decoded.id, error);
    this.logger.warn(`${this.name}: attempt ${attempt} of message ${decoded.id} failed (${describeError(error)}); retry in ${delayMs} ms`);
    if (delivery.retryLater && delivery.attempt !== undefined) return delivery.retryLater(delayMs);
    // The same bytes to this group only, with the next attempt in the metadata, then acked: a
    // crash in between duplicates, it never loses.
    await this.parts.sendToGroup(this.spec.route.topic, this.spec.group, outboundOf(decoded, this.spec.route, attempt + 1, decoded.headers, delayMs));
    await delivery.ack();
  }

  private async deadLetter(
    delivery: InboundDelivery,
    decoded: DecodedMessage,
    error: unknown,
    attempt: number,
    reason: DeadLetterReason,
  ): Promise<void> {
    if (this.detached) return this.abandoned(decoded.id, error);
    const headers = deadLetterHeaders(error, attempt, reason);
    this.logger.error(
      `${this.name}: message ${decoded.id} dead-lettered after ${attempt} attempt(s) (${reason}): ${headers[DEAD_LETTER_HEADERS.error]}`,
    );
    // The bytes as they came (a poison body too), the reason in headers.
    // With the delivery's id of its stored copy: an adapter that can deduplicate stores it once across a crash before the ack.
    await this.parts.sendToDeadLetters(this.spec.route.topic, this.spec.group, {
      ...outboundOf(decoded, this.spec.route, attempt, { ...decoded.headers, ...headers }),
      fromDelivery: delivery.metadata.deliveryId,
    });
    await delivery.ack();
  }

  /**
   * A dead-letter subscription's handler: a message that is not JSON is given as its text.
   * On failure the dead letter is kept (put back at the end after a pause), never dropped.
   */
  private async handleDeadLetter(delivery: InboundDelivery): Promise<void> {
    let decoded: DecodedMessage;
    try {
      decoded = decodeInbound(delivery);
    } catch {
      decoded = undecoded(delivery);
    }
    const attempt = Number(delivery.headers[DEAD_LETTER_HEADERS.attempts] ?? decoded.attempt);
    try {
      await this.spec.handler(decoded.message, this.context(decoded, attempt, delivery));
    } catch (error) {
      this.logger.warn(`${this.name}: dead-letter handler failed (${describeError(error)}); the dead letter is kept`);
      await this.pause(Math.max(SETTLE_FAILURE_PAUSE_MS, backoffDelayMs(this.spec.retry, 1)));
      if (this.detached) return;
      const headers = { ...decoded.headers, [DEAD_LETTER_HEADERS.error]: describeError(error).slice(0, 1000) };
      await this.parts.sendToDeadLetters(this.spec.route.topic, this.spec.group, outboundOf(decoded, this.spec.route, attempt, headers));
    }
    if (!this.detached) await delivery.ack();
  }

  /** A handler that failed after the drain gave up on it: nothing is sent, the broker delivers it again. */
  private abandoned(messageId: string, error: unknown): void {
    this.logger.warn(`${this.name}: message ${messageId} failed after shutdown gave up on it (${describeError(error)}); it will be delivered again`);
  }

  private context(decoded: DecodedMessage, attempt: number, delivery: InboundDelivery): BrokerContext {
    return {
      messageId: decoded.id,
      event: this.spec.route.event,
      env: this.spec.route.env,
      product: this.spec.route.product,
      attempt,
      headers: decoded.headers,
      correlationId: decoded.correlationId,
      key: decoded.key,
      publishedAt: new Date(decoded.publishedAt),
      raw: delivery.raw,
    };
  }

  private idle(timeoutMs: number): Promise<boolean> {
    if (this.inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** A wait that shutdown cuts short. */
  private pause(ms: number): Promise<void> {
    if (this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const pause = {
        timer: setTimeout(() => pause.wake(), ms),
        wake: () => {
          clearTimeout(pause.timer);
          this.pauses.delete(pause);
          resolve();
        },
      };
      this.pauses.add(pause);
    });
  }
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
}
