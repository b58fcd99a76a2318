/**
 * One cell as the scheduler sees it: its clients, one informer per kind it reads (Nodes and Pods
 * for capacity, restarts and the load balancers' source addresses, Berth's Namespaces, Services,
 * Deployments and NetworkPolicies for what is applied, and its Secrets when it keeps any, Warning
 * Events for the activity feed), and whether it is reachable right now.
 */
import { type CellClient, type InformerEvent, ResilientInformer } from '@berth/shared/kube';
import type { Logger } from '@berth/shared/logging';
import { LABELS, MANAGED_BY, parseKubeQuantity } from '@berth/shared/model';
import {
  type CoreV1Event,
  type KubernetesObject,
  NetworkingV1Api,
  type V1Deployment,
  type V1Namespace,
  type V1NetworkPolicy,
  type V1Node,
  type V1Pod,
  type V1Secret,
  type V1Service,
} from '@kubernetes/client-node';
import { CellWriteClient } from '../apply/keep-alive.ts';

const MANAGED = `${LABELS.managedBy}=${MANAGED_BY}`;

/**
 * How long after Berth created a Namespace an object missing from the informers is taken as
 * absent without reading it: nobody else has had time to put one of the same name there.
 */
const FRESH_NAMESPACE_MS = 60_000;

export type CellCapacity = {
  /** Sum of allocatable over Ready, schedulable nodes. */
  allocatableCpuMillis: number;
  allocatableMemoryBytes: number;
  /** Requests of pods that are not this scheduler's (its own come from its placements). */
  otherCpuMillis: number;
  otherMemoryBytes: number;
};

export type CellRuntimeOptions = {
  client: CellClient;
  logger: Logger;
  /** Something the scheduler reads changed: re-evaluate (the app, when known). */
  onChange: (app: string | undefined) => void;
  onWarningEvent?: (event: CoreV1Event) => void;
  onPodEvent?: (event: InformerEvent, pod: V1Pod) => void;
  /**
   * The scheduler keeps Secrets in the app namespaces (pull Secrets, app secrets): watch Berth's
   * (and only those, by label). Off, nothing reads Secrets at all.
   */
  secrets?: boolean;
  /** CIDRs the load balancers connect from besides the cell's nodes (LB_SOURCE_CIDRS). */
  lbSourceCidrs?: readonly string[];
};

export class CellRuntime {
  readonly name: string;
  readonly client: CellClient;
  readonly nodes: ResilientInformer<V1Node>;
  readonly pods: ResilientInformer<V1Pod>;
  readonly namespaces: ResilientInformer<V1Namespace>;
  readonly services: ResilientInformer<V1Service>;
  readonly deployments: ResilientInformer<V1Deployment>;
  /** Berth's Secrets; never started (always empty) when the scheduler keeps none. */
  readonly secrets: ResilientInformer<V1Secret>;
  readonly networkPolicies: ResilientInformer<V1NetworkPolicy>;
  readonly events: ResilientInformer<CoreV1Event>;
  /** Every Namespace, Berth's or not: tells the writer whether a Namespace it creates is free. */
  readonly allNamespaces: ResilientInformer<V1Namespace>;
  /** What the writer writes with: one keep-alive connection pool per cell. */
  readonly writes: CellWriteClient;
  readonly #all: ResilientInformer<KubernetesObject>[];
  /**
   * What this scheduler wrote to an object and its informers have not shown yet (kind/ns/name →
   * what was written): a reconcile that runs before the watch catches up must not write it again.
   * Any event about the object makes the informer's copy the truth again.
   */
  readonly #written = new Map<string, string>();
  readonly #restarts = new PodRestarts();
  /** Namespaces this scheduler created (name → when), see FRESH_NAMESPACE_MS. */
  readonly #created = new Map<string, number>();
  readonly #lbExtra: readonly string[];
  #lbSources: { key: string; cidrs: readonly string[] } = { key: '', cidrs: [] };
  #started = false;

  constructor(options: CellRuntimeOptions) {
    const { client, logger } = options;
    this.name = client.cell;
    this.client = client;
    const appOf = (obj: KubernetesObject) => obj.metadata?.labels?.[LABELS.app] ?? obj.metadata?.namespace;
    // A cell that comes back is noticed within 5 s however long it was gone: its return starts
    // the recovery hold, and a retry every 5 s per informer costs a cell next to nothing.
    const common = { kubeConfig: client.kubeConfig, logger, backoffMaxMs: 5000 };
    this.nodes = new ResilientInformer<V1Node>({
      ...common,
      name: `${this.name}/nodes`,
      path: '/api/v1/nodes',
      list: (s) => client.core.listNode(s),
      onEvent: () => {
        options.onChange(undefined);
        // A node address the load balancers connect from changed: every app's allow policy.
        if (this.#refreshLbSources()) for (const ns of this.namespaces.list()) options.onChange(ns.metadata?.name);
      },
    });
    this.pods = new ResilientInformer<V1Pod>({
      ...common,
      name: `${this.name}/pods`,
      path: '/api/v1/pods',
      list: (s) => client.core.listPodForAllNamespaces(s),
      onEvent: (event, pod) => {
        options.onPodEvent?.(event, pod);
        // A pod's readiness reaches the reconcile through its Deployment's status; what only a pod
        // tells is its restarts (the status rows' count). A rollout sends several events per pod:
        // the app is reconciled only when its restarts changed, not on every one of them.
        if (pod.metadata?.labels?.[LABELS.managedBy] === MANAGED_BY && this.#restarts.changed(event, pod)) {
          options.onChange(appOf(pod));
        }
      },
    });
    this.namespaces = new ResilientInformer<V1Namespace>({
      ...common,
      name: `${this.name}/namespaces`,
      path: '/api/v1/namespaces',
      labelSelector: MANAGED,
      list: (s) => client.core.listNamespace(s),
      onEvent: (_e, ns) => {
        this.#forget('Namespace', ns);
        options.onChange(ns.metadata?.name);
      },
    });
    this.services = new ResilientInformer<V1Service>({
      ...common,
      name: `${this.name}/services`,
      path: '/api/v1/services',
      labelSelector: MANAGED,
      list: (s) => client.core.listServiceForAllNamespaces(s),
      onEvent: (_e, svc) => {
        this.#forget('Service', svc);
        options.onChange(appOf(svc));
      },
    });
    this.deployments = new ResilientInformer<V1Deployment>({
      ...common,
      name: `${this.name}/deployments`,
      path: '/apis/apps/v1/deployments',
      labelSelector: MANAGED,
      list: (s) => client.apps.listDeploymentForAllNamespaces(s),
      onEvent: (_e, d) => {
        this.#forget('Deployment', d);
        options.onChange(appOf(d));
      },
    });
    this.secrets = new ResilientInformer<V1Secret>({
      ...common,
      name: `${this.name}/secrets`,
      path: '/api/v1/secrets',
      labelSelector: MANAGED,
      list: (s) => client.core.listSecretForAllNamespaces(s),
      onEvent: (_e, secret) => {
        this.#forget('Secret', secret);
        options.onChange(appOf(secret));
      },
    });
    const networking = client.kubeConfig.makeApiClient(NetworkingV1Api);
    this.networkPolicies = new ResilientInformer<V1NetworkPolicy>({
      ...common,
      name: `${this.name}/networkpolicies`,
      path: '/apis/networking.k8s.io/v1/networkpolicies',
      labelSelector: MANAGED,
      list: (s) => networking.listNetworkPolicyForAllNamespaces(s),
      onEvent: (_e, policy) => {
        this.#forget('NetworkPolicy', policy);
        options.onChange(appOf(policy));
      },
    });
    this.#lbExtra = options.lbSourceCidrs ?? [];
    this.#refreshLbSources();
    this.events = new ResilientInformer<CoreV1Event>({
      ...common,
      name: `${this.name}/events`,
      path: '/api/v1/events',
      fieldSelector: 'type=Warning',
      list: (s) => client.core.listEventForAllNamespaces(s),
      onEvent: (event, e) => {
        if (event !== 'delete' && this.events.synced) options.onWarningEvent?.(e);
      },
    });
    this.allNamespaces = new ResilientInformer<V1Namespace>({
      ...common,
      name: `${this.name}/all-namespaces`,
      path: '/api/v1/namespaces',
      list: (s) => client.core.listNamespace(s),
      onEvent: (event, ns) => {
        if (event === 'delete') this.#created.delete(ns.metadata?.name ?? '');
      },
    });
    this.writes = new CellWriteClient(client.kubeConfig);
    this.#all = [
      this.nodes,
      this.pods,
      this.namespaces,
      this.services,
      this.deployments,
      ...(options.secrets ? [this.secrets] : []),
      this.networkPolicies,
      this.events,
      this.allNamespaces,
    ] as ResilientInformer<KubernetesObject>[];
  }

  /**
   * The CIDRs the load balancers reach this cell's pods from: each node's InternalIP (a region's
   * nginx on a node's host network connects from the node's address: on the real cells the
   * host's side of the cell bridge is the node IP) and LB_SOURCE_CIDRS. The same array while
   * nothing changed (the policies built from it are cached by it).
   */
  lbSources(): readonly string[] {
    // Read from the informer each time (its first list announces no event), cached by content.
    this.#refreshLbSources();
    return this.#lbSources.cidrs;
  }

  #refreshLbSources(): boolean {
    const cidrs = new Set(this.#lbExtra);
    for (const node of this.nodes.list()) {
      for (const a of node.status?.addresses ?? []) {
        if (a.type !== 'InternalIP') continue;
        cidrs.add(a.address.includes(':') ? `${a.address}/128` : `${a.address}/32`);
      }
    }
    const sorted = [...cidrs].sort();
    const key = sorted.join(',');
    if (key === this.#lbSources.key) return false;
    this.#lbSources = { key, cidrs: sorted };
    return true;
  }

  /** Starts every informer; does not wait for them (an unreachable cell must not block the others). */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    for (const informer of this.#all) void informer.start();
  }

  async stop(): Promise<void> {
    this.#started = false;
    await Promise.all(this.#all.map((i) => i.stop()));
    this.writes.close();
  }

  /** Records a write of an object with its `kind` set (`what`: a signature of the content, or 'deleted'). */
  noteWritten(obj: KubernetesObject, what: string): void {
    this.#written.set(objectKey(obj.kind, obj), what);
  }

  /** The signature of the last write not yet seen by the informers, if any. */
  lastWritten(obj: KubernetesObject): string | undefined {
    return this.#written.get(objectKey(obj.kind, obj));
  }

  /**
   * Whether the cell has a Namespace of this name, Berth's or not, as far as a synced informer
   * knows; undefined when it cannot tell (not listed yet, or disconnected).
   */
  namespaceKnown(name: string): { exists: V1Namespace | undefined } | undefined {
    if (!this.allNamespaces.synced || this.allNamespaces.stale) return undefined;
    return { exists: this.allNamespaces.get(name) };
  }

  /** Records that this scheduler created the Namespace (it did not exist before its apply). */
  noteNamespaceCreated(name: string, now = Date.now()): void {
    this.#created.set(name, now);
  }

  /** The Namespace was created by this scheduler within FRESH_NAMESPACE_MS. */
  createdRecently(namespace: string, now = Date.now()): boolean {
    const at = this.#created.get(namespace);
    return at !== undefined && now - at < FRESH_NAMESPACE_MS;
  }

  #forget(kind: string, obj: KubernetesObject): void {
    this.#written.delete(objectKey(kind, obj));
  }

  /** Every informer has listed and none is disconnected. */
  get reachable(): boolean {
    return this.#all.every((i) => i.synced && !i.stale);
  }

  get synced(): boolean {
    return this.#all.every((i) => i.synced);
  }

  /**
   * The cell's allocatable cpu and memory, and what pods other than this scheduler's own versions
   * request. `isOurs(app, version)` says which Berth pods are counted through placements instead
   * (pods of another Berth installation sharing the cell count as any other pod).
   */
  capacity(isOurs: (app: string, version: string) => boolean = () => true): CellCapacity {
    let allocatableCpuMillis = 0;
    let allocatableMemoryBytes = 0;
    for (const node of this.nodes.list()) {
      if (node.spec?.unschedulable) continue;
      const ready = node.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
      if (!ready) continue;
      const alloc = node.status?.allocatable ?? {};
      allocatableCpuMillis += safe(parseKubeQuantity(alloc.cpu ?? '0', 'cpu'));
      allocatableMemoryBytes += safe(parseKubeQuantity(alloc.memory ?? '0', 'memory'));
    }
    let otherCpuMillis = 0;
    let otherMemoryBytes = 0;
    for (const pod of this.pods.list()) {
      const labels = pod.metadata?.labels ?? {};
      if (labels[LABELS.managedBy] === MANAGED_BY && isOurs(labels[LABELS.app] ?? '', labels[LABELS.version] ?? '')) {
        continue;
      }
      if (!pod.spec?.nodeName || pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') continue;
      for (const c of pod.spec.containers ?? []) {
        otherCpuMillis += safe(parseKubeQuantity(c.resources?.requests?.cpu ?? '0', 'cpu'));
        otherMemoryBytes += safe(parseKubeQuantity(c.resources?.requests?.memory ?? '0', 'memory'));
      }
    }
    return { allocatableCpuMillis, allocatableMemoryBytes, otherCpuMillis, otherMemoryBytes };
  }

  /** Berth's pods of one version in this cell. */
  podsOf(app: string, version: string): V1Pod[] {
    return this.pods
      .list(app)
      .filter(
        (p) =>
          p.metadata?.labels?.[LABELS.version] === version && p.metadata?.labels?.[LABELS.managedBy] === MANAGED_BY,
      );
  }
}

function objectKey(kind: string | undefined, obj: KubernetesObject): string {
  return `${kind ?? '?'}/${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`;
}

/** Restarts of each pod as last seen: tells which pod events change a status row. */
export class PodRestarts {
  readonly #seen = new Map<string, number>();

  /** Records the event; true when the pod's restarts differ from what was seen before. */
  changed(event: InformerEvent, pod: V1Pod): boolean {
    const key = `${pod.metadata?.namespace}/${pod.metadata?.name}`;
    const before = this.#seen.get(key) ?? 0;
    if (event === 'delete') {
      this.#seen.delete(key);
      return before > 0;
    }
    const now = restartsOf(pod);
    this.#seen.set(key, now);
    return now !== before;
  }
}

/** Restarts of every container of a pod. */
export function restartsOf(pod: V1Pod): number {
  return (pod.status?.containerStatuses ?? []).reduce((n, c) => n + (c.restartCount ?? 0), 0);
}

function safe(n: number): number {
  return Number.isFinite(n) ? n : 0;
}
