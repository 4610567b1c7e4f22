/**
 * The transport id of DuctapeBrokerServer. `@EventPattern(event, DUCTAPE_BROKER_TRANSPORT)` binds a
 * handler to this transport alone; in an app with other transports too, bind their
 * `@MessagePattern` handlers to theirs (`Transport.TCP`, ...), which this server then never sees.
 */
export const DUCTAPE_BROKER_TRANSPORT: unique symbol = Symbol('DUCTAPE_BROKER_TRANSPORT');
