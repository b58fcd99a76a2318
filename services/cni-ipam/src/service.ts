import { resolve } from 'node:path';
import type { EventInput } from '@berth/shared/events';
import { loadCellClient } from '@berth/shared/kube';
import type { Logger } from '@berth/shared/logging';
import { EventSubjects, NatsComponent } from '@berth/shared/nats';
import { ServiceRuntime } from '@berth/shared/service';
import { listPods } from './checker/check.ts';
import { LeakWatcher } from './checker/watch.ts';
import type { IpamCheckerConfig } from './env.ts';
import { Allocator } from './ipam/allocator.ts';

/**
 * The IPAM checker daemon of one cell: compares its allocations in etcd with its pods every
 * CHECK_INTERVAL, exports berth_ipam_leaked_ips, publishes ipam.leak-detected, releases confirmed
 * leaks when AUTO_RELEASE is on, and releases blocks that stayed empty.
 */
export class IpamCheckerService {
  readonly runtime: ServiceRuntime;
  readonly watcher: LeakWatcher;

  private constructor(runtime: ServiceRuntime, watcher: LeakWatcher) {
    this.runtime = runtime;
    this.watcher = watcher;
  }

  static create(config: IpamCheckerConfig, logger: Logger): IpamCheckerService {
    const log = logger.child({ cell: config.BERTH_CELL });
    const runtime = new ServiceRuntime({ name: 'cni-ipam', config, logger: log });
    const backend = runtime.store.backend;
    const cell = loadCellClient(resolve(config.KUBECONFIG_DIR), config.BERTH_CELL, config.CELL_IDENTITY ?? 'ipam');
    let publish: ((event: Omit<EventInput, 'actor'>) => Promise<void>) | undefined;
    if (config.NATS_URL) {
      const nats = new NatsComponent({
        servers: config.NATS_URL,
        token: config.NATS_TOKEN,
        user: config.NATS_USER,
        pass: config.NATS_PASSWORD,
        name: 'cni-ipam',
        logger: log,
      });
      runtime.health.add('nats', nats.ready);
      runtime.add(nats);
      const events = runtime.addEvents(nats, new EventSubjects(config.EVENT_SUBJECT_ROOT));
      // Through the outbox: a leak reported while NATS is down reaches the feed when it is back.
      publish = async (input) => {
        await events.emit({ ...input, actor: { type: 'service', name: 'cni-ipam' } } as EventInput);
      };
    }
    const watcher = new LeakWatcher({
      backend,
      keys: runtime.keys,
      cell: config.BERTH_CELL,
      allocator: new Allocator({ backend, keys: runtime.keys, cell: config.BERTH_CELL }),
      pods: () => listPods(cell.core),
      intervalMs: config.CHECK_INTERVAL,
      autoRelease: config.AUTO_RELEASE,
      releaseGraceMs: config.RELEASE_GRACE,
      blockGraceMs: config.BLOCK_GRACE,
      metrics: runtime.metrics,
      logger: log,
      ...(publish ? { publish } : {}),
    });
    runtime.add({ name: 'leak-watcher', start: () => watcher.start(), stop: () => watcher.stop() });
    return new IpamCheckerService(runtime, watcher);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
