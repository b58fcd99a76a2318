/**
 * The API's view of an app's pods in the cells (docs/instances.md): which cells an app runs in
 * (its placements), the pods of its versions there, their logs, and exec into them. Each cell is
 * reached with the API's own identity, `<cell>.api.kubeconfig` (infra/k8s/berth-rbac.yaml), or the
 * cell's admin kubeconfig where that is missing.
 */
import { NotFoundError } from '@berth/shared/errors';
import type { BerthKeys } from '@berth/shared/keys';
import { type CellClient, kubeErrorStatus, loadCellClient } from '@berth/shared/kube';
import type { Logger } from '@berth/shared/logging';
import { LABELS, placementSchema } from '@berth/shared/model';
import type { Store } from '@berth/shared/store';
import type { V1Pod } from '@kubernetes/client-node';
import { z } from 'zod';

/** The container Berth runs each version in (services/scheduler/src/apply/manifests.ts). */
export const APP_CONTAINER = 'app';

/** One pod of an app's version in a cell, as GET /apps/{app}/instances answers it. */
export const instanceSchema = z.object({
  cell: z.string(),
  version: z.string(),
  /** The pod's name. */
  instance: z.string(),
  node: z.string().nullable(),
  ip: z.string().nullable(),
  /** The pod's phase: Pending, Running, Succeeded, Failed, Unknown. */
  phase: z.string(),
  ready: z.boolean(),
  restarts: z.number().int(),
  startedAt: z.string().nullable(),
  /** Why the container last stopped, when it has restarted. */
  lastTermination: z
    .object({ reason: z.string().nullable(), exitCode: z.number().int().nullable(), finishedAt: z.string().nullable() })
    .nullable(),
});
export type Instance = z.output<typeof instanceSchema>;

export type CellPodsOptions = {
  store: Store;
  keys: BerthKeys;
  kubeconfigDir: string;
  identity: string;
  logger: Logger;
  /** How long one cell may take to list pods before it counts as unreachable. Default 5 s. */
  cellTimeoutMs?: number;
};

/** Pods of one cell, or why the cell did not answer. */
export type CellAnswer<T> = { cell: string; ok: true; value: T } | { cell: string; ok: false; error: string };

export class CellPods {
  readonly #o: CellPodsOptions;
  readonly #clients = new Map<string, CellClient>();

  constructor(options: CellPodsOptions) {
    this.#o = options;
  }

  /** The client of `cell`, made once (NotFoundError when it has no kubeconfig). */
  client(cell: string): CellClient {
    let client = this.#clients.get(cell);
    if (!client) {
      client = loadCellClient(this.#o.kubeconfigDir, cell, this.#o.identity);
      this.#clients.set(cell, client);
    }
    return client;
  }

  /** The cells any version of the app is placed in (replicas or not: a draining one still has pods). */
  async cellsOf(app: string): Promise<string[]> {
    const placements = await this.#o.store.list(this.#o.keys.appPlacements(app), placementSchema);
    const cells = new Set<string>();
    for (const p of placements) for (const cell of Object.keys(p.value.cells)) cells.add(cell);
    return [...cells].sort();
  }

  /** The app's pods in one cell (of one version when given), oldest first. */
  async podsIn(cell: string, app: string, version?: string): Promise<V1Pod[]> {
    const selector = [`${LABELS.app}=${app}`, ...(version ? [`${LABELS.version}=${version}`] : [])].join(',');
    const list = await withTimeout(
      this.client(cell).core.listNamespacedPod({ namespace: app, labelSelector: selector }),
      this.#o.cellTimeoutMs ?? 5000,
      `cell ${cell} did not answer`,
    );
    return list.items.sort((a, b) => created(a) - created(b) || name(a).localeCompare(name(b)));
  }

  /** `fn` in every cell at once; a cell that fails is reported, not thrown. */
  async eachCell<T>(cells: string[], fn: (cell: string) => Promise<T>): Promise<CellAnswer<T>[]> {
    return Promise.all(
      cells.map(async (cell): Promise<CellAnswer<T>> => {
        try {
          return { cell, ok: true, value: await fn(cell) };
        } catch (err) {
          this.#o.logger.warn({ cell, err, status: kubeErrorStatus(err) }, 'cell did not answer');
          return { cell, ok: false, error: (err as Error).message };
        }
      }),
    );
  }

  /** The instances of the app across its cells, and the cells that did not answer. */
  async instances(
    app: string,
    filter: { version?: string | undefined; cell?: string | undefined } = {},
  ): Promise<{ items: Instance[]; unreachable: string[] }> {
    const cells = (await this.cellsOf(app)).filter((c) => !filter.cell || c === filter.cell);
    const answers = await this.eachCell(cells, (cell) => this.podsIn(cell, app, filter.version));
    const items: Instance[] = [];
    const unreachable: string[] = [];
    for (const a of answers) {
      if (!a.ok) unreachable.push(a.cell);
      else for (const pod of a.value) items.push(instanceOf(a.cell, pod));
    }
    return { items, unreachable };
  }

  /** One instance by pod name, looked for in every cell of the app. */
  async find(app: string, instance: string): Promise<{ cell: string; pod: V1Pod }> {
    const cells = await this.cellsOf(app);
    const answers = await this.eachCell(cells, (cell) => this.podsIn(cell, app));
    for (const a of answers) {
      const pod = a.ok ? a.value.find((p) => name(p) === instance) : undefined;
      if (pod) return { cell: a.cell, pod };
    }
    throw new NotFoundError(`no instance "${instance}" of app "${app}"`);
  }
}

/** What the API shows of one pod. */
export function instanceOf(cell: string, pod: V1Pod): Instance {
  const status =
    pod.status?.containerStatuses?.find((c) => c.name === APP_CONTAINER) ?? pod.status?.containerStatuses?.[0];
  const last = status?.lastState?.terminated;
  const running = status?.state?.running;
  return {
    cell,
    version: pod.metadata?.labels?.[LABELS.version] ?? '',
    instance: name(pod),
    node: pod.spec?.nodeName ?? null,
    ip: pod.status?.podIP ?? null,
    phase: pod.status?.phase ?? 'Unknown',
    ready: pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false,
    restarts: status?.restartCount ?? 0,
    startedAt: iso(running?.startedAt) ?? iso(pod.status?.startTime),
    lastTermination: last
      ? { reason: last.reason ?? null, exitCode: last.exitCode ?? null, finishedAt: iso(last.finishedAt) }
      : null,
  };
}

function iso(d: Date | string | undefined): string | null {
  if (!d) return null;
  return d instanceof Date ? d.toISOString() : new Date(d).toISOString();
}

function name(pod: V1Pod): string {
  return pod.metadata?.name ?? '';
}

function created(pod: V1Pod): number {
  const t = pod.metadata?.creationTimestamp;
  return t ? new Date(t).getTime() : 0;
}

export async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(message)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
