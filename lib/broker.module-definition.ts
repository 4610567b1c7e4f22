import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { BrokerModuleOptions } from './interfaces/broker-options.interface';

export const {
  ConfigurableModuleClass: ConfigurableBrokerModule,
  MODULE_OPTIONS_TOKEN: BROKER_MODULE_OPTIONS,
  OPTIONS_TYPE: BROKER_OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE: BROKER_ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<BrokerModuleOptions>()
  .setClassMethodName('forRoot')
  .setExtras({ isGlobal: true }, (definition, extras) => ({ ...definition, global: extras.isGlobal }))
  .build();
