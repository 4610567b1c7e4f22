import { ConfigurableModuleBuilder, type ConfigurableModuleAsyncOptions, type ConfigurableModuleOptionsFactory, type Type } from '@nestjs/common';
import { BrokerHandlerInvoker } from './broker-handler-invoker';
import type { BrokerModuleOptions } from './interfaces/broker-options.interface';

export const {
  ConfigurableModuleClass: ConfigurableBrokerModule,
  // The raw options as given: internal. Providers inject the validated ones, DUCTAPE_BROKER_OPTIONS.
  MODULE_OPTIONS_TOKEN: BROKER_MODULE_OPTIONS,
} = new ConfigurableModuleBuilder<BrokerModuleOptions<string>>()
  .setClassMethodName('forRoot')
  // A class given to forRootAsync({ useClass }) says what it does: createBrokerOptions(), not create().
  .setFactoryMethodName('createBrokerOptions')
  .setExtras<BrokerModuleExtras>({ isGlobal: true }, (definition, extras) => ({
    ...definition,
    global: extras.isGlobal,
    providers: [...(definition.providers ?? []), ...(extras.handlerInvoker ? [{ provide: BrokerHandlerInvoker, useClass: extras.handlerInvoker }] : [])],
  }))
  .build();

/** What the module's extras add to its options: `isGlobal: false` scopes it to the importing module. */
export interface BrokerModuleExtras {
  /** Default true. */
  isGlobal?: boolean;
  /** A subclass of BrokerHandlerInvoker that wraps every `@OnBrokerEvent` handler (instrumentation). */
  handlerInvoker?: Type<BrokerHandlerInvoker>;
}

/**
 * What a class given to `forRootAsync({ useClass })` (or `useExisting`) implements: a
 * `createBrokerOptions()` method that returns the module's options, or a promise of them.
 * `Custom` names the broker types its options register in `adapters`.
 */
export type BrokerOptionsFactory<Custom extends string = never> = ConfigurableModuleOptionsFactory<BrokerModuleOptions<Custom>, 'createBrokerOptions'>;

/** What `DuctapeBrokerModule.forRootAsync()` takes. */
export type DuctapeBrokerModuleAsyncOptions<Custom extends string = never> = ConfigurableModuleAsyncOptions<
  BrokerModuleOptions<Custom>,
  'createBrokerOptions'
> &
  BrokerModuleExtras;
