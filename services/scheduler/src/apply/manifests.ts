/**
 * The objects Berth keeps in a cell for an app: its Namespace, one Service selecting the app's
 * label (every version behind it shares the traffic), one Deployment per version, and, when the
 * scheduler holds the cells key, the Secret its pods pull their images with. Each carries
 * Berth's labels and a hash of what Berth wants of it, so an unchanged object is never written
 * again (a restarted scheduler on a converged region writes nothing).
 */
import { createHash } from 'node:crypto';
import { type App, deploymentName, LABELS, MANAGED_BY, type Version } from '@berth/shared/model';
import type { KubernetesObject, V1Deployment, V1Namespace, V1Secret, V1Service } from '@kubernetes/client-node';
import { PULL_SECRET, type PullCredentials } from './pull-secret.ts';

export const SPEC_HASH = 'berth.dev/spec-hash';

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
const deployments = new WeakMap<
  Version,
  { app: App; options: ManifestOptions; byReplicas: Map<number, V1Deployment> }
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

export function deploymentFor(app: App, version: Version, replicas: number, options: ManifestOptions): V1Deployment {
  let entry = deployments.get(version);
  if (!entry || entry.app !== app || entry.options !== options) {
    entry = { app, options, byReplicas: new Map() };
    deployments.set(version, entry);
  }
  let dep = entry.byReplicas.get(replicas);
  if (!dep) {
    dep = buildDeployment(app, version, replicas, options);
    entry.byReplicas.set(replicas, dep);
  }
  return dep;
}

function buildNamespace(app: App): V1Namespace {
  return withHash({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: app.name, labels: labels(app) } });
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

function buildDeployment(app: App, version: Version, replicas: number, options: ManifestOptions): V1Deployment {
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
        metadata: { labels: podLabels },
        spec: {
          enableServiceLinks: false,
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
              env: Object.entries(version.env)
                .sort(([a], [b]) => (a < b ? -1 : 1))
                .map(([name, value]) => ({ name, value })),
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
