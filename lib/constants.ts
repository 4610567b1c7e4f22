/** Injection token of the validated module options. */
export const DUCTAPE_BROKER_OPTIONS = Symbol('DUCTAPE_BROKER_OPTIONS');
/** Metadata key under which @OnBrokerEvent stores its entries on a method. */
export const ON_BROKER_EVENT_METADATA = 'ductape:on-broker-event';

export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 10_000;
export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024;
export const DEFAULT_CONCURRENCY = 1;
/** Longest delay a Node.js timer honours (2^31-1 ms, about 24.8 days); longer ones fire at once. */
export const MAX_TIMER_MS = 2_147_483_647;

/** Names accepted for broker tags, topic tags, env slugs, products and physical topic names. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

/** Headers the delivery layer adds to a dead letter. */
export const DEAD_LETTER_HEADERS = {
  error: 'x-ductape-error',
  attempts: 'x-ductape-attempts',
  failedAt: 'x-ductape-failed-at',
  reason: 'x-ductape-dead-letter-reason',
} as const;

/** What `host.getType()` returns in a guard, interceptor or filter around an @OnBrokerEvent handler. */
export const BROKER_CONTEXT_TYPE = 'ductape-broker';
export type BrokerContextType = typeof BROKER_CONTEXT_TYPE;

/**
 * Parameter types of @BrokerMessage and @BrokerCtx, kept under Nest's own `__routeArguments__`
 * metadata key. They are the numbers of @nestjs/microservices' `@Payload()` and `@Ctx()`
 * (RpcParamtype.PAYLOAD and CONTEXT), so each pair works on the other's handlers, and pipes treat
 * the message as a body ('body' is what ValidationPipe validates; the context is 'custom').
 */
export const BROKER_PARAM_MESSAGE = 3;
export const BROKER_PARAM_CONTEXT = 6;
