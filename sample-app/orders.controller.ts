import { BadRequestException, Body, Controller, Post } from '@nestjs/common';
import { isBrokerError, MessageBrokerService, type PublishResult } from '../lib';
import { NEW_ORDERS_EVENT } from './broker.config';

@Controller('orders')
export class OrdersController {
  constructor(private readonly broker: MessageBrokerService) {}

  /** Publishes the request body as a new order; 201 `{ messageId }`, 400 when the broker refuses the message. */
  @Post()
  async create(@Body() order: unknown): Promise<PublishResult> {
    try {
      return await this.broker.publish({
        env: this.broker.env,
        event: NEW_ORDERS_EVENT,
        product_tag: this.broker.product,
        input: { message: order },
      });
    } catch (error) {
      // The only broker error a client can cause; anything else is ours (Nest answers 500 and logs it).
      if (isBrokerError(error, 'INVALID_MESSAGE')) {
        throw new BadRequestException({ statusCode: 400, code: error.code, message: error.message });
      }
      throw error;
    }
  }
}
