import type { Route } from '../../lib/routing/route-resolver';

/** A resolved route for tests that drive the delivery layer without the module. */
export function testRoute(topicName = 'p.prd.t'): Route {
  return {
    event: 'b:t',
    env: 'prd',
    product: 'p',
    brokerTag: 'b',
    topicTag: 't',
    source: '/p/prd/p',
    brokerEnv: { slug: 'prd', type: 'memory' },
    topic: { name: topicName, tag: 't' },
  };
}
