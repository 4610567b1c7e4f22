import { Injectable, Logger } from '@nestjs/common';
import { DEAD_LETTER_HEADERS, OnBrokerEvent, type BrokerContext } from '../lib';
import { INVOICING_GROUP, NEW_ORDERS_EVENT } from './broker.config';

/**
 * Shows a failing handler: every attempt throws, so after 3 attempts (200 ms, then 400 ms apart)
 * the message lands in the dead letters of group `orders.invoicing`, where `handleDeadLetter` gets it.
 */
@Injectable()
export class InvoicingListener {
  private readonly logger = new Logger(InvoicingListener.name);

  @OnBrokerEvent(NEW_ORDERS_EVENT, { group: INVOICING_GROUP, retry: { maxAttempts: 3, initialDelayMs: 200 } })
  invoiceOrder(_order: unknown, ctx: BrokerContext): void {
    this.logger.warn(`invoicing order messageId=${ctx.messageId} attempt=${ctx.attempt}`);
    throw new Error('invoicing service unavailable (demo)');
  }

  @OnBrokerEvent(NEW_ORDERS_EVENT, { deadLetter: true, group: INVOICING_GROUP })
  handleDeadLetter(order: unknown, ctx: BrokerContext): void {
    this.logger.error(
      `dead letter messageId=${ctx.messageId} group=${INVOICING_GROUP} ` +
        `attempts=${ctx.headers[DEAD_LETTER_HEADERS.attempts]} error="${ctx.headers[DEAD_LETTER_HEADERS.error]}": ${JSON.stringify(order)}`,
    );
  }
}
