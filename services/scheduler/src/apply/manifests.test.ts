import { scrubSecrets } from '@berth/shared/logging';
import { type App, appSchema, LABELS, MANAGED_BY, type Version, versionSchema } from '@berth/shared/model';
import { cellPullCredential, robotKeySchema } from '@berth/shared/registry';
import { type AppSecretRecord, SecretsKeyring } from '@berth/shared/secrets';
import { describe, expect, it } from 'vitest';
import { AppSecretsOpener, secretRefsOf } from './app-secrets.ts';
import {
  appSecretFor,
  deploymentFor,
  hashOf,
  type ManifestOptions,
  namespaceFor,
  networkPoliciesFor,
  pullSecretFor,
  SECRETS_HASH,
  serviceFor,
} from './manifests.ts';
import { CellPullCredentials } from './pull-secret.ts';

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

describe('the registry pull Secret', () => {
  const cellsKey = robotKeySchema.parse('5a'.repeat(32));
  const withKey = (key: Buffer): ManifestOptions => ({
    registry: 'registry.local:5000',
    preStopDelaySeconds: 0,
    pull: new CellPullCredentials({ cellsKey: key, region: 'eu-1', registry: 'registry.local:5000' }),
  });
  const decode = (secret: ReturnType<typeof pullSecretFor>) =>
    JSON.parse(Buffer.from(secret?.data?.['.dockerconfigjson'] ?? '', 'base64').toString('utf8')) as {
      auths: Record<string, { username: string; password: string; auth: string }>;
    };

  it("holds each cell's own credential for the registry, as a dockerconfigjson Secret Berth owns", () => {
    const options = withKey(cellsKey);
    for (const cell of ['cell-a', 'cell-b']) {
      const secret = pullSecretFor(app, cell, options);
      expect(secret).toMatchObject({
        apiVersion: 'v1',
        kind: 'Secret',
        type: 'kubernetes.io/dockerconfigjson',
        metadata: { name: 'berth-registry', namespace: 'shop', labels: { [LABELS.managedBy]: MANAGED_BY } },
      });
      const expected = cellPullCredential(cellsKey, 'eu-1', cell);
      const { auths } = decode(secret);
      expect(Object.keys(auths)).toEqual(['registry.local:5000']);
      expect(auths['registry.local:5000']).toMatchObject(expected);
      expect(expected.username).toBe(`cell@eu-1/${cell}`);
      const auth = Buffer.from(auths['registry.local:5000']?.auth ?? '', 'base64').toString('utf8');
      expect(auth).toBe(`${expected.username}:${expected.password}`);
    }
    expect(decode(pullSecretFor(app, 'cell-a', options))).not.toEqual(decode(pullSecretFor(app, 'cell-b', options)));
  });

  it('makes every pod pull with it when the key is set, and neither exists without the key', () => {
    const v = version({ port: 8080 });
    const without = { registry: 'registry.local:5000', preStopDelaySeconds: 0 };
    expect(pullSecretFor(app, 'cell-a', without)).toBeUndefined();
    const plain = deploymentFor(app, v, 2, without);
    expect(plain.spec?.template.spec?.imagePullSecrets).toBeUndefined();
    const pulling = deploymentFor(app, v, 2, withKey(cellsKey));
    expect(pulling.spec?.template.spec?.imagePullSecrets).toEqual([{ name: 'berth-registry' }]);
    // Setting the key is a change of the Deployment (its hash), so it is written.
    expect(hashOf(pulling)).not.toBe(hashOf(plain));
  });

  it('a rotated key changes the Secret, not the Deployments (no rollout)', () => {
    const v = version({ port: 8080 });
    const before = withKey(cellsKey);
    const after = withKey(robotKeySchema.parse('a5'.repeat(32)));
    expect(hashOf(pullSecretFor(app, 'cell-a', after))).not.toBe(hashOf(pullSecretFor(app, 'cell-a', before)));
    expect(hashOf(deploymentFor(app, v, 2, after))).toBe(hashOf(deploymentFor(app, v, 2, before)));
    // An unchanged key builds the same Secret: no write on a mere reconcile.
    expect(hashOf(pullSecretFor({ ...app }, 'cell-a', withKey(cellsKey)))).toBe(
      hashOf(pullSecretFor(app, 'cell-a', before)),
    );
  });

  it('never shows the password in a log line', () => {
    const secret = pullSecretFor(app, 'cell-a', withKey(cellsKey));
    const { password, auth } = decode(secret).auths['registry.local:5000'] ?? { password: '', auth: '' };
    const line = scrubSecrets(`apply failed: ${password} ${auth} ${secret?.data?.['.dockerconfigjson']}`);
    expect(line).not.toContain(password);
    expect(line).not.toContain(auth);
    expect(line).toBe('apply failed: [redacted] [redacted] [redacted]');
  });
});

describe('tenant pods', () => {
  const options = { registry: 'registry.local', preStopDelaySeconds: 0 };

  it('run restricted: non-root, RuntimeDefault seccomp, no escalation, no capabilities, no API token', () => {
    const pod = deploymentFor(app, version({ port: 8080 }), 1, options).spec?.template.spec;
    expect(pod?.automountServiceAccountToken).toBe(false);
    expect(pod?.securityContext).toEqual({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(pod?.containers[0]?.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
    });
  });

  it('live in namespaces that enforce the restricted Pod Security profile', () => {
    expect(namespaceFor(app).metadata?.labels).toMatchObject({
      'pod-security.kubernetes.io/enforce': 'restricted',
      'pod-security.kubernetes.io/enforce-version': 'latest',
    });
  });

  it('take ingress only from the load balancers, on the app ports', () => {
    const [deny, allow] = networkPoliciesFor(app, ['198.18.0.1/32', '192.0.2.0/24']);
    expect(deny?.spec).toEqual({ podSelector: {}, policyTypes: ['Ingress'] });
    expect(allow?.spec?.ingress).toEqual([
      {
        from: [{ ipBlock: { cidr: '198.18.0.1/32' } }, { ipBlock: { cidr: '192.0.2.0/24' } }],
        ports: [{ port: 8080, protocol: 'TCP' }],
      },
    ]);
    expect(networkPoliciesFor(app, ['198.18.0.1/32', '192.0.2.0/24'])).toBe(
      networkPoliciesFor(app, ['198.18.0.1/32', '192.0.2.0/24']),
    );
    // No known source: nothing is allowed (an empty `from` would allow everyone).
    expect(networkPoliciesFor(app, [])[1]?.spec?.ingress).toEqual([]);
  });
});

describe('app secrets', () => {
  const keyring = new SecretsKeyring(`k1:${'11'.repeat(32)}`);
  const record = (name: string, value: string, ring = keyring): AppSecretRecord => ({
    name,
    sealed: ring.seal('shop', name, value),
    fingerprint: ring.fingerprint('shop', name, value),
    updatedAt: at,
    updatedBy: 'ann',
  });
  const options = { registry: 'registry.local', preStopDelaySeconds: 0 };
  const v = versionSchema.parse({ ...version({ port: 8080 }), env: { DATABASE_URL: 'plain', MODE: 'blue' } });

  it('open into an Opaque Secret; a secret replaces a plain variable of the same name', () => {
    const records = new Map([
      ['DATABASE_URL', record('DATABASE_URL', 'postgres://u:hunter2hunter2@db/shop')],
      ['STRIPE_SK', record('STRIPE_SK', 'sk_live_0123456789')],
    ]);
    const set = new AppSecretsOpener(keyring).open('shop', records);
    expect(set?.failed).toEqual([]);
    const secret = appSecretFor(app, set as NonNullable<typeof set>);
    expect(secret).toMatchObject({ kind: 'Secret', type: 'Opaque', metadata: { name: 'berth-app-secrets' } });
    expect(Buffer.from(secret.data?.STRIPE_SK ?? '', 'base64').toString()).toBe('sk_live_0123456789');
    const refs = secretRefsOf(set?.fingerprints ?? {});
    const dep = deploymentFor(app, v, 1, options, refs);
    expect(dep.spec?.template.spec?.containers[0]?.env).toEqual([
      { name: 'DATABASE_URL', valueFrom: { secretKeyRef: { name: 'berth-app-secrets', key: 'DATABASE_URL' } } },
      { name: 'MODE', value: 'blue' },
      { name: 'STRIPE_SK', valueFrom: { secretKeyRef: { name: 'berth-app-secrets', key: 'STRIPE_SK' } } },
    ]);
    // Opened values are scrubbed from log lines, as they are and as they sit in the Secret.
    expect(scrubSecrets(`x sk_live_0123456789 ${secret.data?.STRIPE_SK}`)).toBe('x [redacted] [redacted]');
    // The pod template names a hash of the fingerprints, not of the values.
    expect(dep.spec?.template.metadata?.annotations?.[SECRETS_HASH]).toBe(refs?.hash);
    expect(JSON.stringify(dep)).not.toContain('sk_live');
  });

  it('a changed value changes the template (the pods roll); an unchanged one nothing', () => {
    const opener = new AppSecretsOpener(keyring);
    const one = opener.open('shop', new Map([['TOKEN', record('TOKEN', 'first-value-0001')]]));
    const same = opener.open('shop', new Map([['TOKEN', record('TOKEN', 'first-value-0001')]]));
    const two = opener.open('shop', new Map([['TOKEN', record('TOKEN', 'second-value-002')]]));
    const hash = (set: typeof one) => hashOf(deploymentFor(app, v, 1, options, secretRefsOf(set?.fingerprints ?? {})));
    expect(hash(same)).toBe(hash(one));
    expect(hash(two)).not.toBe(hash(one));
  });

  it('one that does not open is named, with no value, and the others still open', () => {
    const other = new SecretsKeyring(`k2:${'22'.repeat(32)}`);
    const set = new AppSecretsOpener(keyring).open(
      'shop',
      new Map([
        ['GOOD', record('GOOD', 'good-value-0001')],
        ['BAD', record('BAD', 'bad-value-00001', other)],
      ]),
    );
    expect(set?.failed).toEqual(['BAD']);
    expect(set?.errors.BAD).toContain('"k2"');
    expect(JSON.stringify(set?.errors)).not.toContain('bad-value');
    expect(Object.keys(set?.data ?? {})).toEqual(['GOOD']);
    // Without a keyring nothing opens, and nothing throws.
    expect(new AppSecretsOpener(undefined).open('shop', new Map([['GOOD', record('GOOD', 'x')]]))?.failed).toEqual([
      'GOOD',
    ]);
  });
});
