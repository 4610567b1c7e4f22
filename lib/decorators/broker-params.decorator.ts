import type { PipeTransform, Type } from '@nestjs/common';
import { ROUTE_ARGS_METADATA } from '@nestjs/common/constants';
import { BROKER_PARAM_CONTEXT, BROKER_PARAM_MESSAGE } from '../constants';

type ParamPipe = Type<PipeTransform> | PipeTransform;

interface ParamMetadata {
  index: number;
  data: string | undefined;
  pipes: ParamPipe[];
}

/**
 * Records parameter `index` of a method as `type`, where Nest's ExternalContextCreator reads it:
 * under `__routeArguments__` on the class, keyed by the method's name, as `${type}:${index}`
 * (what @nestjs/microservices' @Payload and @Ctx do).
 */
function recordParam(type: number, data: string | undefined, pipes: ParamPipe[], decorator: string): ParameterDecorator {
  return (target, propertyKey, index) => {
    if (propertyKey === undefined) throw new TypeError(`${decorator} marks a parameter of an @OnBrokerEvent method, not of a constructor`);
    const owner = target.constructor;
    const existing = (Reflect.getMetadata(ROUTE_ARGS_METADATA, owner, propertyKey) as Record<string, ParamMetadata> | undefined) ?? {};
    const entry: ParamMetadata = { index, data, pipes };
    Reflect.defineMetadata(ROUTE_ARGS_METADATA, { ...existing, [`${type}:${index}`]: entry }, owner, propertyKey);
  };
}

/**
 * The message of an `@OnBrokerEvent` handler, or one property of it (`@BrokerMessage('orderId')`),
 * through the given pipes and the global ones (a `ValidationPipe` turns it into its DTO class and
 * refuses a message that fails it: the message goes to the dead letters, reason 'validation').
 */
export function BrokerMessage(property?: string, ...pipes: ParamPipe[]): ParameterDecorator;
export function BrokerMessage(...pipes: ParamPipe[]): ParameterDecorator;
export function BrokerMessage(propertyOrPipe?: string | ParamPipe, ...pipes: ParamPipe[]): ParameterDecorator {
  // As @Payload: a first argument that is not a string is a pipe.
  if (propertyOrPipe === undefined || typeof propertyOrPipe === 'string') return recordParam(BROKER_PARAM_MESSAGE, propertyOrPipe, pipes, '@BrokerMessage()');
  return recordParam(BROKER_PARAM_MESSAGE, undefined, [propertyOrPipe, ...pipes], '@BrokerMessage()');
}

/** The `BrokerContext` of the delivery (message id, attempt, headers, ...). */
export function BrokerCtx(): ParameterDecorator {
  return recordParam(BROKER_PARAM_CONTEXT, undefined, [], '@BrokerCtx()');
}
