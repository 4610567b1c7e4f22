import { Module } from '@nestjs/common';
import { DuctapeBrokerModule } from '../lib';
import { brokerConfig } from './broker.config';
import { InvoicingListener } from './invoicing.listener';
import { OrdersController } from './orders.controller';
import { OrdersListener } from './orders.listener';

@Module({
  imports: [DuctapeBrokerModule.forRoot(brokerConfig())],
  controllers: [OrdersController],
  providers: [OrdersListener, InvoicingListener],
})
export class AppModule {}
