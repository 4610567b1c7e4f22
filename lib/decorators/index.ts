export * from './on-broker-event.decorator';
