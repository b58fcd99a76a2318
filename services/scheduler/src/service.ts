import { resolve } from 'node:path';
import { NotLeaderError } from '@berth/shared/errors';
import type { LeaderElection } from '@berth/shared/etcd';
import { EventSubjects } from '@berth/shared/events';
import type { Logger } from '@berth/shared/logging';
import { NatsComponent } from '@berth/shared/nats';
import { ServiceRuntime } from '@berth/shared/service';
import { Counter } from 'prom-client';
import type { SchedulerConfig } from './env.ts';
import { SchedulerController } from './reconcile/controller.ts';

/**
 * The scheduler: one leader (elected on etcd) places each version's replicas over the region's
 * cells, applies them, keeps them there and reports their status; standbys wait to take over.
 */
export class SchedulerService {
  readonly runtime: ServiceRuntime;
  readonly controller: SchedulerController;

  private constructor(runtime: ServiceRuntime, controller: SchedulerController) {
    this.runtime = runtime;
    this.controller = controller;
  }

  static create(config: SchedulerConfig, logger: Logger): SchedulerService {
    const runtime = new ServiceRuntime({ name: 'scheduler', config, logger });
    const nats = new NatsComponent({
      servers: config.NATS_URL,
      token: config.NATS_TOKEN,
      user: config.NATS_USER,
      pass: config.NATS_PASSWORD,
      name: 'scheduler',
      logger,
    });
    runtime.health.add('nats', nats.ready);
    runtime.add(nats);
    // Streams ensured at start too: the scheduler may start before the API.
    const events = runtime.addEvents(nats, new EventSubjects(config.EVENT_SUBJECT_ROOT), { ensureStreams: true });
    let election: LeaderElection | undefined;
    // Every etcd write compares the leader key: a deposed leader cannot overwrite its successor.
    const commits = new Counter({
      name: 'berth_scheduler_store_commits_total',
      help: 'etcd transactions the scheduler sent (placements, status rows, availability, events)',
      registers: [runtime.metrics],
    });
    const store = runtime.store.fenced(
      () => {
        if (!election) throw new NotLeaderError('the scheduler has no leader election yet');
        return election.fence();
      },
      { onCommit: () => commits.inc() },
    );
    const controller = new SchedulerController({
      etcd: runtime.etcd,
      store,
      keys: runtime.keys,
      region: config.BERTH_REGION,
      kubeconfigDir: resolve(config.KUBECONFIG_DIR),
      cellIdentity: config.CELL_IDENTITY ?? 'scheduler',
      registry: config.REGISTRY_ADDR,
      pullKey: config.REGISTRY_PULL_KEY,
      secretsKeyring: config.BERTH_SECRETS_KEYS,
      lbSourceCidrs: config.LB_SOURCE_CIDRS,
      preStopDelaySeconds: config.PRESTOP_DELAY_SECONDS,
      failoverGraceMs: config.FAILOVER_GRACE,
      recoveryHoldMs: config.RECOVERY_HOLD,
      resyncIntervalMs: config.RESYNC_INTERVAL,
      workers: config.SCHEDULER_WORKERS,
      maxTxnOps: config.ETCD_MAX_TXN_OPS,
      metrics: runtime.metrics,
      logger,
      events,
    });
    election = runtime.addLeaderElection('scheduler', {
      candidateId: config.BERTH_INSTANCE_ID,
      ttlSeconds: config.LEADER_TTL_SECONDS,
      onElected: () => controller.start(),
      onDeposed: () => controller.stop(),
    });
    runtime.add({ name: 'controller', stop: () => controller.stop() });
    return new SchedulerService(runtime, controller);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
