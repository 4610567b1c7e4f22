export * from './single-flight';
export * from './sleep';
export * from './with-timeout';
export * from './observable-result';
