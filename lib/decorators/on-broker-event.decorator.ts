import { ON_BROKER_EVENT_METADATA } from '../constants';
import type { OnBrokerEventOptions } from '../interfaces/message-broker.interface';

export interface OnBrokerEventMetadata {
  event: string;
  options: OnBrokerEventOptions;
}

/**
 * Subscribes the decorated method to `brokerTag:topicTag` when the application boots. The method
 * gets `(message, ctx: BrokerContext)`; the message is acked once it resolves. Stackable.
 */
export function OnBrokerEvent(event: string, options: OnBrokerEventOptions = {}): MethodDecorator {
  return (target, propertyKey, descriptor) => {
    if (typeof descriptor.value !== 'function') {
      throw new TypeError(`@OnBrokerEvent('${event}') can only decorate a method (${String(propertyKey)})`);
    }
    // Kept on the prototype under the method's name, not on the function: a test that replaces
    // the method (jest.spyOn) keeps it subscribed, and the spy sees the calls.
    const existing = (Reflect.getMetadata(ON_BROKER_EVENT_METADATA, target, propertyKey) as OnBrokerEventMetadata[] | undefined) ?? [];
    Reflect.defineMetadata(ON_BROKER_EVENT_METADATA, [...existing, { event, options }], target, propertyKey);
    return descriptor;
  };
}
