export * from './on-broker-event.decorator';
export * from './broker-params.decorator';
