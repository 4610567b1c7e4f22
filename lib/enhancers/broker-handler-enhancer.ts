import { HttpException, type ArgumentsHost } from '@nestjs/common';
import { EXCEPTION_FILTERS_METADATA, GUARDS_METADATA, INTERCEPTORS_METADATA, ROUTE_ARGS_METADATA } from '@nestjs/common/constants';
import type { ApplicationConfig, ExternalContextCreator, ParamsFactory } from '@nestjs/core';
import { isObservable, lastValueFrom } from 'rxjs';
import { BROKER_CONTEXT_TYPE, BROKER_PARAM_CONTEXT, BROKER_PARAM_MESSAGE } from '../constants';
import { describeError, NonRetryableError } from '../errors';
import type { BrokerContext, BrokerMessageHandler } from '../interfaces/message-broker.interface';

/** A handler method, as a metadata target: its decorators keep their metadata on the function. */
type Method = (...args: never[]) => unknown;
type CanActivateFn = (args: unknown[]) => Promise<void>;

/** What a guard or a pipe refused, recorded per delivery (its BrokerContext) until the call settles. */
interface Refusal {
  reason: 'guard' | 'validation';
  error: unknown;
}

/** Gives @BrokerMessage(property?) and @BrokerCtx() their values from the handler's arguments `[message, ctx]`. */
const brokerParamsFactory: ParamsFactory = {
  exchangeKeyForValue(type: number, data: unknown, args: unknown[]): unknown {
    const [message, ctx] = args;
    if (type === BROKER_PARAM_MESSAGE) {
      if (typeof data !== 'string' || !data) return message;
      return typeof message === 'object' && message !== null ? (message as Record<string, unknown>)[data] : undefined;
    }
    return type === BROKER_PARAM_CONTEXT ? ctx : undefined;
  },
};

/**
 * The message and BrokerContext of a guard's, interceptor's or filter's host when it wraps an
 * `@OnBrokerEvent` handler (`host.getType() === 'ductape-broker'`); undefined for any other host.
 * The same as `host.switchToRpc().getData()` and `.getContext()`.
 */
export function brokerArgumentsOf<T = unknown>(host: ArgumentsHost): { message: T; context: BrokerContext } | undefined {
  if (host.getType<string>() !== BROKER_CONTEXT_TYPE) return undefined;
  return { message: host.getArgByIndex<T>(0), context: host.getArgByIndex<BrokerContext>(1) };
}

/**
 * Runs `@OnBrokerEvent` methods through Nest's ExternalContextCreator (context type
 * 'ductape-broker', arguments `[message, ctx]`), so guards, interceptors, pipes and filters of the
 * method, its class and the application apply. What a guard or a pipe refuses (see `refused`)
 * becomes a NonRetryableError (reason 'guard' or 'validation'): straight to the dead letters, as no
 * retry would change the answer.
 */
export class BrokerHandlerEnhancer {
  private readonly refusals = new WeakMap<object, Refusal>();
  /**
   * The application's ExternalContextCreator with its guards and pipes functions wrapped, so a
   * refusal is known as one. Made on top of it (its prototype) rather than as a new one: the
   * creator's context creators hold the container and the application's config.
   */
  private readonly creator: ExternalContextCreator;

  constructor(private readonly base: ExternalContextCreator) {
    const creator = Object.create(base) as ExternalContextCreator;
    creator.createGuardsFn = (guards, instance, callback, contextType) => {
      const canActivate = base.createGuardsFn(guards, instance, callback, contextType) as CanActivateFn | null;
      if (!canActivate) return null;
      return async (args: unknown[]) => {
        try {
          await canActivate(args);
        } catch (error) {
          this.refused(args[1], 'guard', error);
          throw error;
        }
      };
    };
    creator.createPipesFn = (pipes, paramsOptions) => {
      const applyPipes = base.createPipesFn(pipes, paramsOptions);
      if (!applyPipes) return null;
      return async (args: unknown[], ...params: unknown[]) => {
        try {
          await applyPipes(args, ...params);
        } catch (error) {
          this.refused(params[1], 'validation', error);
          throw error;
        }
      };
    };
    this.creator = creator;
  }

  /**
   * Whether anything would run around the method: a guard, an interceptor or a filter (on the
   * method, its class or the application), or a parameter decorator (only these get pipes). When
   * nothing does, the explorer keeps its direct call, which costs nothing per message.
   */
  isEnhanced(instance: object, methodName: string, method: Method): boolean {
    const classRef = instance.constructor;
    for (const key of [GUARDS_METADATA, INTERCEPTORS_METADATA, EXCEPTION_FILTERS_METADATA]) {
      if (isNonEmpty(Reflect.getMetadata(key, classRef)) || isNonEmpty(Reflect.getMetadata(key, method))) return true;
    }
    const params: unknown = Reflect.getMetadata(ROUTE_ARGS_METADATA, classRef, methodName);
    if (typeof params === 'object' && params !== null && Object.keys(params).length > 0) return true;
    return this.hasGlobalEnhancers();
  }

  /**
   * The handler the broker calls: the method with its enhancers, `(message, ctx)` as its
   * arguments. The method is looked up on the instance at each call, so a spy put on it after
   * bootstrap is called.
   */
  enhance(instance: object, methodName: string, method: Method): BrokerMessageHandler {
    const target = instance as Record<string, (...args: unknown[]) => unknown>;
    // Nest reads the method's own enhancers (and a guard's Reflector its metadata) from the
    // function it is given: this stand-in, with the method's name, carries a copy of them.
    const callback = {
      [methodName](...args: unknown[]): unknown {
        return target[methodName](...args);
      },
    }[methodName];
    for (const key of Reflect.getOwnMetadataKeys(method)) Reflect.defineMetadata(key, Reflect.getOwnMetadata(key, method), callback);
    const hasFilters = this.hasFilters(instance, method);
    const enhanced = this.creator.create(
      instance,
      callback,
      methodName,
      ROUTE_ARGS_METADATA,
      brokerParamsFactory,
      undefined,
      undefined,
      // Without a filter bound, Nest's fallback would only log each error before rethrowing it; the runner logs it already.
      { guards: true, interceptors: true, filters: hasFilters },
      BROKER_CONTEXT_TYPE,
    );
    return async (message: unknown, ctx: BrokerContext): Promise<void> => {
      try {
        const result: unknown = await enhanced(message, ctx);
        // What a filter returned: an observable (an RPC-style filter's throwError) is its answer too.
        if (isObservable(result)) await lastValueFrom(result, { defaultValue: undefined });
      } catch (error) {
        const refusal = this.refusals.get(ctx);
        if (!refusal) throw error;
        this.refusals.delete(ctx);
        const by = refusal.reason === 'guard' ? 'a guard' : 'a pipe';
        throw new NonRetryableError(`refused by ${by}: ${describeRefusal(refusal.error)}`, { cause: refusal.error, reason: refusal.reason });
      }
    };
  }

  /**
   * Records a refusal: what a guard or a pipe says no with (an HttpException, as Nest's own
   * "Forbidden resource" and ValidationPipe's BadRequestException; an RpcException or a
   * WsException; a NonRetryableError). Any other error (a lookup that failed, say) may pass on a
   * later attempt: it is retried like the handler's own.
   */
  private refused(ctx: unknown, reason: Refusal['reason'], error: unknown): void {
    if (typeof ctx === 'object' && ctx !== null && isRefusal(error)) this.refusals.set(ctx, { reason, error });
  }

  private hasFilters(instance: object, method: Method): boolean {
    if (isNonEmpty(Reflect.getMetadata(EXCEPTION_FILTERS_METADATA, instance.constructor))) return true;
    if (isNonEmpty(Reflect.getMetadata(EXCEPTION_FILTERS_METADATA, method))) return true;
    const config = this.applicationConfig();
    return !config || config.getGlobalFilters().length > 0 || config.getGlobalRequestFilters().length > 0;
  }

  /** Global guards, interceptors or filters (app.useGlobal*, APP_GUARD, ...); true when they cannot be known. */
  private hasGlobalEnhancers(): boolean {
    const config = this.applicationConfig();
    if (!config) return true;
    return (
      config.getGlobalGuards().length > 0 ||
      config.getGlobalRequestGuards().length > 0 ||
      config.getGlobalInterceptors().length > 0 ||
      config.getGlobalRequestInterceptors().length > 0 ||
      config.getGlobalFilters().length > 0 ||
      config.getGlobalRequestFilters().length > 0
    );
  }

  /**
   * The application's config, where the global enhancers are. Nest keeps it on the container the
   * creator was made from, which is not public: when it cannot be read, every handler takes the
   * enhanced path (slower, never wrong).
   */
  private applicationConfig(): ApplicationConfig | undefined {
    const container = (this.base as unknown as { container?: { applicationConfig?: ApplicationConfig } }).container;
    const config = container?.applicationConfig;
    return config && typeof config.getGlobalGuards === 'function' ? config : undefined;
  }
}

function isRefusal(error: unknown): boolean {
  if (error instanceof HttpException || error instanceof NonRetryableError) return true;
  // RpcException and WsException (of optional packages): both answer getError().
  return typeof error === 'object' && error !== null && typeof (error as { getError?: unknown }).getError === 'function';
}

function isNonEmpty(value: unknown): boolean {
  return Array.isArray(value) && value.length > 0;
}

/**
 * The error's text, with the details an HttpException keeps in its response (ValidationPipe's
 * BadRequestException says only "Bad Request Exception"; its response lists what failed).
 */
function describeRefusal(error: unknown): string {
  const text = describeError(error);
  const getResponse = (error as { getResponse?: unknown } | null)?.getResponse;
  if (typeof getResponse !== 'function') return text;
  let details: unknown;
  try {
    details = (getResponse as () => unknown).call(error);
  } catch {
    return text;
  }
  const message = typeof details === 'object' && details !== null ? (details as { message?: unknown }).message : undefined;
  const listed = Array.isArray(message) ? message.map(String).join('; ') : typeof message === 'string' ? message : undefined;
  return listed && !text.endsWith(listed) ? `${text} (${describeError(listed)})` : text;
}
