import { Injectable, Logger } from '@nestjs/common';
import { OnBrokerEvent, type BrokerContext } from '../lib';
import { NEW_ORDERS_EVENT } from './broker.config';

/** Processes every new order (its own consumer group: `orders.OrdersListener.handleNewOrder`). */
@Injectable()
export class OrdersListener {
  private readonly logger = new Logger(OrdersListener.name);

  @OnBrokerEvent(NEW_ORDERS_EVENT)
  handleNewOrder(order: unknown, ctx: BrokerContext): void {
    this.logger.log(`processed order messageId=${ctx.messageId} attempt=${ctx.attempt}: ${JSON.stringify(order)}`);
  }
}
