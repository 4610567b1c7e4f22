import { Inject, Injectable } from '@nestjs/common';
import { DUCTAPE_BROKER_OPTIONS } from '../constants';
import type { BrokerModuleOptions } from '../interfaces/broker-options.interface';
import type { PublishRequest, PublishResult, SubscribeRequest, Subscription } from '../interfaces/message-broker.interface';
import { MessageBrokerService } from '../message-broker.service';
import { BrokerRecorder } from './broker-recorder';

/**
 * MessageBrokerService as `useInMemoryBrokers` provides it in a testing module: the same service,
 * which also tells its harness what was published and how each handler call ended. Only tests
 * use it, so the service of an application keeps its hot path as it is.
 */
@Injectable()
export class TestingMessageBrokerService extends MessageBrokerService {
  /** @internal read with getBrokerTestHarness(app) */
  readonly harness: BrokerRecorder;

  constructor(@Inject(DUCTAPE_BROKER_OPTIONS) options: BrokerModuleOptions<string>) {
    super(options);
    this.harness = new BrokerRecorder(options);
  }

  override publish<T>(request: PublishRequest<T>): Promise<PublishResult> {
    const accepted = this.harness.publishing(request);
    const published = super.publish(request);
    return accepted
      ? published.then((result) => {
          accepted(result);
          return result;
        })
      : published;
  }

  override async subscribe<T>(request: SubscribeRequest<T>): Promise<Subscription> {
    const watched = this.harness.watching(request);
    if (!watched) return super.subscribe(request);
    return watched.subscribed(await super.subscribe(watched.request));
  }

  override async onApplicationShutdown(): Promise<void> {
    try {
      await super.onApplicationShutdown();
    } finally {
      this.harness.close();
    }
  }
}
