/**
 * The objects Berth keeps in a cell for an app: its Namespace (enforcing the restricted Pod
 * Security profile), one Service selecting the app's label (every version behind it shares the
 * traffic), one Deployment per version (restricted pods: docs/scheduler.md, "Tenant pods"), two
 * NetworkPolicies (deny all ingress, allow the load balancers), when the scheduler holds the cells
 * key the Secret its pods pull their images with, and when the app has secrets the Secret its pods
 * read them from. Each carries Berth's labels and a hash of what Berth wants of it, so an
 * unchanged object is never written again (a restarted scheduler on a converged region writes
 * nothing).
 */
import { createHash } from 'node:crypto';
import { type App, deploymentName, LABELS, MANAGED_BY, type Version } from '@berth/shared/model';
import { APP_SECRETS_NAME } from '@berth/shared/secrets';
import type {
  KubernetesObject,
  V1Deployment,
  V1EnvVar,
  V1Namespace,
  V1NetworkPolicy,
  V1Secret,
  V1Service,
} from '@kubernetes/client-node';
import type { AppSecretSet, SecretRefs } from './app-secrets.ts';
import { PULL_SECRET, type PullCredentials } from './pull-secret.ts';

export const SPEC_HASH = 'berth.dev/spec-hash';
/** On the app Secret: name → fingerprint of what it holds (what the pods reference when frozen). */
export const SECRET_FINGERPRINTS = 'berth.dev/secret-fingerprints';
/** On the pod template: a hash of the secrets' fingerprints, so a changed secret rolls the pods. */
export const SECRETS_HASH = 'berth.dev/secrets-hash';
/** The NetworkPolicies in every app namespace (docs/scheduler.md, "Tenant pods"). */
export const DEFAULT_DENY_POLICY = 'berth-default-deny';
export const ALLOW_LB_POLICY = 'berth-allow-lb';

export type ManifestOptions = {
  registry: string;
  preStopDelaySeconds: number;
  /** Set: every app namespace gets the pull Secret of its cell, and every pod pulls with it. */
  pull?: PullCredentials;
};

function labels(app: App, version?: string): Record<string, string> {
  return {
    [LABELS.managedBy]: MANAGED_BY,
    [LABELS.app]: app.name,
    [LABELS.owner]: app.owner,
    ...(version ? { [LABELS.version]: version } : {}),
  };
}

/** Stamps the object with the hash of its own content (the hash annotation left out). */
function withHash<T extends KubernetesObject>(obj: T): T {
  const hash = createHash('sha256').update(JSON.stringify(obj)).digest('hex').slice(0, 16);
  obj.metadata = { ...obj.metadata, annotations: { ...obj.metadata?.annotations, [SPEC_HASH]: hash } };
  return obj;
}

export function hashOf(obj: KubernetesObject | undefined): string | undefined {
  return obj?.metadata?.annotations?.[SPEC_HASH];
}

/*
 * The reconcile builds an app's objects on every pass; building and hashing them was a large part
 * of the scheduler's CPU. Desired state keeps one App and one Version object per change (they are
 * replaced, never mutated), so the objects are remembered per App and Version object. Callers
 * must not mutate what these functions return.
 */
const namespaces = new WeakMap<App, V1Namespace>();
const services = new WeakMap<App, V1Service>();
const pullSecrets = new WeakMap<App, { options: ManifestOptions; byCell: Map<string, V1Secret> }>();
const appSecrets = new WeakMap<AppSecretSet, { app: App; secret: V1Secret }>();
const policies = new WeakMap<App, Map<string, V1NetworkPolicy[]>>();
const deployments = new WeakMap<
  Version,
  { app: App; options: ManifestOptions; byReplicas: Map<string, V1Deployment> }
>();

function remembered<K extends object, V>(cache: WeakMap<K, V>, key: K, build: () => V): V {
  let value = cache.get(key);
  if (value === undefined) {
    value = build();
    cache.set(key, value);
  }
  return value;
}

export function namespaceFor(app: App): V1Namespace {
  return remembered(namespaces, app, () => buildNamespace(app));
}

export function serviceFor(app: App): V1Service {
  return remembered(services, app, () => buildService(app));
}

/** The app's pull Secret in a cell; undefined when the scheduler has no cells key. */
export function pullSecretFor(app: App, cell: string, options: ManifestOptions): V1Secret | undefined {
  const pull = options.pull;
  if (!pull) return undefined;
  let entry = pullSecrets.get(app);
  if (!entry || entry.options !== options) {
    entry = { options, byCell: new Map() };
    pullSecrets.set(app, entry);
  }
  let secret = entry.byCell.get(cell);
  if (!secret) {
    secret = buildPullSecret(app, pull.dockerConfigJson(cell));
    entry.byCell.set(cell, secret);
  }
  return secret;
}

/** The app's Secret of secrets: the values that opened, and the fingerprints of what it holds. */
export function appSecretFor(app: App, set: AppSecretSet): V1Secret {
  let entry = appSecrets.get(set);
  if (!entry || entry.app !== app) {
    entry = { app, secret: buildAppSecret(app, set) };
    appSecrets.set(set, entry);
  }
  return entry.secret;
}

/**
 * The app's NetworkPolicies in a cell: deny every ingress, then allow the app's ports from the
 * load balancers' addresses (`lbSources`, CIDRs: the cell's node addresses and LB_SOURCE_CIDRS).
 */
export function networkPoliciesFor(app: App, lbSources: readonly string[]): V1NetworkPolicy[] {
  let byApp = policies.get(app);
  if (!byApp) {
    byApp = new Map();
    policies.set(app, byApp);
  }
  const key = lbSources.join(',');
  let built = byApp.get(key);
  if (!built) {
    built = buildNetworkPolicies(app, lbSources);
    byApp.set(key, built);
  }
  return built;
}

/** The fingerprints a cell's app Secret says it holds (see SECRET_FINGERPRINTS). */
export function fingerprintsOf(secret: V1Secret | undefined): Record<string, string> {
  const raw = secret?.metadata?.annotations?.[SECRET_FINGERPRINTS];
  if (!raw) return {};
  try {
    const parsed = JSON.parse(raw) as unknown;
    if (!parsed || typeof parsed !== 'object') return {};
    return Object.fromEntries(Object.entries(parsed).filter(([, v]) => typeof v === 'string')) as Record<
      string,
      string
    >;
  } catch {
    return {};
  }
}

export function deploymentFor(
  app: App,
  version: Version,
  replicas: number,
  options: ManifestOptions,
  secrets?: SecretRefs,
): V1Deployment {
  let entry = deployments.get(version);
  if (!entry || entry.app !== app || entry.options !== options) {
    entry = { app, options, byReplicas: new Map() };
    deployments.set(version, entry);
  }
  const key = `${replicas}/${secrets?.hash ?? ''}`;
  let dep = entry.byReplicas.get(key);
  if (!dep) {
    dep = buildDeployment(app, version, replicas, options, secrets);
    entry.byReplicas.set(key, dep);
  }
  return dep;
}

/*
 * Pod Security admission enforces the restricted profile in every app namespace (the pods below
 * meet it); `latest` follows the cell's Kubernetes version.
 */
function buildNamespace(app: App): V1Namespace {
  return withHash({
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: {
      name: app.name,
      labels: {
        ...labels(app),
        'pod-security.kubernetes.io/enforce': 'restricted',
        'pod-security.kubernetes.io/enforce-version': 'latest',
        'pod-security.kubernetes.io/warn': 'restricted',
        'pod-security.kubernetes.io/warn-version': 'latest',
      },
    },
  });
}

function buildService(app: App): V1Service {
  return withHash({
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: app.name, namespace: app.name, labels: labels(app) },
    spec: {
      selector: { [LABELS.app]: app.name },
      ports: app.ports.map((p) => ({ name: p.name, port: p.port, targetPort: p.port, protocol: p.protocol })),
    },
  });
}

/*
 * The spec hash covers the data, so a rotated key changes it; it is a truncated SHA-256 of content
 * that includes a 256-bit HMAC, which tells nothing about the password. The writer compares the
 * data itself too (cell-writer.ts), so a Secret edited in the cell is put back.
 */
function buildPullSecret(app: App, dockerConfigJson: string): V1Secret {
  return withHash({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: PULL_SECRET, namespace: app.name, labels: labels(app) },
    type: 'kubernetes.io/dockerconfigjson',
    data: { '.dockerconfigjson': dockerConfigJson },
  });
}

/*
 * Only the values that opened go in; the fingerprints of what the Secret holds ride along as an
 * annotation (HMACs, safe to show), so a scheduler that cannot open a secret later still knows
 * what the pods reference. The spec hash covers the data (a changed value rewrites it); it is a
 * truncated SHA-256 over content that includes the values, stored in the cell next to them.
 */
function buildAppSecret(app: App, set: AppSecretSet): V1Secret {
  const held = Object.fromEntries(Object.keys(set.data).map((name) => [name, set.fingerprints[name] as string]));
  return withHash({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: APP_SECRETS_NAME,
      namespace: app.name,
      labels: labels(app),
      annotations: { [SECRET_FINGERPRINTS]: JSON.stringify(held) },
    },
    type: 'Opaque',
    data: { ...set.data },
  });
}

function buildNetworkPolicies(app: App, lbSources: readonly string[]): V1NetworkPolicy[] {
  const deny: V1NetworkPolicy = withHash({
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: DEFAULT_DENY_POLICY, namespace: app.name, labels: labels(app) },
    spec: { podSelector: {}, policyTypes: ['Ingress'] },
  });
  const allow: V1NetworkPolicy = withHash({
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: ALLOW_LB_POLICY, namespace: app.name, labels: labels(app) },
    spec: {
      podSelector: { matchLabels: { [LABELS.app]: app.name } },
      policyTypes: ['Ingress'],
      // No sources known: no rule (nothing allowed), rather than an empty `from` (everything).
      ingress:
        lbSources.length === 0
          ? []
          : [
              {
                // `from` as the API server reads it (client-node's model calls it `_from`; the
                // scheduler sends its objects' JSON as they are).
                from: lbSources.map((cidr) => ({ ipBlock: { cidr } })),
                ports: app.ports.map((p) => ({ port: p.port, protocol: p.protocol })),
              },
            ],
    },
  });
  return [deny, allow];
}

/** The container's env: plain values, less the names a secret provides, then the secrets' refs. */
function envOf(version: Version, secrets: SecretRefs | undefined): V1EnvVar[] {
  const fromSecrets = new Set(secrets?.names ?? []);
  const env: V1EnvVar[] = Object.entries(version.env)
    .filter(([name]) => !fromSecrets.has(name))
    .map(([name, value]) => ({ name, value }));
  for (const name of fromSecrets)
    env.push({ name, valueFrom: { secretKeyRef: { name: APP_SECRETS_NAME, key: name } } });
  return env.sort((a, b) => (a.name < b.name ? -1 : 1));
}

function buildDeployment(
  app: App,
  version: Version,
  replicas: number,
  options: ManifestOptions,
  secrets?: SecretRefs,
): V1Deployment {
  const hc = version.healthCheck;
  const probe = {
    // No path: a TCP connect, for apps without a health endpoint (the API's default check).
    ...(hc.path === undefined ? { tcpSocket: { port: hc.port } } : { httpGet: { path: hc.path, port: hc.port } }),
    initialDelaySeconds: hc.initialDelaySeconds,
    periodSeconds: hc.periodSeconds,
    timeoutSeconds: hc.timeoutSeconds,
    failureThreshold: hc.failureThreshold,
  };
  const podLabels = {
    [LABELS.managedBy]: MANAGED_BY,
    [LABELS.app]: app.name,
    [LABELS.version]: version.name,
  };
  return withHash({
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: deploymentName(app.name, version.name), namespace: app.name, labels: labels(app, version.name) },
    spec: {
      replicas,
      selector: { matchLabels: { [LABELS.app]: app.name, [LABELS.version]: version.name } },
      strategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
      template: {
        // Env is read when a container starts: a changed secret changes the template, which rolls.
        metadata: { labels: podLabels, ...(secrets ? { annotations: { [SECRETS_HASH]: secrets.hash } } : {}) },
        spec: {
          enableServiceLinks: false,
          // Tenant code gets no credential to the cell's API server.
          automountServiceAccountToken: false,
          // The restricted Pod Security profile: the image must run as a non-root (numeric) user.
          securityContext: { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } },
          // Cells route by pod address and run no cluster DNS: pods use the node's resolver.
          dnsPolicy: 'Default',
          terminationGracePeriodSeconds: options.preStopDelaySeconds + 30,
          // Only the name: a rotated key rewrites the Secret, not the Deployments (no rollout).
          ...(options.pull ? { imagePullSecrets: [{ name: PULL_SECRET }] } : {}),
          containers: [
            {
              name: 'app',
              image: `${options.registry}/${app.image}:${version.imageTag}`,
              ...(version.command.length > 0 ? { command: version.command } : {}),
              env: envOf(version, secrets),
              securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
              ports: version.ports.map((p) => ({ name: p.name, containerPort: p.port, protocol: p.protocol })),
              resources: {
                requests: { cpu: version.cpu, memory: version.memory },
                limits: { cpu: version.cpu, memory: version.memory },
              },
              readinessProbe: probe,
              livenessProbe: {
                ...probe,
                initialDelaySeconds: hc.initialDelaySeconds + 10,
                failureThreshold: hc.failureThreshold + 2,
              },
              // Keep serving while endpoints are removed, so traffic drains before the stop.
              ...(options.preStopDelaySeconds > 0
                ? { lifecycle: { preStop: { sleep: { seconds: options.preStopDelaySeconds } } } }
                : {}),
            },
          ],
        },
      },
    },
  });
}
