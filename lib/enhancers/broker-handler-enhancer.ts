import { HttpException, type ArgumentsHost } from '@nestjs/common';
import { EXCEPTION_FILTERS_METADATA, GUARDS_METADATA, INTERCEPTORS_METADATA, ROUTE_ARGS_METADATA } from '@nestjs/common/constants';
import { ContextIdFactory, type ApplicationConfig, type ExternalContextCreator, type ParamsFactory } from '@nestjs/core';
import { Injector } from '@nestjs/core/injector/injector';
import type { ContextId, InstanceWrapper } from '@nestjs/core/injector/instance-wrapper';
import { REQUEST_CONTEXT_ID } from '@nestjs/core/router/request/request-constants';
import { BROKER_CONTEXT_TYPE, BROKER_PARAM_CONTEXT, BROKER_PARAM_MESSAGE } from '../constants';
import { describeError, NonRetryableError } from '../errors';
import { observableResult } from '../support/observable-result';
import type { BrokerContext, BrokerMessageHandler } from '../interfaces/message-broker.interface';

/** A handler method, as a metadata target: its decorators keep their metadata on the function. */
type Method = (...args: never[]) => unknown;
type CanActivateFn = (args: unknown[]) => Promise<void>;
type ProxiedFn = (...args: unknown[]) => Promise<unknown>;
/** Nest's ExternalErrorProxy (not exported by @nestjs/core's public API): runs the filters around `target`. */
interface ErrorProxy {
  createProxy(target: ProxiedFn, exceptionsHandler: unknown, type: string): ProxiedFn;
}
/** Nest's GuardsContextCreator, as far as the dead-letter creator changes it. */
interface GuardsContextCreatorLike {
  getGlobalMetadata(...args: unknown[]): unknown[];
}
/** The creator's private parts this class wraps; absent in another Nest version, then left as they are. */
interface CreatorInternals {
  externalErrorProxy?: ErrorProxy;
  guardsContextCreator?: GuardsContextCreatorLike;
}

/** What a guard or a pipe refused, recorded per delivery (its BrokerContext) until the call settles. */
interface Refusal {
  reason: 'guard' | 'validation';
  error: unknown;
}

/**
 * What a request-scoped provider gets for Nest's `REQUEST` token (`@Inject(REQUEST)`) while it
 * serves an `@OnBrokerEvent` handler: the message and its BrokerContext, one object per delivery.
 */
export interface BrokerRequest<T = unknown> {
  message: T;
  context: BrokerContext;
}

/** How `enhance` runs a handler: its provider's wrapper (for request-scoped enhancers) and whether it consumes dead letters. */
export interface EnhanceOptions {
  /** The provider's (or controller's) InstanceWrapper, from DiscoveryService. Without it, request-scoped enhancers cannot be resolved. */
  wrapper?: InstanceWrapper;
  /** A dead-letter consumer (`deadLetter: true`): the application's global guards do not apply to it. */
  deadLetter?: boolean;
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
export function brokerArgumentsOf<T = unknown>(host: ArgumentsHost): BrokerRequest<T> | undefined {
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
  /** The NonRetryableError each delivery failed with before the filters saw it, so a filter's answer cannot turn it into a retry. */
  private readonly nonRetryables = new WeakMap<object, NonRetryableError>();
  /**
   * The application's ExternalContextCreator with its guards and pipes functions wrapped, so a
   * refusal is known as one. Made on top of it (its prototype) rather than as a new one: the
   * creator's context creators hold the container and the application's config.
   */
  private readonly creator: ExternalContextCreator;
  /** The same without the application's global guards, for dead-letter consumers (see `enhance`). */
  private readonly deadLetterCreator: ExternalContextCreator;
  /** Loads request-scoped and transient enhancers (and a provider they make request-scoped) per delivery, as Nest's ListenersController does. */
  private injector?: Injector;

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
    // An interceptor that completes without a value (EMPTY: a duplicate skipped) has handled the
    // message; Nest's lastValueFrom without a default would fail it with an EmptyError.
    creator.transformToResult = (result: unknown) => Promise.resolve(observableResult(result));
    const errorProxy = (base as unknown as CreatorInternals).externalErrorProxy;
    if (errorProxy && typeof errorProxy.createProxy === 'function') {
      // Before the filters see an error: a NonRetryableError is kept, so a filter that answers
      // with another error (BaseRpcExceptionFilter's 'Internal server error') does not retry it.
      (creator as unknown as CreatorInternals).externalErrorProxy = {
        createProxy: (target: ProxiedFn, exceptionsHandler: unknown, type: string) =>
          errorProxy.createProxy(
            async (...args: unknown[]) => {
              try {
                return await target(...args);
              } catch (error) {
                const ctx = args[1];
                if (error instanceof NonRetryableError && typeof ctx === 'object' && ctx !== null) this.nonRetryables.set(ctx, error);
                throw error;
              }
            },
            exceptionsHandler,
            type,
          ),
      };
    }
    this.creator = creator;
    this.deadLetterCreator = withoutGlobalGuards(creator, base);
  }

  /**
   * Whether anything would run around the method: a guard, an interceptor or a filter (on the
   * method, its class or the application), or a parameter decorator (only these get pipes); or
   * its provider is request-scoped because of an enhancer. When nothing does, the explorer keeps
   * its direct call, which costs nothing per message.
   */
  isEnhanced(instance: object, methodName: string, method: Method, options: EnhanceOptions = {}): boolean {
    if (options.wrapper && !options.wrapper.isDependencyTreeStatic()) return true;
    const classRef = instance.constructor;
    for (const key of [GUARDS_METADATA, INTERCEPTORS_METADATA, EXCEPTION_FILTERS_METADATA]) {
      if (isNonEmpty(Reflect.getMetadata(key, classRef)) || isNonEmpty(Reflect.getMetadata(key, method))) return true;
    }
    const params: unknown = Reflect.getMetadata(ROUTE_ARGS_METADATA, classRef, methodName);
    if (typeof params === 'object' && params !== null && Object.keys(params).length > 0) return true;
    return this.hasGlobalEnhancers(options.deadLetter === true);
  }

  /**
   * The handler the broker calls: the method with its enhancers, `(message, ctx)` as its
   * arguments. The method is looked up on the instance at each call, so a spy put on it after
   * bootstrap is called.
   *
   * With a request-scoped or transient enhancer (global, or of the method or its class, which
   * makes the provider request-scoped as for a Nest controller), each delivery gets its own
   * context, as @nestjs/microservices gives each message: a context id, `REQUEST` bound to a
   * BrokerRequest, the scoped instances loaded, and the pipeline made for that context. Otherwise
   * the pipeline is made once, here.
   */
  enhance(instance: object, methodName: string, method: Method, options: EnhanceOptions = {}): BrokerMessageHandler {
    // Nest reads the method's own enhancers (and a guard's Reflector its metadata) from the
    // function it is given: this stand-in, with the method's name, carries a copy of them. Nest
    // calls it on the instance it was given (a per-delivery one for a request-scoped provider).
    const callback = {
      [methodName](this: Record<string, (...args: unknown[]) => unknown>, ...args: unknown[]): unknown {
        return this[methodName](...args);
      },
    }[methodName];
    for (const key of Reflect.getOwnMetadataKeys(method)) Reflect.defineMetadata(key, Reflect.getOwnMetadata(key, method), callback);
    const deadLetter = options.deadLetter === true;
    const creator = deadLetter ? this.deadLetterCreator : this.creator;
    const create = (target: object, contextId?: ContextId, inquirerId?: string) =>
      creator.create(
        target,
        callback,
        methodName,
        ROUTE_ARGS_METADATA,
        brokerParamsFactory,
        contextId,
        inquirerId,
        // Without a filter bound, Nest's fallback would only log each error before rethrowing it; the runner logs it already.
        { guards: true, interceptors: true, filters: this.hasFilters(instance, method) },
        BROKER_CONTEXT_TYPE,
      ) as (message: unknown, ctx: BrokerContext) => Promise<unknown>;
    const wrapper = options.wrapper;
    const scopedGlobals = this.scopedGlobalEnhancers(deadLetter);
    let enhanced: (message: unknown, ctx: BrokerContext) => Promise<unknown>;
    if (wrapper && (!wrapper.isDependencyTreeStatic() || scopedGlobals.length > 0)) {
      enhanced = this.perDelivery(instance, wrapper, scopedGlobals, create);
    } else {
      enhanced = create(instance);
    }
    return async (message: unknown, ctx: BrokerContext): Promise<void> => {
      try {
        // What a filter returned: an observable (an RPC-style filter's throwError) is its answer too.
        await observableResult(await enhanced(message, ctx));
        this.nonRetryables.delete(ctx);
      } catch (error) {
        const refusal = this.refusals.get(ctx);
        const own = this.nonRetryables.get(ctx);
        this.nonRetryables.delete(ctx);
        if (refusal) {
          this.refusals.delete(ctx);
          const by = refusal.reason === 'guard' ? 'a guard' : 'a pipe';
          throw new NonRetryableError(`refused by ${by}: ${describeRefusal(refusal.error)}`, { cause: refusal.error, reason: refusal.reason });
        }
        // A filter replaced the handler's NonRetryableError (with an RPC error object, say): the handler's word stands.
        throw own ?? error;
      }
    };
  }

  /**
   * The pipeline made per delivery, for request-scoped and transient enhancers: what
   * ListenersController does for a request-scoped @EventPattern handler.
   */
  private perDelivery(
    staticInstance: object,
    wrapper: InstanceWrapper,
    scopedGlobals: InstanceWrapper[],
    create: (target: object, contextId: ContextId, inquirerId: string) => (message: unknown, ctx: BrokerContext) => Promise<unknown>,
  ): (message: unknown, ctx: BrokerContext) => Promise<unknown> {
    const injector = (this.injector ??= new Injector());
    const host = wrapper.host;
    if (!host) throw new TypeError(`${String(wrapper.name)} has no module: its request-scoped enhancers cannot be resolved`);
    const collection = host.controllers.has(wrapper.token) ? host.controllers : host.providers;
    // A provider made request-scoped by an enhancer has no static instance (Nest never ran its
    // constructor): one per delivery, as for a controller. Otherwise the static one serves.
    const perContextInstance = !wrapper.isDependencyTreeStatic();
    const durable = wrapper.isDependencyTreeDurable();
    return async (message, ctx) => {
      const contextId = this.registerRequest({ message, context: ctx }, durable);
      const instance = perContextInstance ? await injector.loadPerContext(wrapper.instance as object, host, collection, contextId, wrapper) : staticInstance;
      // The global ones are no provider's dependency: loaded for this context, with the handler's provider as their inquirer.
      await Promise.all(scopedGlobals.map((enhancer) => injector.loadInjectable(enhancer, enhancer.host ?? host, contextId, wrapper)));
      return create(instance, contextId, wrapper.id)(message, ctx);
    };
  }

  /** A context id for one delivery, with `REQUEST` bound to its BrokerRequest (a durable tree gets the strategy's payload, as in Nest). */
  private registerRequest(request: BrokerRequest, durable: boolean): ContextId {
    const contextId = ContextIdFactory.getByRequest(request);
    if (!(REQUEST_CONTEXT_ID in request)) {
      Object.defineProperty(request, REQUEST_CONTEXT_ID, { value: contextId, enumerable: false, writable: false, configurable: false });
      const payload: unknown = contextId.payload;
      this.base.registerRequestProvider(durable ? payload : Object.assign(request, payload), contextId);
    }
    return contextId;
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
  private hasGlobalEnhancers(deadLetter: boolean): boolean {
    const config = this.applicationConfig();
    if (!config) return true;
    return (
      (!deadLetter && (config.getGlobalGuards().length > 0 || config.getGlobalRequestGuards().length > 0)) ||
      config.getGlobalInterceptors().length > 0 ||
      config.getGlobalRequestInterceptors().length > 0 ||
      config.getGlobalFilters().length > 0 ||
      config.getGlobalRequestFilters().length > 0 ||
      // A global pipe applies only to decorated parameters, which isEnhanced finds; a scoped one needs a context.
      config.getGlobalRequestPipes().length > 0
    );
  }

  /** The application's request-scoped and transient global enhancers (APP_GUARD, ... with a scope); their instances exist per context only. */
  private scopedGlobalEnhancers(deadLetter: boolean): InstanceWrapper[] {
    const config = this.applicationConfig();
    if (!config) return [];
    return [
      ...(deadLetter ? [] : config.getGlobalRequestGuards()),
      ...config.getGlobalRequestInterceptors(),
      ...config.getGlobalRequestPipes(),
      ...config.getGlobalRequestFilters(),
    ] as InstanceWrapper[];
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

/**
 * `creator` for dead-letter consumers: the application's global guards left out. A dead-letter
 * consumer reads what already failed, including what those guards refused; refused again there,
 * each dead letter would be put back and come round for ever.
 */
function withoutGlobalGuards(creator: ExternalContextCreator, base: ExternalContextCreator): ExternalContextCreator {
  const guards = (base as unknown as CreatorInternals).guardsContextCreator;
  if (!guards || typeof guards.getGlobalMetadata !== 'function') return creator;
  const derived = Object.create(creator) as ExternalContextCreator;
  const localGuards = Object.create(guards) as GuardsContextCreatorLike;
  localGuards.getGlobalMetadata = () => [];
  (derived as unknown as CreatorInternals).guardsContextCreator = localGuards;
  return derived;
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
