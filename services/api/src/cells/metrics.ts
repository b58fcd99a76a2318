/**
 * CPU, memory and restarts of an app per version and cell (docs/instances.md, "Metrics"): the
 * pods from the cell's API server, their usage from the kubelets' summary API
 * (`/api/v1/nodes/{node}/proxy/stats/summary`). A node whose kubelet does not answer (KWOK's
 * simulated nodes serve no summary) leaves usage null for its instances, counted in `unmeasured`.
 */
import type { Logger } from '@berth/shared/logging';
import { LABELS } from '@berth/shared/model';
import type { V1Pod } from '@kubernetes/client-node';
import { z } from 'zod';
import { cellGet } from './logs.ts';
import { APP_CONTAINER, type CellPods, withTimeout } from './pods.ts';

/** Usage of one version in one cell, as GET /apps/{app}/metrics answers it. */
export const versionCellMetricsSchema = z.object({
  version: z.string(),
  cell: z.string(),
  instances: z.number().int(),
  ready: z.number().int(),
  /** Instances whose kubelet reported usage (KWOK's simulated nodes report none). */
  measured: z.number().int(),
  /** Cores in use (the kubelets' last sample), summed; null when no instance was measured. */
  cpuCores: z.number().nullable(),
  /** Working-set bytes, summed; null when no instance was measured. */
  memoryBytes: z.number().nullable(),
  restarts: z.number().int(),
  restartedWithinWindow: z.number().int(),
});
export type VersionCellMetrics = z.output<typeof versionCellMetricsSchema>;

type Summary = {
  pods?: Array<{
    podRef?: { name?: string; namespace?: string };
    containers?: Array<{
      name?: string;
      cpu?: { usageNanoCores?: number };
      memory?: { workingSetBytes?: number };
    }>;
  }>;
};

export class CellMetrics {
  readonly #pods: CellPods;
  readonly #logger: Logger;

  constructor(options: { pods: CellPods; logger: Logger }) {
    this.#pods = options.pods;
    this.#logger = options.logger;
  }

  async collect(
    app: string,
    filter: { version?: string | undefined; windowMs: number },
  ): Promise<{ items: VersionCellMetrics[]; unreachable: string[] }> {
    const cells = await this.#pods.cellsOf(app);
    const since = Date.now() - filter.windowMs;
    const answers = await this.#pods.eachCell(cells, async (cell) => {
      const pods = await this.#pods.podsIn(cell, app, filter.version);
      const usage = await this.#usage(cell, app, pods);
      const rows = new Map<string, VersionCellMetrics>();
      for (const pod of pods) {
        const version = pod.metadata?.labels?.[LABELS.version] ?? '';
        let row = rows.get(version);
        if (!row) {
          row = {
            version,
            cell,
            instances: 0,
            ready: 0,
            measured: 0,
            cpuCores: null,
            memoryBytes: null,
            restarts: 0,
            restartedWithinWindow: 0,
          };
          rows.set(version, row);
        }
        row.instances += 1;
        if (pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) row.ready += 1;
        const status = pod.status?.containerStatuses?.find((c) => c.name === APP_CONTAINER);
        row.restarts += status?.restartCount ?? 0;
        const finished = status?.lastState?.terminated?.finishedAt;
        if (finished && new Date(finished).getTime() >= since) row.restartedWithinWindow += 1;
        const u = usage.get(pod.metadata?.name ?? '');
        if (u) {
          row.measured += 1;
          row.cpuCores = round((row.cpuCores ?? 0) + u.cpuCores);
          row.memoryBytes = (row.memoryBytes ?? 0) + u.memoryBytes;
        }
      }
      return [...rows.values()];
    });
    const items: VersionCellMetrics[] = [];
    const unreachable: string[] = [];
    for (const a of answers) {
      if (a.ok) items.push(...a.value);
      else unreachable.push(a.cell);
    }
    items.sort((a, b) => a.version.localeCompare(b.version, 'en', { numeric: true }) || a.cell.localeCompare(b.cell));
    return { items, unreachable };
  }

  /** Per pod name: its app container's usage, from the summaries of the nodes it runs on. */
  async #usage(
    cell: string,
    app: string,
    pods: V1Pod[],
  ): Promise<Map<string, { cpuCores: number; memoryBytes: number }>> {
    const nodes = [...new Set(pods.map((p) => p.spec?.nodeName).filter((n): n is string => Boolean(n)))];
    const out = new Map<string, { cpuCores: number; memoryBytes: number }>();
    await Promise.all(
      nodes.map(async (node) => {
        try {
          const summary = await withTimeout(this.#summary(cell, node), 5000, `the kubelet of ${node} did not answer`);
          for (const p of summary.pods ?? []) {
            if (p.podRef?.namespace !== app || !p.podRef.name) continue;
            const c = p.containers?.find((x) => x.name === APP_CONTAINER);
            if (!c?.cpu && !c?.memory) continue;
            out.set(p.podRef.name, {
              cpuCores: (c.cpu?.usageNanoCores ?? 0) / 1e9,
              memoryBytes: c.memory?.workingSetBytes ?? 0,
            });
          }
        } catch (err) {
          this.#logger.debug({ err, cell, node }, 'no kubelet summary');
        }
      }),
    );
    return out;
  }

  async #summary(cell: string, node: string): Promise<Summary> {
    const res = await cellGet(this.#pods, cell, `/api/v1/nodes/${encodeURIComponent(node)}/proxy/stats/summary`);
    let body = '';
    res.setEncoding('utf8');
    for await (const chunk of res) body += chunk;
    return JSON.parse(body) as Summary;
  }
}

function round(n: number): number {
  return Math.round(n * 1e6) / 1e6;
}
