import { Module, type DynamicModule } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { BrokerMetadataAccessor } from './broker-metadata.accessor';
import {
  BROKER_MODULE_OPTIONS,
  ConfigurableBrokerModule,
  type BrokerModuleExtras,
  type DuctapeBrokerModuleAsyncOptions,
} from './broker.module-definition';
import { validateBrokerOptions } from './broker-options.validator';
import { BrokerHandlerInvoker } from './broker-handler-invoker';
import { BrokerSubscribersExplorer } from './broker-subscribers.explorer';
import { DUCTAPE_BROKER_OPTIONS } from './constants';
import type { BrokerModuleOptions } from './interfaces/broker-options.interface';
import { MessageBrokerService } from './message-broker.service';

/**
 * `DuctapeBrokerModule.forRoot(options)` or `.forRootAsync({ imports, inject, useFactory })`.
 * Global by default (`isGlobal: false` to scope it). The options are validated as the application
 * starts: one CONFIG_INVALID error lists every problem.
 */
@Module({
  imports: [DiscoveryModule],
  providers: [
    { provide: DUCTAPE_BROKER_OPTIONS, useFactory: validateBrokerOptions, inject: [BROKER_MODULE_OPTIONS] },
    BrokerMetadataAccessor,
    BrokerSubscribersExplorer,
    MessageBrokerService,
    BrokerHandlerInvoker,
  ],
  exports: [MessageBrokerService, DUCTAPE_BROKER_OPTIONS],
})
export class DuctapeBrokerModule extends ConfigurableBrokerModule {
  /** The broker types registered in `options.adapters` are inferred, so env entries may name them. */
  static override forRoot<Custom extends string = never>(options: BrokerModuleOptions<Custom> & BrokerModuleExtras): DynamicModule {
    return super.forRoot(options);
  }

  static override forRootAsync<Custom extends string = never>(options: DuctapeBrokerModuleAsyncOptions<Custom>): DynamicModule {
    return super.forRootAsync(options);
  }
}
