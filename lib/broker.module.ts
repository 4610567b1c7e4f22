import { Module } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { BrokerMetadataAccessor } from './broker-metadata.accessor';
import { BROKER_MODULE_OPTIONS, ConfigurableBrokerModule } from './broker.module-definition';
import { validateBrokerOptions } from './broker-options.validator';
import { BrokerSubscribersExplorer } from './broker-subscribers.explorer';
import { DUCTAPE_BROKER_OPTIONS } from './constants';
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
  ],
  exports: [MessageBrokerService],
})
export class DuctapeBrokerModule extends ConfigurableBrokerModule {}
