import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { UnavailableError } from '@berth/shared/errors';
import { EventSubjects } from '@berth/shared/events';
import type { Logger } from '@berth/shared/logging';
import { NatsComponent } from '@berth/shared/nats';
import { RedisComponent } from '@berth/shared/redis';
import { ServiceRuntime } from '@berth/shared/service';
import { Counter, Gauge, Histogram } from 'prom-client';
import { BuildCache } from './cache/build-cache.ts';
import { ClearCacheListener } from './cache/clear-requests.ts';
import { type BuilderAgentConfig, type ResolvedBuilderConfig, resolveBuilderConfig } from './env.ts';
import { BuilderRegistrar } from './registration/registrar.ts';
import { BuildRunner } from './runs/build-runner.ts';
import { createDocker, DockerImageBuilder } from './steps/docker.ts';
import { GitMirrors } from './steps/git.ts';
import { pushCredentials } from './steps/push-credentials.ts';
import { RegistryClient } from './steps/registry.ts';
import { BuildWorker } from './worker.ts';

const VERSION = '0.1.0';

/**
 * The builder-agent, one per build machine (docs/builds.md, "builder-agent"): registers under a
 * lease, takes its builds from its own BullMQ queue, and runs each one (clone, compile, build,
 * push) on the machine's Docker Engine, with per-config caches under its data dir.
 *
 * Start order: NATS, events (the outbox, the build-log stream), Docker, the worker, then the
 * registration (the dispatcher sends work only once the queue has a worker). Stop is the
 * reverse: the registration says draining, the worker finishes (or at the drain timeout aborts)
 * its builds, the lease is revoked.
 */
export class BuilderAgentService {
  readonly runtime: ServiceRuntime;
  readonly config: ResolvedBuilderConfig;
  readonly worker: BuildWorker;
  readonly registrar: BuilderRegistrar;

  private constructor(
    runtime: ServiceRuntime,
    config: ResolvedBuilderConfig,
    worker: BuildWorker,
    registrar: BuilderRegistrar,
  ) {
    this.runtime = runtime;
    this.config = config;
    this.worker = worker;
    this.registrar = registrar;
  }

  static create(raw: BuilderAgentConfig, logger: Logger): BuilderAgentService {
    const config = resolveBuilderConfig(raw);
    const id = config.builderId;
    const log = logger.child({ builder: id });
    const runtime = new ServiceRuntime({ name: 'builder-agent', config, logger: log });
    const subjects = new EventSubjects(config.EVENT_SUBJECT_ROOT);

    const redis = new RedisComponent({
      url: config.REDIS_URL,
      username: config.REDIS_USERNAME,
      password: config.REDIS_PASSWORD,
      role: 'worker',
      name: `builder-${id}`,
      logger: log,
    });
    const nats = new NatsComponent({
      servers: config.NATS_URL,
      token: config.NATS_TOKEN,
      user: config.NATS_USER,
      pass: config.NATS_PASSWORD,
      name: `builder-${id}`,
      logger: log,
    });
    runtime.add(nats);
    // The outbox relay and the streams (events, build logs with their age limit).
    const events = runtime.addEvents(nats, subjects);

    const docker = new DockerImageBuilder(createDocker(config.DOCKER_HOST));
    const dataDir = config.BUILDER_DATA_DIR;
    const cache = new BuildCache({
      dir: join(dataDir, 'cache'),
      tmpDir: join(dataDir, 'tmp'),
      budgetBytes: config.BUILDER_CACHE_BUDGET,
      logger: log,
    });
    // One credential per attempt of a run with the agent's robot key, else the static one.
    const registryAuth = pushCredentials({
      registryAddr: config.REGISTRY_ADDR,
      agentKey: config.BUILDER_REGISTRY_KEY,
      username: config.REGISTRY_USERNAME,
      password: config.REGISTRY_PASSWORD,
    });

    const m = metrics(runtime, cache);
    const runner = new BuildRunner({
      etcd: runtime.etcd,
      store: runtime.store,
      keys: runtime.keys,
      events,
      js: () => nats.client.js,
      subjects,
      git: new GitMirrors({ dir: join(dataDir, 'mirrors') }),
      docker,
      registry: new RegistryClient({ baseUrl: `${config.registryScheme}://${config.REGISTRY_ADDR}` }),
      cache,
      dataDir,
      registryAddr: config.REGISTRY_ADDR,
      registryAuth,
      credentialsDir: config.BUILDER_CREDENTIALS_DIR,
      timeouts: {
        clone: config.BUILD_CLONE_TIMEOUT,
        compile: config.BUILD_COMPILE_TIMEOUT,
        build: config.BUILD_BUILD_TIMEOUT,
        push: config.BUILD_PUSH_TIMEOUT,
      },
      agentId: id,
      logger: log,
      onStep: (step, result, seconds) => m.stepSeconds.observe({ step, result }, seconds),
    });
    const worker = new BuildWorker({
      redis: redis.client,
      nats,
      subjectRoot: config.EVENT_SUBJECT_ROOT,
      region: config.BERTH_REGION,
      agentId: id,
      slots: config.BUILDER_SLOTS,
      lockDurationMs: config.BUILDER_LOCK_DURATION,
      runner,
      logger: log,
      drainTimeoutMs: Math.max(1000, config.SHUTDOWN_TIMEOUT * 0.4),
      onOutcome: (o) => m.builds.inc({ result: o.result }),
      onActive: (n) => m.active.set(n),
    });
    const registrar = new BuilderRegistrar({
      etcd: runtime.etcd,
      keys: runtime.keys,
      region: config.BERTH_REGION,
      id,
      slots: config.BUILDER_SLOTS,
      weight: config.weight,
      labels: config.BUILDER_LABELS,
      version: VERSION,
      dataDir,
      cacheBytes: () => cache.bytes,
      leaseTtlSeconds: config.BUILDER_LEASE_TTL_SECONDS,
      reportIntervalMs: config.BUILDER_REPORT_INTERVAL,
      logger: log,
      onLost: () => worker.pause(),
      onRegistered: () => worker.resume(),
    });

    runtime.health.add('redis', redis.ready);
    runtime.health.add('nats', nats.ready);
    runtime.health.add('docker', () => docker.ping());
    runtime.health.add('registered', () => {
      if (!registrar.registered) throw new UnavailableError('not registered under a live lease');
    });
    runtime.add(redis);
    runtime.add({
      name: 'docker',
      start: async () => {
        await mkdir(dataDir, { recursive: true });
        // What a killed process of this agent left: workspaces, cache-off dirs, containers.
        await rm(join(dataDir, 'workspaces'), { recursive: true, force: true });
        await rm(join(dataDir, 'tmp'), { recursive: true, force: true });
        await docker.ping();
        const left = await docker.removeLeftovers(id);
        if (left > 0) log.warn({ containers: left }, 'removed compile containers a killed process left');
        await cache.evict();
      },
    });
    runtime.add(worker);
    runtime.add(
      new ClearCacheListener({
        nats,
        subjectRoot: config.EVENT_SUBJECT_ROOT,
        agentId: id,
        cache,
        logger: log,
        onCleared: (r) => m.cacheClears.inc({ deferred: String(r.deferred) }),
      }),
    );
    // Stops first: says "draining" before the worker drains, revokes the lease after.
    runtime.add({
      name: 'registration',
      start: () => registrar.start(),
      stop: async () => {
        await registrar.drain().catch(() => undefined);
        await worker.stop();
        await registrar.stop();
      },
    });
    log.info({ id, queue: worker.queueName, dataDir, slots: config.BUILDER_SLOTS }, 'builder-agent configured');
    return new BuilderAgentService(runtime, config, worker, registrar);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}

function metrics(runtime: ServiceRuntime, cache: BuildCache) {
  const registers = [runtime.metrics];
  return {
    builds: new Counter({
      name: 'berth_builder_builds_total',
      help: 'Builds ended on this agent, by result (succeeded, failed, cancelled, stale, abandoned)',
      labelNames: ['result'],
      registers,
    }),
    stepSeconds: new Histogram({
      name: 'berth_builder_step_duration_seconds',
      help: 'Duration of build steps (clone, compile, build, push), by result',
      labelNames: ['step', 'result'],
      buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
      registers,
    }),
    cacheClears: new Counter({
      name: 'berth_builder_cache_clears_total',
      help: 'Requests to clear a config cache answered, by whether a build held it (deferred)',
      labelNames: ['deferred'],
      registers,
    }),
    active: new Gauge({ name: 'berth_builder_active_builds', help: 'Builds running on this agent', registers }),
    cacheBytes: new Gauge({
      name: 'berth_builder_cache_bytes',
      help: 'Bytes in the per-config build caches, as of the last measure',
      registers,
      collect() {
        this.set(cache.bytes);
      },
    }),
  };
}
