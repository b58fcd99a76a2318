import type { Logger } from '@berth/shared/logging';
import { EventSubjects, ensureStreams, NatsComponent } from '@berth/shared/nats';
import { RedisComponent } from '@berth/shared/redis';
import { ServiceRuntime } from '@berth/shared/service';
import type { ApiConfig } from './env.ts';

/**
 * The API: stateless; validates requests, writes desired state to etcd, publishes every change as
 * an event. Resources arrive with the API issue; today it makes sure the JetStream streams exist
 * and serves health, readiness (etcd, NATS, Redis) and metrics.
 */
export class ApiService {
  readonly runtime: ServiceRuntime;

  private constructor(runtime: ServiceRuntime) {
    this.runtime = runtime;
  }

  static create(config: ApiConfig, logger: Logger): ApiService {
    const runtime = new ServiceRuntime({ name: 'api', config, logger });
    const nats = new NatsComponent({ servers: config.NATS_URL, token: config.NATS_TOKEN, name: 'api', logger });
    const redis = new RedisComponent({ url: config.REDIS_URL, name: 'api' });
    runtime.health.add('nats', nats.ready);
    runtime.health.add('redis', redis.ready);
    runtime.add(nats);
    runtime.add({
      name: 'streams',
      start: async () => ensureStreams(await nats.client.jsm(), new EventSubjects()),
    });
    runtime.add(redis);
    return new ApiService(runtime);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
