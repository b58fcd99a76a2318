/**
 * One cell as discovery reads it: Berth's EndpointSlices (the Service's labels are copied onto
 * them, `berth.dev/app` among them) and Berth's Pods (whose `berth.dev/version` label says which
 * version an endpoint serves), each through a ResilientInformer (relists on 410, restarts after
 * errors and silent stalls, keeps its cache while the cell is unreachable).
 */
import { type CellClient, ResilientInformer } from '@berth/shared/kube';
import type { Logger } from '@berth/shared/logging';
import { LABELS, MANAGED_BY } from '@berth/shared/model';
import type { V1EndpointSlice, V1Pod } from '@kubernetes/client-node';
import { type AppEndpoints, endpointsByApp } from '../upstreams/build.ts';

const MANAGED = `${LABELS.managedBy}=${MANAGED_BY}`;

export type CellSourceOptions = {
  client: CellClient;
  logger: Logger;
  /** Something about this app changed in the cell. */
  onAppChange: (app: string) => void;
  /** The cell became reachable or unreachable (every app of it is re-evaluated). */
  onReachableChange: (reachable: boolean) => void;
  /** Restart a watch that sent nothing (not even a bookmark) for this long. */
  stallMs?: number;
};

export class CellSource {
  readonly name: string;
  readonly slices: ResilientInformer<V1EndpointSlice>;
  readonly pods: ResilientInformer<V1Pod>;
  /** When both informers last became synced after being unsynced or stale. */
  #syncedAt: string | null = null;
  #reachable = false;
  readonly #options: CellSourceOptions;

  constructor(options: CellSourceOptions) {
    const { client, logger } = options;
    this.#options = options;
    this.name = client.cell;
    const common = {
      kubeConfig: client.kubeConfig,
      logger,
      labelSelector: MANAGED,
      backoffMaxMs: 5000,
      onStaleChange: () => this.#evaluate(),
      ...(options.stallMs ? { stallMs: options.stallMs } : {}),
    };
    this.slices = new ResilientInformer<V1EndpointSlice>({
      ...common,
      name: `${this.name}/endpointslices`,
      path: '/apis/discovery.k8s.io/v1/endpointslices',
      list: (s) => client.discovery.listEndpointSliceForAllNamespaces(s),
      onEvent: (_e, slice) => {
        const app = slice.metadata?.labels?.[LABELS.app];
        if (app) options.onAppChange(app);
        this.#evaluate();
      },
    });
    this.pods = new ResilientInformer<V1Pod>({
      ...common,
      name: `${this.name}/pods`,
      path: '/api/v1/pods',
      list: (s) => client.core.listPodForAllNamespaces(s),
      onEvent: (_e, pod) => {
        const app = pod.metadata?.labels?.[LABELS.app];
        if (app) options.onAppChange(app);
        this.#evaluate();
      },
    });
  }

  start(): void {
    void this.slices.start().then(() => this.#evaluate());
    void this.pods.start().then(() => this.#evaluate());
  }

  async stop(): Promise<void> {
    await Promise.all([this.slices.stop(), this.pods.stop()]);
  }

  /** Both informers have listed at least once: their caches are this cell's truth (maybe stale). */
  get listed(): boolean {
    return this.slices.synced && this.pods.synced;
  }

  /** Both informers are listed and connected right now. */
  get reachable(): boolean {
    return this.#reachable;
  }

  get syncedAt(): string | null {
    return this.#syncedAt;
  }

  /**
   * One app's endpoints in the cell by version, or undefined when it has none. The scheduler puts
   * an app's Service in the Namespace named after the app, so only that Namespace's slices are
   * read (the informer indexes by Namespace); the app label must still match.
   */
  endpointsOf(app: string): AppEndpoints | undefined {
    const slices = this.slices.list(app).filter((s) => s.metadata?.labels?.[LABELS.app] === app);
    if (slices.length === 0) return undefined;
    return endpointsByApp(
      slices,
      (namespace, pod) => this.pods.get(pod, namespace)?.metadata?.labels?.[LABELS.version],
    ).get(app);
  }

  /** Endpoints of every Berth slice in the cell (for the gauge; no version lookups). */
  endpointCount(): number {
    let n = 0;
    for (const slice of this.slices.list()) n += slice.endpoints?.length ?? 0;
    return n;
  }

  #evaluate(): void {
    const reachable = this.listed && !this.slices.stale && !this.pods.stale;
    if (reachable === this.#reachable) return;
    this.#reachable = reachable;
    if (reachable) this.#syncedAt = new Date().toISOString();
    this.#options.onReachableChange(reachable);
  }
}
