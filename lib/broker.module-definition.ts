import { ConfigurableModuleBuilder, type ConfigurableModuleOptionsFactory } from '@nestjs/common';
import type { BrokerModuleOptions } from './interfaces/broker-options.interface';

export const {
  ConfigurableModuleClass: ConfigurableBrokerModule,
  MODULE_OPTIONS_TOKEN: BROKER_MODULE_OPTIONS,
  OPTIONS_TYPE: BROKER_OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE: BROKER_ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<BrokerModuleOptions>()
  .setClassMethodName('forRoot')
  // A class given to forRootAsync({ useClass }) says what it does: createBrokerOptions(), not create().
  .setFactoryMethodName('createBrokerOptions')
  .setExtras({ isGlobal: true }, (definition, extras) => ({ ...definition, global: extras.isGlobal }))
  .build();

/**
 * What a class given to `forRootAsync({ useClass })` (or `useExisting`) implements: a
 * `createBrokerOptions()` method that returns the module's options, or a promise of them.
 */
export type BrokerOptionsFactory = ConfigurableModuleOptionsFactory<BrokerModuleOptions, 'createBrokerOptions'>;
