import { bridgeSuite } from './bridge.suite';

describe('@nestjs/microservices bridge on the memory broker', () => {
  bridgeSuite({ env: () => ({ slug: 'prd', type: 'memory' }), product: () => 'shop', deliveryMs: 2000 });
});
