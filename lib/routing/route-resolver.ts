import type { AdapterTopic } from '../adapters/broker-adapter';
import { BrokerError } from '../errors';
import type {
  BrokerConfig,
  BrokerEnvConfig,
  BrokerModuleOptions,
  RetryPolicy,
  TopicConfig,
} from '../interfaces/broker-options.interface';
import type { StandardSchemaV1 } from '../interfaces/standard-schema.interface';
import { parseEvent, physicalTopicName } from './event';

/** Everything publish and subscribe need to know about one (env, event). */
export interface Route {
  readonly event: string;
  readonly env: string;
  readonly product: string;
  readonly brokerTag: string;
  readonly topicTag: string;
  /** CloudEvents `source` of what this service publishes: `/<product>/<env>/<service>`. */
  readonly source: string;
  readonly brokerEnv: BrokerEnvConfig<string>;
  readonly topic: AdapterTopic;
  readonly schema?: StandardSchemaV1;
  readonly retry?: RetryPolicy;
}

/**
 * Resolves `env` + `brokerTag:topicTag` to a broker env and a physical topic, once: routes are
 * cached, so the publish hot path does not re-parse the event or search the configuration.
 */
export class RouteResolver {
  private readonly brokers: Map<string, BrokerConfig<string>>;
  /** env -> event -> route: two lookups and no string building per publish. */
  private readonly cache = new Map<string, Map<string, Route>>();
  private cached = 0;

  constructor(private readonly options: BrokerModuleOptions<string>) {
    this.brokers = new Map(options.brokers.map((broker) => [broker.tag, broker]));
  }

  resolve(env: string, event: string, product: string): Route {
    if (product !== this.options.product) {
      throw new BrokerError(
        'PRODUCT_NOT_FOUND',
        `product '${String(product).slice(0, 120)}' is not this service's product ('${this.options.product}')`,
      );
    }
    const hit = this.cache.get(env)?.get(event);
    if (hit) return hit;
    const route = this.build(env, event);
    // Topic tags are free when a broker lists no topics: keep the cache bounded all the same.
    if (++this.cached > 10_000) {
      this.cache.clear();
      this.cached = 1;
    }
    let byEvent = this.cache.get(env);
    if (!byEvent) this.cache.set(env, (byEvent = new Map<string, Route>()));
    byEvent.set(event, route);
    return route;
  }

  private build(env: string, event: string): Route {
    const { brokerTag, topicTag } = parseEvent(event);
    const broker = this.brokers.get(brokerTag);
    if (!broker) {
      throw new BrokerError(
        'BROKER_NOT_FOUND',
        `event '${event}': no broker tagged '${brokerTag}' (configured: ${[...this.brokers.keys()].join(', ')})`,
      );
    }
    const brokerEnv = broker.envs.find((candidate) => candidate.slug === env);
    if (!brokerEnv) {
      throw new BrokerError(
        'BROKER_ENV_NOT_FOUND',
        `event '${event}': broker '${brokerTag}' has no env '${String(env).slice(0, 120)}' (configured: ${broker.envs
          .map((candidate) => candidate.slug)
          .join(', ')})`,
      );
    }
    let topicConfig: TopicConfig | undefined;
    if (broker.topics) {
      topicConfig = broker.topics.find((candidate) => candidate.tag === topicTag);
      if (!topicConfig) {
        throw new BrokerError(
          'TOPIC_NOT_FOUND',
          `event '${event}': broker '${brokerTag}' has no topic '${topicTag}' (configured: ${broker.topics
            .map((candidate) => candidate.tag)
            .join(', ')})`,
        );
      }
    }
    const product = this.options.product;
    return {
      event,
      env,
      product,
      brokerTag,
      topicTag,
      source: `/${product}/${env}/${this.options.service ?? product}`,
      brokerEnv,
      topic: {
        name: physicalTopicName(product, env, topicTag, topicConfig?.name),
        tag: topicTag,
        config: topicConfig,
        whenNoGroup: topicConfig?.whenNoGroup ?? brokerEnv.whenNoGroup ?? 'accept',
      },
      schema: topicConfig?.schema,
      retry: topicConfig?.retry,
    };
  }
}
