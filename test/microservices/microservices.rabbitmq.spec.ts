import { describeWithBroker } from '../support/broker-availability';
import { holdExclusively } from '../support/exclusive';
import { rabbitEnv, recordDeclarations, runUnique } from '../support/rabbitmq';
import { bridgeSuite } from './bridge.suite';

// A product of this run's own: every queue and exchange the file declares is named after it, and
// deleted, by name, at its end.
const PRODUCT = runUnique('ms-bridge');
const declared = recordDeclarations();

// Other RabbitMQ files restart the broker or close its connections: never alongside this one.
holdExclusively('rabbitmq', { cleanup: () => declared.deleteAll() });

describeWithBroker('rabbitmq', '@nestjs/microservices bridge on RabbitMQ', () => {
  bridgeSuite({ env: () => rabbitEnv('prd'), product: () => PRODUCT, deliveryMs: 5000 });
});
