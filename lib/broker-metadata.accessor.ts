import { Injectable } from '@nestjs/common';
import { ON_BROKER_EVENT_METADATA } from './constants';
import type { OnBrokerEventMetadata } from './decorators/on-broker-event.decorator';

@Injectable()
export class BrokerMetadataAccessor {
  /** The @OnBrokerEvent entries of a method, looked up on its prototype chain by name. */
  getBrokerEventHandlerMetadata(prototype: object, methodName: string): OnBrokerEventMetadata[] | undefined {
    return Reflect.getMetadata(ON_BROKER_EVENT_METADATA, prototype, methodName) as OnBrokerEventMetadata[] | undefined;
  }
}
