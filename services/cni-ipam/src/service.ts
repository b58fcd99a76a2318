import { resolve } from 'node:path';
import type { EventInput } from '@berth/shared/events';
import { loadCellClient } from '@berth/shared/kube';
import type { Logger } from '@berth/shared/logging';
import { EventSubjects, NatsComponent } from '@berth/shared/nats';
import { ServiceRuntime } from '@berth/shared/service';
import { listPods } from './checker/check.ts';
import { LeakWatcher } from './checker/watch.ts';
import { ResidentAllocators } from './daemon/resident.ts';
import { IpamSocketServer } from './daemon/server.ts';
import type { IpamCheckerConfig } from './env.ts';
import { Allocator } from './ipam/allocator.ts';
import { closeNeighbours } from './plugin/commands.ts';

/**
 * The node's IPAM daemon. The resident allocator: CNI ADD, DEL and CHECK over IPAM_SOCKET for the
 * thin plugin, from a watched copy of each cell's IPAM keys, one etcd transaction per batch of a
 * node's requests (./daemon). The checker of one cell: compares its allocations in etcd with its pods every
 * CHECK_INTERVAL, exports berth_ipam_leaked_ips, publishes ipam.leak-detected, releases confirmed
 * leaks when AUTO_RELEASE is on, and releases blocks that stayed empty.
 */
export class IpamCheckerService {
  readonly runtime: ServiceRuntime;
  /** Undefined with IPAM_CHECKER=false. */
  readonly watcher: LeakWatcher | undefined;
  /** Undefined with IPAM_SOCKET=off. */
  readonly socket: IpamSocketServer | undefined;

  private constructor(runtime: ServiceRuntime, watcher: LeakWatcher | undefined, socket: IpamSocketServer | undefined) {
    this.runtime = runtime;
    this.watcher = watcher;
    this.socket = socket;
  }

  static create(config: IpamCheckerConfig, logger: Logger): IpamCheckerService {
    const log = logger.child({ cell: config.BERTH_CELL });
    const runtime = new ServiceRuntime({ name: 'cni-ipam', config, logger: log });
    const watcher = config.IPAM_CHECKER ? addChecker(runtime, config, log) : undefined;
    const socket = config.IPAM_SOCKET !== 'off' ? addResidentAllocator(runtime, config, log) : undefined;
    return new IpamCheckerService(runtime, watcher, socket);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}

function addChecker(runtime: ServiceRuntime, config: IpamCheckerConfig, log: Logger): LeakWatcher {
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
  return watcher;
}

function addResidentAllocator(runtime: ServiceRuntime, config: IpamCheckerConfig, log: Logger): IpamSocketServer {
  let server: IpamSocketServer | undefined;
  const allocators = new ResidentAllocators({
    etcd: runtime.etcd,
    batchMax: config.IPAM_BATCH_MAX,
    logger: log,
    onBatch: (size) => server?.recordBatch(size),
  });
  server = new IpamSocketServer({ path: config.IPAM_SOCKET, allocators, metrics: runtime.metrics, logger: log });
  const socket = server;
  // Components stop in reverse: the socket first (requests in flight finish), then the copies.
  runtime.add({
    name: 'resident-allocators',
    start: async () => {},
    stop: async () => {
      await allocators.stop();
      await closeNeighbours();
    },
  });
  runtime.add({ name: 'ipam-socket', start: () => socket.start(), stop: () => socket.stop() });
  return socket;
}
