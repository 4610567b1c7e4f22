import { Injectable } from '@nestjs/common';
import type { BrokerMessageHandler } from './interfaces/message-broker.interface';

/** Which handler `BrokerHandlerInvoker.decorate` is given. */
export interface BrokerHandlerDescriptor {
  /** `brokerTag:topicTag` */
  event: string;
  env: string;
  group: string;
  /** The provider or controller class, and the decorated method. */
  className: string;
  methodName: string;
  /** Whether it consumes the group's dead letters. */
  deadLetter: boolean;
}

/**
 * The override point around every `@OnBrokerEvent` handler: `decorate` is called once per
 * handler at bootstrap and returns the function the broker calls instead. The default returns the
 * handler as it is (nothing added to each message's path). Give your own subclass in the module's
 * options (`forRoot({ ..., handlerInvoker: TracingInvoker })`) to time, trace or log every handler.
 * It is a provider of the broker module, so it may inject global providers and what the modules
 * given to `forRootAsync({ imports })` export; not the providers of your other modules (`forRoot`
 * imports none of them). What the returned function throws or rejects with counts as the
 * handler's failure (retries, then dead letters).
 */
@Injectable()
export class BrokerHandlerInvoker {
  decorate(handler: BrokerMessageHandler, descriptor: BrokerHandlerDescriptor): BrokerMessageHandler {
    void descriptor;
    return handler;
  }
}
