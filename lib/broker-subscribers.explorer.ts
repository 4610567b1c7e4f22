import { Inject, Injectable, Scope, type OnApplicationBootstrap } from '@nestjs/common';
import { DiscoveryService, ExternalContextCreator, MetadataScanner } from '@nestjs/core';
import type { InstanceWrapper } from '@nestjs/core/injector/instance-wrapper';
import { BrokerHandlerInvoker } from './broker-handler-invoker';
import { BrokerMetadataAccessor } from './broker-metadata.accessor';
import { DUCTAPE_BROKER_OPTIONS } from './constants';
import { BrokerHandlerEnhancer } from './enhancers/broker-handler-enhancer';
import { BrokerError } from './errors';
import type { BrokerModuleOptions } from './interfaces/broker-options.interface';
import type { BrokerContext, BrokerMessageHandler, SubscribeRequest } from './interfaces/message-broker.interface';
import { MessageBrokerService } from './message-broker.service';

/**
 * Finds every @OnBrokerEvent method on providers and controllers and subscribes it during
 * application bootstrap, so all consumers run by the time `app.init()` resolves. A method with
 * guards, interceptors, filters or parameter decorators runs through Nest's ExternalContextCreator
 * (lib/enhancers); the handlerInvoker wraps whichever handler results.
 */
@Injectable()
export class BrokerSubscribersExplorer implements OnApplicationBootstrap {
  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly accessor: BrokerMetadataAccessor,
    private readonly broker: MessageBrokerService,
    @Inject(DUCTAPE_BROKER_OPTIONS) private readonly options: BrokerModuleOptions<string>,
    private readonly invoker: BrokerHandlerInvoker,
    private readonly contextCreator: ExternalContextCreator,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    // Find and check every handler first, so a misconfigured one fails startup before any consumer starts.
    const requests = this.discoverHandlers();
    // A publish-only replica: the handlers are checked, none is subscribed.
    if (this.options.registerHandlers === false) return;
    // Subscribe all at once; on an error, detach those that started and fail startup with its code.
    const results = await Promise.allSettled(requests.map((request) => this.broker.subscribe(request)));
    const failure = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    if (failure) {
      const started = results.filter((result) => result.status === 'fulfilled').map((result) => result.value);
      await Promise.allSettled(started.map((subscription) => subscription.unsubscribe()));
      throw failure.reason;
    }
  }

  private discoverHandlers(): SubscribeRequest[] {
    const requests: SubscribeRequest[] = [];
    const enhancer = new BrokerHandlerEnhancer(this.contextCreator);
    for (const wrapper of [...this.discovery.getProviders(), ...this.discovery.getControllers()]) {
      const instance: unknown = wrapper.instance;
      if (wrapper.isAlias || typeof instance !== 'object' || instance === null) continue;
      const prototype = Object.getPrototypeOf(instance) as object | null;
      if (!prototype) continue;
      for (const methodName of this.scanner.getAllMethodNames(prototype)) {
        const entries = this.accessor.getBrokerEventHandlerMetadata(prototype, methodName);
        if (!entries) continue;
        this.assertStatic(wrapper, methodName);
        // The instance's own class: a factory provider's metatype is the factory function.
        const className = (prototype.constructor as { name?: string } | undefined)?.name || String(wrapper.name);
        const target = instance as Record<string, (...args: unknown[]) => unknown>;
        // With guards, interceptors, filters or parameter decorators, through Nest's pipeline; else
        // the direct call, which adds nothing per message. Either looks the method up at each
        // call, so a method replaced after bootstrap (a test spy) is the one called. A dead-letter
        // consumer gets its own: the global guards do not apply to it.
        const handlers = new Map<boolean, BrokerMessageHandler>();
        const handlerFor = (deadLetter: boolean): BrokerMessageHandler => {
          let handler = handlers.get(deadLetter);
          if (!handler) {
            const options = { wrapper, deadLetter };
            handler = enhancer.isEnhanced(instance, methodName, target[methodName], options)
              ? enhancer.enhance(instance, methodName, target[methodName], options)
              : (message: unknown, ctx: BrokerContext) => target[methodName](message, ctx);
            handlers.set(deadLetter, handler);
          }
          return handler;
        };
        for (const { event, options } of entries) {
          if (options.deadLetter && options.group === undefined) {
            throw new BrokerError(
              'INVALID_SUBSCRIPTION',
              `@OnBrokerEvent('${event}', { deadLetter: true }) on ${className}.${methodName}: name the group whose dead letters it consumes (options.group)`,
            );
          }
          const env = options.env ?? this.options.env;
          const group = options.group ?? `${this.options.service ?? this.options.product}.${className}.${methodName}`;
          requests.push({
            env,
            event,
            product_tag: options.product ?? this.options.product,
            input: {
              callback: this.invoker.decorate(handlerFor(options.deadLetter === true), { event, env, group, className, methodName, deadLetter: options.deadLetter === true }),
              group,
              concurrency: options.concurrency,
              retry: options.retry,
              deadLetter: options.deadLetter,
            },
          });
        }
      }
    }
    return requests;
  }

  /**
   * A handler must live on one long-lived instance: a per-request or per-consumer one has none.
   * A provider that is request-scoped only because of a request-scoped or transient enhancer (on
   * one of its methods or its class) is run per delivery, as Nest runs such a controller.
   */
  private assertStatic(wrapper: InstanceWrapper, methodName: string): void {
    // A transient provider's tree may be static: it is refused first (one instance per consumer, none to subscribe).
    if (!wrapper.isTransient && wrapper.isDependencyTreeStatic()) return;
    const name = wrapper.name ? String(wrapper.name) : 'a provider';
    const scope = wrapper.isTransient ? 'transient' : wrapper.scope === Scope.REQUEST ? 'request-scoped' : undefined;
    const scopedDependency = scope ? undefined : [...(wrapper.getCtorMetadata() ?? []), ...(wrapper.getPropertiesMetadata() ?? []).map((property) => property.wrapper)].find(
      (dependency) => dependency && !dependency.isDependencyTreeStatic(),
    );
    if (!scope && !scopedDependency) return;
    const why = scope ? `the provider is ${scope}` : `the provider depends on ${String(scopedDependency?.name)}, which is request-scoped`;
    throw new BrokerError(
      'INVALID_SUBSCRIPTION',
      `@OnBrokerEvent on ${name}.${methodName}: ${why}; ` +
        'broker handlers must be on singleton (default-scoped) providers. Inject ModuleRef and resolve the scoped service inside the handler instead.',
    );
  }
}
