import { Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { ON_BROKER_EVENT_METADATA } from './constants';
import type { OnBrokerEventMetadata } from './decorators/on-broker-event.decorator';

@Injectable()
export class BrokerMetadataAccessor {
  constructor(private readonly reflector: Reflector) {}

  getBrokerEventHandlerMetadata(target: unknown): OnBrokerEventMetadata[] | undefined {
    if (typeof target !== 'function') return undefined;
    return this.reflector.get<OnBrokerEventMetadata[] | undefined>(ON_BROKER_EVENT_METADATA, target);
  }
}
