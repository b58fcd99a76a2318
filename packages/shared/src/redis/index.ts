/**
 * Redis clients (ioredis), with the reconnect policy in one place. BullMQ workers need
 * `maxRetriesPerRequest: null` (blocking commands must wait through a reconnect); plain clients
 * fail a command after a few retries so a caller can answer 503 instead of hanging.
 */
import { Redis, type RedisOptions } from 'ioredis';
import { UnavailableError } from '../errors/index.ts';
import type { Logger } from '../logging/index.ts';

export { Redis } from 'ioredis';

export type RedisRole = 'client' | 'worker';

export type RedisClientConfig = {
  url: string;
  role?: RedisRole;
  /** Connection name, shown by CLIENT LIST. */
  name?: string;
  /** An ACL user and its password (otherwise what the URL says, or Redis's `default` user). */
  username?: string | undefined;
  password?: string | undefined;
  logger?: Logger;
};

export function redisOptions(role: RedisRole, name?: string): RedisOptions {
  return {
    ...(name ? { connectionName: name } : {}),
    lazyConnect: false,
    enableReadyCheck: true,
    connectTimeout: 5000,
    // Back off from 100 ms to 2 s; never give up (a service outlives a Redis restart).
    retryStrategy: (times) => Math.min(2000, 100 * 2 ** Math.min(times, 5)),
    maxRetriesPerRequest: role === 'worker' ? null : 3,
    enableOfflineQueue: role === 'worker',
  };
}

export function createRedis(config: RedisClientConfig): Redis {
  const redis = new Redis(config.url, {
    ...redisOptions(config.role ?? 'client', config.name),
    ...(config.username ? { username: config.username, password: config.password ?? '' } : {}),
  });
  const logger = config.logger?.child({ component: 'redis' });
  let wasReady = false;
  redis.on('ready', () => {
    if (wasReady) logger?.info('redis reconnected');
    wasReady = true;
  });
  redis.on('error', (err: Error) => logger?.warn({ err }, 'redis error'));
  return redis;
}

/** True while the client is connected and ready. */
export function redisReady(redis: Redis): boolean {
  return redis.status === 'ready';
}

/** Readiness: a PING answered within the check's deadline. */
export function redisReadiness(redis: Redis): () => Promise<void> {
  return async () => {
    if (redis.status !== 'ready') throw new UnavailableError(`redis connection is ${redis.status}`);
    await redis.ping();
  };
}

/** Closes the client, waiting for replies to pending commands. */
export async function closeRedis(redis: Redis): Promise<void> {
  if (redis.status === 'end') return;
  try {
    await redis.quit();
  } catch {
    redis.disconnect();
  }
}

/** Redis as a lifecycle component: the client connects (and reconnects) by itself; stop() quits. */
export class RedisComponent {
  readonly name: string;
  readonly client: Redis;

  constructor(config: RedisClientConfig) {
    this.name = `redis${config.role === 'worker' ? '-worker' : ''}`;
    this.client = createRedis(config);
  }

  stop(): Promise<void> {
    return closeRedis(this.client);
  }

  readonly ready = (): Promise<void> => redisReadiness(this.client)();
}
