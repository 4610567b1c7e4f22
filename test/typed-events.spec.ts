import { join } from 'node:path';
import { typeCheckSnippets } from './support/type-check';

/**
 * Issue 18, item 5: events typed from one map. Each snippet is compiled as a user's file would be
 * (strict, decorators on), importing the library's entry point. A line that must not compile is
 * marked `@ts-expect-error`: should it compile after all, the directive itself is reported
 * ("Unused '@ts-expect-error' directive"), so every snippet must come out with no diagnostic.
 */
const DIR = join(__dirname, '__typed-events__');
const HEADER = `import 'reflect-metadata';\nimport { MessageBrokerService, OnBrokerEvent, type BrokerContext } from '../../lib';\n`;
const OPTIONS = { experimentalDecorators: true, emitDecoratorMetadata: true };

interface Order {
  orderId: string;
  status: 'pending' | 'paid';
}
void (null as unknown as Order);

const ORDER = `interface Order { orderId: string; status: 'pending' | 'paid' }\n`;

const SNIPPETS: Record<string, string> = {
  // One map declared once, by module augmentation: publish and the decorated handlers follow it.
  augmented: `${ORDER}
declare module '../../lib' {
  interface DuctapeEvents {
    'sqsbroker:new-orders': Order;
  }
}
export async function send(broker: MessageBrokerService): Promise<void> {
  await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { orderId: '1', status: 'pending' } } });
  // @ts-expect-error the message is not an Order
  await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { orderId: 1 } } });
  // @ts-expect-error a missing colon
  await broker.publish({ env: 'prd', event: 'new-orders', product_tag: 'shop', input: { message: { orderId: '1', status: 'paid' } } });
  // An event not in the map takes any message.
  await broker.publish({ env: 'prd', event: 'other:topic', product_tag: 'shop', input: { message: 42 } });
  // A computed event name is a string: checked when it is published.
  const tag: string = 'refunds';
  await broker.publish({ env: 'prd', event: \`sqsbroker:\${tag}\`, product_tag: 'shop', input: { message: { any: 'thing' } } });
  await broker.subscribe({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { callback: (order) => order.orderId.toUpperCase() } });
  // @ts-expect-error the callback must take an Order
  await broker.subscribe({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { callback: (order: { orderId: number }) => order } });
}
export class OrdersListener {
  @OnBrokerEvent('sqsbroker:new-orders')
  onOrder(order: Order, ctx: BrokerContext): string {
    return order.orderId + ctx.messageId;
  }
  @OnBrokerEvent('sqsbroker:new-orders')
  audit(message: unknown): void {
    void message;
  }
  // @ts-expect-error an Order is not a number
  @OnBrokerEvent('sqsbroker:new-orders')
  wrong(message: number): void {
    void message;
  }
  // @ts-expect-error a missing colon
  @OnBrokerEvent('new-orders')
  noColon(message: unknown): void {
    void message;
  }
  @OnBrokerEvent('other:topic')
  undeclared(message: { anything: boolean }): void {
    void message;
  }
}
`,
  // A map of its own for one injected service.
  ownMap: `${ORDER}
interface ShopEvents {
  'sqsbroker:new-orders': Order;
  'sqsbroker:refunds': { orderId: string; amount: number };
}
export async function send(broker: MessageBrokerService<ShopEvents>): Promise<void> {
  await broker.publish({ env: 'prd', event: 'sqsbroker:refunds', product_tag: 'shop', input: { message: { orderId: '1', amount: 5 } } });
  // @ts-expect-error amount is a number
  await broker.publish({ env: 'prd', event: 'sqsbroker:refunds', product_tag: 'shop', input: { message: { orderId: '1', amount: '5' } } });
}
export class Listener {
  @OnBrokerEvent<'sqsbroker:refunds', ShopEvents>('sqsbroker:refunds')
  onRefund(refund: { orderId: string; amount: number }): number {
    return refund.amount;
  }
}
`,
  // The map a topic's Standard Schema gives: the schema's output type is the event's message.
  fromSchemas: `${ORDER}
import { DuctapeBrokerModule, defineBrokers, type InferEvents, type StandardSchemaV1 } from '../../lib';
declare const OrderSchema: StandardSchemaV1<unknown, Order>;
declare const RefundSchema: StandardSchemaV1<{ amount: string }, { amount: number }>;
export const brokers = defineBrokers([
  { tag: 'sqsbroker', envs: [{ slug: 'prd', type: 'memory' }], topics: [{ tag: 'new-orders', schema: OrderSchema }, { tag: 'refunds', schema: RefundSchema }, { tag: 'audit' }] },
]);
declare module '../../lib' {
  interface DuctapeEvents extends InferEvents<typeof brokers> {}
}
// The same array goes to the module as it is.
export const imported = DuctapeBrokerModule.forRoot({ env: 'prd', product: 'shop', brokers });
export async function send(broker: MessageBrokerService): Promise<void> {
  await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { orderId: '1', status: 'paid' } } });
  // @ts-expect-error the message is not the schema's Order
  await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { orderId: '1', status: 'lost' } } });
  // @ts-expect-error the output type, a number
  await broker.publish({ env: 'prd', event: 'sqsbroker:refunds', product_tag: 'shop', input: { message: { amount: '5' } } });
  // A topic without a schema takes any message.
  await broker.publish({ env: 'prd', event: 'sqsbroker:audit', product_tag: 'shop', input: { message: [1, 2] } });
}
export class Listener {
  @OnBrokerEvent('sqsbroker:refunds')
  onRefund(refund: { amount: number }): number {
    return refund.amount;
  }
  // @ts-expect-error the handler gets the schema's output, not its input
  @OnBrokerEvent('sqsbroker:refunds')
  wrong(refund: { amount: string }): string {
    return refund.amount;
  }
}
`,
  // Parameter decorators choose the arguments: for an event not declared any signature goes; for a
  // declared one the first parameter must take the message, and `<E, object>` opts out.
  decorated: `${ORDER}
import { BrokerCtx, BrokerMessage } from '../../lib';
declare module '../../lib' {
  interface DuctapeEvents {
    'shop:orders': Order;
  }
}
export class Listener {
  @OnBrokerEvent('shop:undeclared')
  contextFirst(@BrokerCtx() ctx: BrokerContext, @BrokerMessage() order: Order): string {
    return ctx.messageId + order.orderId;
  }
  @OnBrokerEvent('shop:undeclared')
  twoProperties(@BrokerMessage('orderId') id: string, @BrokerMessage('total') total: number): string {
    return id + total;
  }
  @OnBrokerEvent('shop:undeclared')
  three(@BrokerMessage() order: Order, @BrokerCtx() ctx: BrokerContext, @BrokerMessage('orderId') id: string): string {
    return order.status + ctx.attempt + id;
  }
  @OnBrokerEvent('shop:orders')
  declaredThenMore(@BrokerMessage() order: Order, @BrokerMessage('orderId') id: string, @BrokerCtx() ctx: BrokerContext): string {
    return order.status + id + ctx.attempt;
  }
  // @ts-expect-error the first parameter of a declared event takes its message
  @OnBrokerEvent('shop:orders')
  declaredContextFirst(@BrokerCtx() ctx: BrokerContext, @BrokerMessage() order: Order): string {
    return ctx.messageId + order.orderId;
  }
  @OnBrokerEvent<'shop:orders', object>('shop:orders')
  optedOut(@BrokerCtx() ctx: BrokerContext, @BrokerMessage('orderId') id: string): string {
    return ctx.messageId + id;
  }
}
`,
  // Without a map, as before: any message; an explicit type argument still checks it.
  untyped: `
export async function send(broker: MessageBrokerService): Promise<void> {
  await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { orderId: 1 } } });
  await broker.publish<{ n: number }>({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { n: 1 } } });
  // @ts-expect-error n is a number
  await broker.publish<{ n: number }>({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { n: '1' } } });
  await broker.subscribe({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { callback: (message: { n: number }) => message.n } });
  // @ts-expect-error a missing colon, map or not
  await broker.publish({ env: 'prd', event: 'orders', product_tag: 'shop', input: { message: 1 } });
}
export class Listener {
  @OnBrokerEvent('sqsbroker:new-orders')
  onOrder(message: { n: number }): number {
    return message.n;
  }
}
`,
};

describe('typed events (compiled with the TypeScript compiler, as a user project)', () => {
  // One program per snippet: a module augmentation holds for the whole program it is in.
  it.each(Object.keys(SNIPPETS))('%s: compiles where it should and fails exactly where marked', (name) => {
    expect(typeCheckSnippets(DIR, HEADER, { [name]: SNIPPETS[name] }, OPTIONS)[name]).toEqual([]);
  });

  it('reports a wrong message at the message, in words a user can act on', () => {
    const [diagnostic] = typeCheckSnippets(DIR, HEADER, { wrong: `${ORDER}
declare module '../../lib' { interface DuctapeEvents { 'sqsbroker:new-orders': Order } }
export const send = (broker: MessageBrokerService) => broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'shop', input: { message: { orderId: 1, status: 'pending' } } });
` }, OPTIONS).wrong;
    expect(diagnostic.at).toBe('orderId');
    expect(diagnostic.message).toMatch(/number.*not assignable to type 'string'/);
  });
});
