import type { PublishRequest, SubscribeRequest } from './message-broker.interface';

/**
 * The application's events and their message types, declared once by module augmentation:
 *
 * ```ts
 * declare module '@ductape/nestjs-broker' {
 *   interface DuctapeEvents {
 *     'sqsbroker:new-orders': Order;
 *   }
 * }
 * ```
 *
 * Then `publish` checks the message of each declared event at compile time, and an
 * `@OnBrokerEvent` method's message parameter must take it. Events not declared take any message.
 * Empty by default. `MessageBrokerService<Events>` takes a map of its own instead.
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- filled by the application's declaration merging
export interface DuctapeEvents {}

/** `brokerTag:topicTag`. */
export type EventName = `${string}:${string}`;

/**
 * `E` when it is an event name: a literal without a colon becomes `never`, so it fails to
 * compile. A `string` that is not a literal (a variable) is checked at runtime instead.
 */
export type ValidEvent<E extends string> = string extends E ? string : E extends EventName ? E : never;

/** The message type of event `E` in `Events`; `unknown` (any message) for an event not declared. */
export type EventMessage<E extends string, Events = DuctapeEvents> = E extends keyof Events ? Events[E] : unknown;

/**
 * The message type of a publish or subscribe: its event's when declared; else `T`, given or
 * inferred from the message or the callback (as before events could be declared).
 */
export type MessageOf<E extends string, Events, T> = E extends keyof Events ? Events[E] : T;

/** A publish request whose message is checked against its event's type. */
export type TypedPublishRequest<E extends string, Events = DuctapeEvents, T = unknown> = Omit<PublishRequest<MessageOf<E, Events, T>>, 'event'> & {
  /** `brokerTag:topicTag` */
  event: E & ValidEvent<E>;
};

/** A subscribe request whose callback takes its event's message type. */
export type TypedSubscribeRequest<E extends string, Events = DuctapeEvents, T = unknown> = Omit<SubscribeRequest<MessageOf<E, Events, T>>, 'event'> & {
  /** `brokerTag:topicTag` */
  event: E & ValidEvent<E>;
};

/**
 * What an `@OnBrokerEvent(E)` method must accept. For a declared event, its first parameter must
 * take the event's message (it may be wider); what follows is not checked, as a parameter
 * decorator may fill it (`@BrokerCtx()`, `@BrokerMessage('total')`). For an event not declared,
 * any method. A method whose first parameter is not the whole message (`@BrokerMessage('orderId')`
 * first) opts out with `@OnBrokerEvent<'event', object>(...)`.
 */
export type BrokerEventHandler<E extends string, Events = DuctapeEvents> = E extends keyof Events
  ? (message: Events[E], ...rest: never[]) => unknown
  : (...args: never[]) => unknown;

/** The type a Standard Schema gives a valid message (its output); `unknown` when it declares none. */
export type SchemaOutput<S> = S extends { readonly '~standard': { readonly types?: infer Types } }
  ? NonNullable<Types> extends { readonly output: infer Output }
    ? Output
    : unknown
  : unknown;

/** `[event, message type]` of each topic of a broker that has a schema. */
type SchemaEntries<Broker> = Broker extends { tag: infer BrokerTag extends string; topics?: readonly (infer Topic)[] }
  ? Topic extends { tag: infer TopicTag extends string; schema: infer Schema }
    ? [`${BrokerTag}:${TopicTag}`, SchemaOutput<Schema>]
    : never
  : never;

/**
 * The event map the topics' Standard Schemas give: each topic with a `schema` maps
 * `brokerTag:topicTag` to the schema's output type. Declare the brokers with `defineBrokers` (it
 * keeps their tags and schemas as literal types), then extend the map once:
 *
 * ```ts
 * export const brokers = defineBrokers([{ tag: 'billing', envs: [...], topics: [{ tag: 'invoices', schema: InvoiceSchema }] }]);
 * declare module '@ductape/nestjs-broker' {
 *   interface DuctapeEvents extends InferEvents<typeof brokers> {}
 * }
 * ```
 *
 * The output type is used for publish too: for a schema that transforms (input and output
 * differ), a message published must still pass the schema as its input when it is sent.
 */
export type InferEvents<Brokers extends readonly unknown[]> = {
  [Entry in SchemaEntries<Brokers[number]> as Entry[0]]: Entry[1];
};
