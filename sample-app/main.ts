import 'reflect-metadata';
import { Logger, type INestApplication, type NestApplicationOptions } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { MessageBrokerService } from '../lib';
import { AppModule } from './app.module';
import { NEW_ORDERS_EVENT } from './broker.config';

const DEMO_ORDER = { orderId: 'demo-1', status: 'pending', customer: { name: 'John Doe', email: 'john@example.com' } };

/** Starts the orders service on `port`, then publishes one demo order so the log shows the round trip. */
export async function bootstrap(
  port: number = process.env.PORT ? Number(process.env.PORT) : 3000,
  options: NestApplicationOptions = {},
): Promise<INestApplication> {
  const logger = new Logger('Bootstrap');
  const app = await NestFactory.create(AppModule, options);
  app.enableShutdownHooks();
  try {
    await app.listen(port);
    logger.log(`orders service listening on ${await app.getUrl()} (POST /orders)`);
    const broker = app.get(MessageBrokerService);
    const { messageId } = await broker.publish({
      env: broker.env,
      event: NEW_ORDERS_EVENT,
      product_tag: broker.product,
      input: { message: DEMO_ORDER },
    });
    logger.log(`published demo order ${DEMO_ORDER.orderId} messageId=${messageId}`);
  } catch (error) {
    await app.close();
    throw error;
  }
  return app;
}

if (require.main === module) {
  bootstrap().catch((error: unknown) => {
    new Logger('Bootstrap').error('orders service failed to start', error instanceof Error ? error.stack : String(error));
    process.exitCode = 1;
  });
}
