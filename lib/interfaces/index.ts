export * from './broker-options.interface';
export * from './message-broker.interface';
export * from './standard-schema.interface';
export * from './typed-events.interface';
