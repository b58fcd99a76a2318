import { type App, appSchema, type Version, versionSchema } from '@berth/shared/model';
import { describe, expect, it } from 'vitest';
import { deploymentFor, hashOf, namespaceFor, serviceFor } from './manifests.ts';

const at = new Date(0).toISOString();
const app: App = appSchema.parse({
  name: 'shop',
  region: 'local',
  image: 'team/shop',
  healthCheck: { port: 8080 },
  ports: [{ name: 'http', port: 8080 }],
  owner: 'ann',
  createdAt: at,
  updatedAt: at,
});

function version(healthCheck: Record<string, unknown>): Version {
  return versionSchema.parse({
    app: 'shop',
    name: 'v1',
    number: 1,
    imageTag: 'main',
    replicas: 1,
    cpu: '100m',
    memory: '64Mi',
    ports: [{ name: 'http', port: 8080 }],
    healthCheck,
    createdAt: at,
    createdBy: 'ann',
    updatedAt: at,
  });
}

function probes(v: Version) {
  const container = deploymentFor(app, v, 1, { registry: 'registry.local', preStopDelaySeconds: 0 }).spec?.template.spec
    ?.containers[0];
  return { readiness: container?.readinessProbe, liveness: container?.livenessProbe };
}

describe('the health probe', () => {
  it('is a TCP connect to the port when the check has no path', () => {
    const { readiness, liveness } = probes(version({ port: 8080 }));
    expect(readiness).toMatchObject({ tcpSocket: { port: 8080 }, periodSeconds: 10, failureThreshold: 3 });
    expect(readiness?.httpGet).toBeUndefined();
    expect(liveness).toMatchObject({ tcpSocket: { port: 8080 }, failureThreshold: 5 });
  });

  it('is an HTTP GET of the path when the check has one', () => {
    const { readiness, liveness } = probes(version({ path: '/healthz', port: 3000 }));
    expect(readiness).toMatchObject({ httpGet: { path: '/healthz', port: 3000 } });
    expect(readiness?.tcpSocket).toBeUndefined();
    expect(liveness).toMatchObject({ httpGet: { path: '/healthz', port: 3000 } });
  });
});

describe('the objects of an unchanged app', () => {
  const options = { registry: 'registry.local', preStopDelaySeconds: 0 };

  it('are built once per app, version and size, and anew when any of them changes', () => {
    const v = version({ port: 8080 });
    const first = deploymentFor(app, v, 2, options);
    expect(deploymentFor(app, v, 2, options)).toBe(first);
    const three = deploymentFor(app, v, 3, options);
    expect(three.spec?.replicas).toBe(3);
    expect(hashOf(three)).not.toBe(hashOf(first));
    // A changed version arrives as a new object (desired state never mutates one).
    const scaledEnv = deploymentFor(app, { ...v, env: { MODE: 'blue' } }, 2, options);
    expect(scaledEnv).not.toBe(first);
    expect(hashOf(scaledEnv)).not.toBe(hashOf(first));
    const renamedImage = deploymentFor({ ...app, image: 'team/other' }, v, 2, options);
    expect(renamedImage.spec?.template.spec?.containers[0]?.image).toBe('registry.local/team/other:main');
    expect(namespaceFor(app)).toBe(namespaceFor(app));
    expect(serviceFor(app)).toBe(serviceFor(app));
    // The same content built from other objects hashes the same: no write for a mere re-read.
    expect(hashOf(deploymentFor({ ...app }, { ...v }, 2, options))).toBe(hashOf(first));
  });
});
