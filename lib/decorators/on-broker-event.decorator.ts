import { ON_BROKER_EVENT_METADATA } from '../constants';
import type { OnBrokerEventOptions } from '../interfaces/message-broker.interface';
import type { BrokerEventHandler, DuctapeEvents, ValidEvent } from '../interfaces/typed-events.interface';

export interface OnBrokerEventMetadata {
  event: string;
  options: OnBrokerEventOptions;
}

/**
 * Subscribes the decorated method to `brokerTag:topicTag` when the application boots. The method
 * gets `(message, ctx: BrokerContext)`, or what its @BrokerMessage() and @BrokerCtx() parameters
 * ask for; the message is acked once it resolves. Stackable. Guards, interceptors, pipes and
 * filters (`@UseGuards`, ... and the global ones) apply, with `host.getType()` 'ductape-broker'.
 */
export function OnBrokerEvent<E extends string, Events extends object = DuctapeEvents>(
  event: E & ValidEvent<E>,
  options: OnBrokerEventOptions = {},
): <M extends BrokerEventHandler<E, Events>>(target: object, propertyKey: string | symbol, descriptor: TypedPropertyDescriptor<M>) => TypedPropertyDescriptor<M> {
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
