// `@ductape/nestjs-broker/microservices`: the bridge to @nestjs/microservices (an optional peer
// dependency, loaded only from this entry point).
export type { DuctapeBrokerPort } from './broker-port';
export { DUCTAPE_BROKER_TRANSPORT } from './constants';
export { DuctapeBrokerContext } from './ductape-broker.context';
export {
  DuctapeBrokerServer,
  type DuctapeBrokerServerOptions,
  type DuctapeBrokerServerStatus,
  type DuctapeEventPatternExtras,
} from './ductape-broker.server';
export {
  DuctapeBrokerClient,
  DuctapeBrokerRecord,
  type DuctapeBrokerClientOptions,
  type DuctapeBrokerRecordOptions,
} from './ductape-broker.client';
