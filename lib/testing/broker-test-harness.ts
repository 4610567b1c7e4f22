import type { DeadLetterReason } from '../delivery/dead-letters';
import type { BrokerContext } from '../interfaces/message-broker.interface';

/** One message the application published (and the broker accepted), as `BrokerTestHarness.published()` lists it. */
export interface PublishedMessage<T = unknown> {
  /** `brokerTag:topicTag`, as given to `publish`. */
  readonly event: string;
  /** The env slug given to `publish`. */
  readonly env: string;
  readonly messageId: string;
  /** The message as consumers receive it: what it was when `publish` was called, through JSON. */
  readonly message: T;
  readonly headers: Readonly<Record<string, string>>;
  readonly key?: string;
  readonly correlationId?: string;
  readonly delayMs?: number;
  /** When the broker accepted it. */
  readonly acceptedAt: Date;
}

/** One call of a handler (an `@OnBrokerEvent` method or a `subscribe` callback) and how it ended. */
export interface HandledMessage<T = unknown> {
  readonly event: string;
  readonly env: string;
  /** The consumer group of the subscription. */
  readonly group: string;
  /** True for a handler of dead letters (`deadLetter: true`). */
  readonly deadLetter: boolean;
  readonly messageId: string;
  /** 1 on the first delivery (for a dead-letter handler: the attempts the message had). */
  readonly attempt: number;
  /** The message as the handler got it. */
  readonly message: T;
  /** The context the handler got. */
  readonly context: BrokerContext;
  /** `succeeded`: the handler returned (or its promise resolved); `failed`: it threw (or its promise rejected). */
  readonly outcome: 'succeeded' | 'failed';
  /** What the handler threw, when it failed. */
  readonly error?: unknown;
  /**
   * No retry follows a failure of this attempt: it was the last the retry policy allows, or the
   * error was a NonRetryableError (a guard's or a pipe's refusal among them), so the message goes to
   * the dead letters; or the handler is one of dead letters (the message goes back there).
   */
  readonly lastAttempt: boolean;
  readonly durationMs: number;
}

/** One dead letter, read without removing it. */
export interface DeadLetter<T = unknown> {
  readonly messageId: string;
  /** The message; for a body that was not JSON (a poison message), its text. */
  readonly message: T;
  /** The message's headers, the dead-letter headers (`DEAD_LETTER_HEADERS`) among them. */
  readonly headers: Readonly<Record<string, string>>;
  /** The last error, as the dead-letter header `x-ductape-error` carries it (`Error: invoice service down`). */
  readonly error: string;
  /** Attempts made before it was dead-lettered. */
  readonly attempts: number;
  /**
   * Why: the retries were spent ('max-attempts'), the body was not a message ('poison'), it failed
   * its topic's schema ('schema'), or, at its first failure, a guard ('guard') or a pipe
   * ('validation') refused it, or its handler threw a NonRetryableError ('non-retryable').
   */
  readonly reason: DeadLetterReason;
  readonly failedAt: Date;
  readonly publishedAt: Date;
  readonly key?: string;
  readonly correlationId?: string;
}

/** Narrows `published()`, `handled()` and `deadLetters()` to another env than the module's. */
export interface EnvFilter {
  /** Default: every env for `published()` and `handled()`; the module's env for `deadLetters()`. */
  env?: string;
}

export interface WaitForPublishedOptions<T = unknown> {
  /** Default: the module's env. */
  env?: string;
  messageId?: string;
  /** Also required of the message. */
  where?: (message: T, published: PublishedMessage<T>) => boolean;
  /** Default 4000 (below Jest's default test timeout, so that the harness's own message is the one you see). */
  timeoutMs?: number;
}

export interface WaitForHandledOptions<T = unknown> {
  /** Default: the module's env. */
  env?: string;
  /** Only this consumer group's handler (default: any group's). */
  group?: string;
  messageId?: string;
  /** Also required of the message. */
  where?: (message: T, handled: HandledMessage<T>) => boolean;
  /** Handlers of dead letters (`deadLetter: true`) instead of those of messages (default false). */
  deadLetter?: boolean;
  /**
   * `succeeded` (default): resolves once a handler returned for a matching message; rejects at once
   * when a matching message failed its last attempt in every group that could still handle it.
   * `failed`: resolves on a matching failed attempt (see `lastAttempt`).
   */
  outcome?: 'succeeded' | 'failed';
  /** Default 4000 (below Jest's default test timeout, so that the harness's own message is the one you see). */
  timeoutMs?: number;
}

/**
 * What a test sees of the brokers of an application built with `useInMemoryBrokers`: get it with
 * `getBrokerTestHarness(app)`. Every list holds what happened since the application started (or
 * since `reset()`); every `waitFor…` also matches what happened before it was called.
 */
export interface BrokerTestHarness {
  /** The env slug and product of the module. */
  readonly env: string;
  readonly product: string;

  /** What the application published, in the order of its `publish` calls; only what the broker accepted. */
  published<T = unknown>(event?: string, filter?: EnvFilter): PublishedMessage<T>[];

  /** Resolves with the first matching published message, past or future; rejects after `timeoutMs`. */
  waitForPublished<T = unknown>(event: string, options?: WaitForPublishedOptions<T>): Promise<PublishedMessage<T>>;

  /** Every handler call, in the order they ended. */
  handled<T = unknown>(event?: string, filter?: EnvFilter): HandledMessage<T>[];

  /**
   * Resolves with the first matching handler call that ended as `outcome` (default `succeeded`),
   * past or future. Rejects after `timeoutMs` with what was handled instead, or at once when a
   * matching message has failed for good (see `WaitForHandledOptions.outcome`).
   */
  waitForHandled<T = unknown>(event: string, options?: WaitForHandledOptions<T>): Promise<HandledMessage<T>>;

  /**
   * The dead letters of one consumer group, oldest first, without removing them (a handler of
   * those dead letters, if the application has one, takes them as they come).
   */
  deadLetters<T = unknown>(event: string, group: string, filter?: EnvFilter): DeadLetter<T>[];

  /**
   * Forgets what was published and handled, and empties the dead letters of every group the
   * application subscribed. Call it between tests that share one application, once its handlers are idle.
   */
  reset(): void;
}
