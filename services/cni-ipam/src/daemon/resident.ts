/**
 * The resident allocators of a node: for each cell a plugin conf names (and each key prefix, so a
 * test region can share the daemon), one watched copy of the cell's IPAM keys, one Allocator over
 * it, and one NodeQueue per node. The conf's etcd endpoints and identity are the direct plugin's:
 * the daemon allocates with its own connection and identity (the node's IPAM service).
 */
import type { Etcd3 } from '@berth/shared/etcd';
import { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import { Allocator, handleOf } from '../ipam/allocator.ts';
import type { IpamAllocator } from '../plugin/commands.ts';
import type { NetConf } from '../plugin/config.ts';
import { NodeQueue } from './node-queue.ts';
import { WatchedBackend } from './watched-backend.ts';

type CellView = {
  /** The cell, and its key prefix when it is not the region's default. */
  name: string;
  cell: string;
  keys: BerthKeys;
  backend: WatchedBackend;
  allocator: Allocator;
  queues: Map<string, NodeQueue>;
};

export type ResidentAllocatorsOptions = {
  etcd: Etcd3;
  batchMax: number;
  logger?: Logger | undefined;
  onBatch?: (size: number) => void;
};

export class ResidentAllocators {
  readonly #o: ResidentAllocatorsOptions;
  readonly #cells = new Map<string, CellView>();

  constructor(options: ResidentAllocatorsOptions) {
    this.#o = options;
  }

  /** The allocator the plugin's commands use for this conf. */
  for(conf: NetConf): IpamAllocator {
    const view = this.#cell(conf.ipam.etcdPrefix, conf.ipam.cell);
    const queue = (node: string): NodeQueue => {
      let q = view.queues.get(node);
      if (!q) {
        q = new NodeQueue({ allocator: view.allocator, batchMax: this.#o.batchMax, onBatch: this.#o.onBatch });
        view.queues.set(node, q);
      }
      return q;
    };
    return {
      allocate: (req) => queue(req.node).allocate(req),
      release: (network, containerId, ifName) => queue(conf.ipam.node).release(handleOf(network, containerId, ifName)),
      find: (handle) => view.allocator.find(handle),
    };
  }

  /** Per cell served: how many blocks its copy holds and whether it is synced with etcd. */
  cells(): Record<string, { blocks: number; synced: boolean }> {
    const out: Record<string, { blocks: number; synced: boolean }> = {};
    for (const view of this.#cells.values()) {
      out[view.name] = { blocks: view.backend.count(view.keys.ipamBlocks(view.cell)), synced: view.backend.synced };
    }
    return out;
  }

  async stop(): Promise<void> {
    await Promise.all([...this.#cells.values()].map((v) => v.backend.stop()));
    this.#cells.clear();
  }

  #cell(prefix: string, cell: string): CellView {
    const id = `${prefix} ${cell}`;
    let view = this.#cells.get(id);
    if (!view) {
      const keys = new BerthKeys(prefix);
      const backend = new WatchedBackend({
        etcd: this.#o.etcd,
        prefix: keys.ipam(cell),
        logger: this.#o.logger?.child({ cell, etcdPrefix: prefix }),
      });
      // Until the first list is in, reads go to etcd: the first request does not wait for it.
      backend.start().catch((err) => this.#o.logger?.warn({ err, cell }, 'watching the cell’s IPAM keys failed'));
      view = {
        name: prefix === '/berth' ? cell : `${cell} (${prefix})`,
        cell,
        keys,
        backend,
        allocator: new Allocator({ backend, keys, cell }),
        queues: new Map(),
      };
      this.#cells.set(id, view);
    }
    return view;
  }
}
