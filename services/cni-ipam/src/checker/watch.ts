/**
 * The checker daemon's loop: checks the cell every
 * interval, exports `berth_ipam_leaked_ips`, publishes `ipam.leak-detected` when new leaks appear,
 * releases confirmed leaks only when auto-release is on, and releases blocks that stayed empty
 * for their grace.
 */
import type { EventInput } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import type { KvBackend } from '@berth/shared/store';
import type { V1Pod } from '@kubernetes/client-node';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Allocator } from '../ipam/allocator.ts';
import { type CheckReport, checkCell, LeakTracker, releaseLeaks } from './check.ts';

export type LeakWatcherOptions = {
  backend: KvBackend;
  keys: BerthKeys;
  cell: string;
  allocator: Allocator;
  pods: () => Promise<V1Pod[]>;
  intervalMs: number;
  autoRelease: boolean;
  releaseGraceMs: number;
  blockGraceMs: number;
  metrics: Registry;
  logger: Logger;
  publish?: (event: Omit<EventInput, 'actor'>) => Promise<void>;
  onReport?: (report: CheckReport) => void;
};

export class LeakWatcher {
  readonly name = 'leak-watcher';
  readonly #o: LeakWatcherOptions;
  readonly #tracker: LeakTracker;
  readonly #leaked: Gauge<'cell'>;
  readonly #released: Counter<'cell'>;
  readonly #failures: Counter<'cell'>;
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  #inFlight: Promise<unknown> | undefined;
  #announced = new Set<string>();

  constructor(options: LeakWatcherOptions) {
    this.#o = options;
    this.#tracker = new LeakTracker(options.releaseGraceMs);
    this.#leaked = new Gauge({
      name: 'berth_ipam_leaked_ips',
      help: 'Addresses held for pods that no longer use them',
      labelNames: ['cell'],
      registers: [options.metrics],
    });
    this.#released = new Counter({
      name: 'berth_ipam_released_total',
      help: 'Leaked addresses released automatically',
      labelNames: ['cell'],
      registers: [options.metrics],
    });
    this.#failures = new Counter({
      name: 'berth_ipam_check_failures_total',
      help: 'Checks that could not run (etcd or the API server unreachable)',
      labelNames: ['cell'],
      registers: [options.metrics],
    });
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    const tick = async () => {
      if (!this.#running) return;
      this.#inFlight = this.runOnce();
      await this.#inFlight;
      if (this.#running) this.#timer = setTimeout(tick, this.#o.intervalMs);
    };
    void tick();
  }

  async stop(): Promise<void> {
    this.#running = false;
    clearTimeout(this.#timer);
    await this.#inFlight;
  }

  async runOnce(): Promise<CheckReport | undefined> {
    const { cell, logger } = this.#o;
    let report: CheckReport;
    try {
      report = await checkCell({ backend: this.#o.backend, keys: this.#o.keys, cell, pods: this.#o.pods });
    } catch (err) {
      // No verdict from a check that could not see everything: nothing is released.
      this.#failures.inc({ cell });
      logger.warn({ err, cell }, 'check failed; nothing released');
      return undefined;
    }
    this.#leaked.set({ cell }, report.leaked.length);
    const fresh = report.leaked.filter((l) => !this.#announced.has(l.ip));
    this.#announced = new Set(report.leaked.map((l) => l.ip));
    if (fresh.length > 0) {
      logger.warn({ cell, leaked: fresh.map((l) => `${l.ip} (${l.reason})`) }, 'leaked addresses found');
      await this.#o
        .publish?.({
          kind: 'ipam',
          resourceId: cell,
          action: 'leak-detected',
          data: {
            count: fresh.length,
            leaks: fresh.map((l) => ({ ip: l.ip, node: l.node, pod: `${l.namespace}/${l.pod}`, reason: l.reason })),
          },
        })
        .catch((err: unknown) => logger.warn({ err }, 'leak event not published'));
    }
    const confirmed = this.#tracker.observe(report);
    if (this.#o.autoRelease && confirmed.length > 0) {
      const released = await releaseLeaks(this.#o.allocator, confirmed);
      for (const ip of released) this.#tracker.forget(ip);
      this.#released.inc({ cell }, released.length);
      logger.info({ cell, released }, 'released leaked addresses seen twice a grace apart');
    }
    const blocks = await this.#o.allocator.releaseEmptyBlocks(this.#o.blockGraceMs).catch(() => []);
    if (blocks.length > 0) logger.info({ cell, blocks }, 'released blocks that stayed empty');
    this.#o.onReport?.(report);
    return report;
  }
}
