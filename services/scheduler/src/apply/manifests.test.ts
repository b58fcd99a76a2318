import { type App, appSchema, type Version, versionSchema } from '@berth/shared/model';
import { describe, expect, it } from 'vitest';
import { deploymentFor } from './manifests.ts';

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
