import { Injectable } from '@nestjs/common';
import { HealthIndicatorService, type HealthIndicatorResult } from '@nestjs/terminus';
import type { BrokerHealth } from '../interfaces/message-broker.interface';
import { MessageBrokerService } from '../message-broker.service';

/**
 * A health indicator for @nestjs/terminus (an optional peer dependency, loaded only from this
 * entry point, `@ductape/nestjs-broker/health`): up when every broker env this process uses has
 * its connections open, down otherwise, with each one's broker tag, env, type and reason.
 *
 * ```ts
 * @Get('health') @HealthCheck()
 * check() { return this.health.check([() => this.broker.isHealthy('broker')]); }
 * ```
 *
 * Provide it in a module that imports TerminusModule (it needs terminus's HealthIndicatorService).
 */
@Injectable()
export class BrokerHealthIndicator {
  constructor(
    private readonly broker: MessageBrokerService,
    private readonly indicator: HealthIndicatorService,
  ) {}

  isHealthy<const Key extends string>(key: Key): HealthIndicatorResult<Key, 'up' | 'down', { brokers: BrokerHealth[] }> {
    const brokers = this.broker.health();
    const session = this.indicator.check(key);
    return brokers.every((broker) => broker.up) ? session.up({ brokers }) : session.down({ brokers });
  }
}
