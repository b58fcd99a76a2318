/**
 * One app's plan for its cells, computed from plain data (what the placer decided, what each
 * cell's informers show) and nothing else: the objects to apply per cell, in the order a cell can
 * take them (the Namespace, then the pull Secret, the app Secret, the NetworkPolicies and the
 * Service, then the Deployments, which need the Secrets for their first pull and start), and the
 * Deployments to delete.
 * The reconciler executes it. Built whole, compared with what runs, then applied: ingress-nginx's
 * `syncIngress` is the model.
 *
 * Safe switches: a replica count only goes down once everything the app is bringing up is
 * available (rollback, gray steps, moves between cells), so the app never drops below its ready
 * count. A version the placer has not placed yet keeps what runs of it, untouched.
 */
import { type App, deploymentName, LABELS, type Version } from '@berth/shared/model';
import { APP_SECRETS_NAME } from '@berth/shared/secrets';
import type {
  KubernetesObject,
  V1Deployment,
  V1Namespace,
  V1NetworkPolicy,
  V1Secret,
  V1Service,
} from '@kubernetes/client-node';
import { type AppSecretSet, type SecretRefs, secretRefsOf } from '../apply/app-secrets.ts';
import {
  appSecretFor,
  deploymentFor,
  fingerprintsOf,
  type ManifestOptions,
  namespaceFor,
  networkPoliciesFor,
  pullSecretFor,
  serviceFor,
} from '../apply/manifests.ts';
import { PULL_SECRET } from '../apply/pull-secret.ts';

/** What the plan reads of a cell: its informers' copies of the app's objects. */
export type CellView = {
  name: string;
  deployments: {
    get(name: string, namespace: string): V1Deployment | undefined;
    list(namespace: string): readonly V1Deployment[];
  };
  namespaces: { get(name: string): V1Namespace | undefined };
  services: { get(name: string, namespace: string): V1Service | undefined };
  /** Berth's Secrets: pull and app secrets (watched only when the scheduler keeps either). */
  secrets: { get(name: string, namespace: string): V1Secret | undefined };
  networkPolicies: { get(name: string, namespace: string): V1NetworkPolicy | undefined };
  /** CIDRs the load balancers reach this cell's pods from (its nodes, and LB_SOURCE_CIDRS). */
  lbSources(): readonly string[];
};

export type Target = { version: Version; cells: Record<string, number> };

/** An object to keep in a cell: what Berth wants, and the informer's copy if it has one. */
export type ApplyItem = { desired: KubernetesObject; current: KubernetesObject | undefined };

export type CellPlan = {
  cell: string;
  /**
   * Applied in order: the Namespace, the pull Secret (when there is one) and the Service first,
   * then every Deployment (in any order).
   */
  first: ApplyItem[];
  deployments: ApplyItem[];
  delete: V1Deployment[];
};

export type AppPlanInput = {
  app: App;
  targets: Target[];
  /** Versions with no placement yet: what runs of them is left as it is. */
  unplaced: ReadonlySet<string>;
  /** Every cell the app may run in (for `settled`), and the ones to write now. */
  cells: CellView[];
  writable: ReadonlySet<string>;
  manifests: ManifestOptions;
  /**
   * The app's secrets as opened (apply/app-secrets.ts); undefined when it has none. When one of
   * them did not open, each cell keeps the app Secret it has and the pods keep referencing what
   * it holds: nothing is rolled to a state without a value the app had.
   */
  secrets?: AppSecretSet;
};

export type AppPlan = { settled: boolean; cells: CellPlan[] };

export function planApp(input: AppPlanInput): AppPlan {
  const settled = isSettled(input.app, input.targets, input.cells);
  const cells: CellPlan[] = [];
  for (const cell of input.cells) {
    if (!input.writable.has(cell.name)) continue;
    const plan = planCell(input, cell, settled);
    if (plan) cells.push(plan);
  }
  return { settled, cells };
}

/** True when every replica the app is bringing up is available: decreases may proceed. */
export function isSettled(app: App, targets: Target[], cells: CellView[]): boolean {
  for (const { version, cells: wanted } of targets) {
    for (const [cellName, want] of Object.entries(wanted)) {
      const cell = cells.find((c) => c.name === cellName);
      const dep = cell?.deployments.get(deploymentName(app.name, version.name), app.name);
      if (
        !dep ||
        (dep.status?.availableReplicas ?? 0) < want ||
        (dep.status?.observedGeneration ?? 0) < (dep.metadata?.generation ?? 0)
      ) {
        return false;
      }
    }
  }
  return true;
}

function planCell(input: AppPlanInput, cell: CellView, settled: boolean): CellPlan | undefined {
  const { app, targets, unplaced } = input;
  const running = cell.deployments.list(app.name);
  const wantsAny = targets.some((t) => (t.cells[cell.name] ?? 0) > 0) || running.length > 0;
  if (!wantsAny) return undefined;
  const plan: CellPlan = {
    cell: cell.name,
    first: [{ desired: namespaceFor(app), current: cell.namespaces.get(app.name) }],
    deployments: [],
    delete: [],
  };
  const pullSecret = pullSecretFor(app, cell.name, input.manifests);
  if (pullSecret) plan.first.push({ desired: pullSecret, current: cell.secrets.get(PULL_SECRET, app.name) });
  const refs = planSecrets(input, cell, plan);
  for (const policy of networkPoliciesFor(app, cell.lbSources())) {
    plan.first.push({ desired: policy, current: cell.networkPolicies.get(policy.metadata?.name as string, app.name) });
  }
  plan.first.push({ desired: serviceFor(app), current: cell.services.get(app.name, app.name) });
  const wanted = new Set<string>();
  for (const { version, cells } of targets) {
    const name = deploymentName(app.name, version.name);
    const target = cells[cell.name] ?? 0;
    const current = cell.deployments.get(name, app.name);
    const now = current?.spec?.replicas ?? 0;
    // Up at once; down only when everything coming up is available.
    const replicas = target >= now || settled ? target : now;
    if (replicas === 0) continue; // deleted below once settled; never created for nothing
    wanted.add(name);
    plan.deployments.push({ desired: deploymentFor(app, version, replicas, input.manifests, refs), current });
  }
  for (const dep of running) {
    const name = dep.metadata?.name as string;
    if (wanted.has(name)) continue;
    const version = dep.metadata?.labels?.[LABELS.version];
    if (version && unplaced.has(version)) continue;
    const stillTargeted = targets.some((t) => t.version.name === version);
    // A version scaled to 0 here waits for the switch to settle; a deleted version goes at once.
    if (stillTargeted && !settled) continue;
    plan.delete.push(dep);
  }
  return plan;
}

/**
 * The app Secret of a cell, added to the plan when it is to be written, and what the Deployments
 * reference. Every secret opened: the Secret holds them all (an empty one replaces a Secret whose
 * secrets were all deleted). One did not: the cell's Secret is left as it is, and the pods keep
 * referencing what it holds (its fingerprints annotation).
 */
function planSecrets(input: AppPlanInput, cell: CellView, plan: CellPlan): SecretRefs | undefined {
  const { app, secrets } = input;
  const current = cell.secrets.get(APP_SECRETS_NAME, app.name);
  if (secrets && secrets.failed.length > 0) return secretRefsOf(fingerprintsOf(current));
  if (!secrets && !current) return undefined;
  plan.first.push({ desired: appSecretFor(app, secrets ?? emptySet(app)), current });
  return secrets ? secretRefsOf(secrets.fingerprints) : undefined;
}

/** One empty set per app object (so its Secret is built once, like every other object). */
const emptySets = new WeakMap<object, AppSecretSet>();
function emptySet(app: object): AppSecretSet {
  let set = emptySets.get(app);
  if (!set) {
    set = { data: {}, fingerprints: {}, failed: [], errors: {}, since: '' };
    emptySets.set(app, set);
  }
  return set;
}
