import { join } from 'node:path';
import { typeCheckSnippets } from '../support/type-check';

/**
 * Compiled as a user's file would be (strict, decorators on): the README example of the
 * @nestjs/microservices bridge, and a typed MessageBrokerService<Events> handed to the server and
 * the client (their constructors take the service structurally, so any event map is accepted).
 */
const DIR = join(__dirname, '__types__');
const HEADER = `import 'reflect-metadata';
import { Controller, Inject, Injectable, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ClientProxy, Ctx, EventPattern, Payload } from '@nestjs/microservices';
import { lastValueFrom } from 'rxjs';
import { DuctapeBrokerModule, MessageBrokerService, type PublishResult } from '../../../lib';
import { DuctapeBrokerClient, DuctapeBrokerContext, DuctapeBrokerServer } from '../../../lib/microservices';
`;
const OPTIONS = { experimentalDecorators: true, emitDecoratorMetadata: true };

const SNIPPETS: Record<string, string> = {
  readme: `
interface Order { id: string }

@Controller()
export class OrdersEvents {
  @EventPattern('orders:new-orders')
  handle(@Payload() order: Order, @Ctx() ctx: DuctapeBrokerContext): void {
    console.log(order.id, ctx.getAttempt());
  }
}

@Injectable()
export class Checkout {
  constructor(@Inject('ORDERS_CLIENT') private readonly client: ClientProxy) {}
  place(order: Order): Promise<PublishResult> {
    return lastValueFrom(this.client.emit<PublishResult>('orders:new-orders', order));
  }
}

@Module({
  imports: [DuctapeBrokerModule.forRoot({ env: 'prd', product: 'shop', brokers: [{ tag: 'orders', envs: [{ slug: 'prd', type: 'memory' }] }] })],
  controllers: [OrdersEvents],
  providers: [Checkout, DuctapeBrokerClient.provider('ORDERS_CLIENT')],
})
export class AppModule {}

export async function bootstrap(): Promise<void> {
  const app = await NestFactory.create(AppModule);
  app.connectMicroservice({ strategy: new DuctapeBrokerServer(app.get(MessageBrokerService)) });
  await app.startAllMicroservices();
  await app.listen(3000);
}
`,
  typedService: `
export function bridge(typed: MessageBrokerService<{ 'orders:new-orders': { id: string } }>): [DuctapeBrokerServer, DuctapeBrokerClient] {
  return [new DuctapeBrokerServer(typed, { group: 'billing' }), new DuctapeBrokerClient(typed, { env: 'stg' })];
}
`,
};

describe('@nestjs/microservices bridge types (compiled with the TypeScript compiler, as a user project)', () => {
  // One program for both (no augmentation to keep apart): one compile, not two.
  it('the README example and a typed service compile', () => {
    expect(typeCheckSnippets(DIR, HEADER, SNIPPETS, OPTIONS)).toEqual({ readme: [], typedService: [] });
  });
});
