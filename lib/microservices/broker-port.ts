import type { PublishRequest, PublishResult, SubscribeRequest, Subscription } from '../interfaces/message-broker.interface';

/**
 * What the server and client use of MessageBrokerService. Structural, so a typed
 * `MessageBrokerService<Events>` is accepted as well as the default one.
 */
export interface DuctapeBrokerPort {
  /** The module's env slug. */
  readonly env: string;
  /** The module's product tag. */
  readonly product: string;
  /** The module's service name (the default consumer group). */
  readonly service: string;
  /**
   * False when the module's `registerHandlers` is false: the server then checks its handlers but
   * subscribes none. Absent counts as true (a port of your own that predates it).
   */
  readonly registersHandlers?: boolean;
  publish(request: PublishRequest): Promise<PublishResult>;
  subscribe(request: SubscribeRequest): Promise<Subscription>;
}
