export { createRedisAdapter, RedisAdapter, REDIS_CAPABILITIES, REDIS_DEFAULTS } from './redis.adapter';
