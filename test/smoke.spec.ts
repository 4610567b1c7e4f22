import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { DuctapeBrokerModule, MessageBrokerService, OnBrokerEvent, type BrokerContext } from '../lib';

const seen: unknown[] = [];
@Injectable()
class L {
  @OnBrokerEvent('sqsbroker:new-orders')
  async on(message: unknown, ctx: BrokerContext) { seen.push([message, ctx.attempt]); }
}
@Module({ imports: [DuctapeBrokerModule.forRoot({ env: 'prd', product: 'my_product', brokers: [{ tag: 'sqsbroker', envs: [{ slug: 'prd', type: 'memory' }] }] })], providers: [L] })
class AppModule {}

it('smoke', async () => {
  const ref = await Test.createTestingModule({ imports: [AppModule] }).compile();
  const app = ref.createNestApplication();
  await app.init();
  const broker = app.get(MessageBrokerService);
  const r = await broker.publish({ env: 'prd', event: 'sqsbroker:new-orders', product_tag: 'my_product', input: { message: { orderId: '1' } } });
  await new Promise((r) => setTimeout(r, 50));
  expect(seen).toEqual([[{ orderId: '1' }, 1]]);
  expect(r.messageId).toMatch(/-/);
  await app.close();
});
