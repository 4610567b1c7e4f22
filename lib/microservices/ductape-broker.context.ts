import { BaseRpcContext } from '@nestjs/microservices';
import type { BrokerContext } from '../interfaces/message-broker.interface';

/**
 * What `@Ctx()` gives an `@EventPattern` handler served by DuctapeBrokerServer: the module's
 * BrokerContext of the delivery, with getters in the style of Nest's own transport contexts.
 */
export class DuctapeBrokerContext extends BaseRpcContext<[BrokerContext]> {
  /** The whole BrokerContext, as an `@OnBrokerEvent` handler gets it. */
  getBrokerContext(): BrokerContext {
    return this.args[0];
  }

  /** The `brokerTag:topicTag` event the message was published to. */
  getPattern(): string {
    return this.args[0].event;
  }

  getMessageId(): string {
    return this.args[0].messageId;
  }

  getEnv(): string {
    return this.args[0].env;
  }

  getProduct(): string {
    return this.args[0].product;
  }

  /** 1 on the first delivery, n on the n-th. */
  getAttempt(): number {
    return this.args[0].attempt;
  }

  getHeaders(): Record<string, string> {
    return this.args[0].headers;
  }

  getCorrelationId(): string | undefined {
    return this.args[0].correlationId;
  }

  getKey(): string | undefined {
    return this.args[0].key;
  }

  getPublishedAt(): Date {
    return this.args[0].publishedAt;
  }

  /** The broker client's own message object. */
  getRaw(): unknown {
    return this.args[0].raw;
  }
}
