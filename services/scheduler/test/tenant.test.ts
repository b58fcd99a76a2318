/**
 * Tenant pods in the real cells (issue 13, items 1 and 5): an app's sealed secrets, written to
 * etcd as the API writes them, reach its pods through the cells' Secret and `secretKeyRef`; a
 * changed one rolls the pods; one that does not open is reported by name and changes nothing.
 * The pods run restricted: non-root, no privilege escalation, no capabilities, RuntimeDefault
 * seccomp, no service-account token; their namespace enforces the restricted profile and has a
 * default-deny NetworkPolicy with the load balancers allowed.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kubeErrorStatus } from '@berth/shared/kube';
import { deploymentName, type VersionCellStatus, versionCellStatusSchema } from '@berth/shared/model';
import { type AppSecretRecord, SecretsKeyring } from '@berth/shared/secrets';
import { uniqueId, waitFor } from '@berth/shared/testing';
import { NetworkingV1Api, type V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  appRecord,
  cells,
  deleteNamespaces,
  env,
  putApp,
  startScheduler,
  versionRecord,
  type World,
  waitAvailable,
  world,
} from './harness.ts';

const KEYS = `k1:${'3c'.repeat(32)}`;
const keyring = new SecretsKeyring(KEYS);
const keyDir = mkdtempSync(join(tmpdir(), 'berth-secrets-keys-'));
const keysFile = join(keyDir, 'secrets.keys');
writeFileSync(keysFile, `${KEYS}\n`, { mode: 0o600 });

let w: World;
let scheduler: Awaited<ReturnType<typeof startScheduler>>;
const app = `tenant-${uniqueId(6)}`;

/** Puts a secret as the API does: sealed with the keyring, its fingerprint beside it. */
async function putSecret(name: string, value: string, ring = keyring): Promise<void> {
  const record: AppSecretRecord = {
    name,
    sealed: ring.seal(app, name, value),
    fingerprint: ring.fingerprint(app, name, value),
    updatedAt: new Date().toISOString(),
    updatedBy: 'alice',
  };
  await w.etcd.put(w.keys.appSecret(app, name)).value(JSON.stringify(record));
}

async function secretIn(cell: string): Promise<Record<string, string> | undefined> {
  try {
    const secret = await cells[cell]?.core.readNamespacedSecret({ name: 'berth-app-secrets', namespace: app });
    expect(secret?.type).toBe('Opaque');
    return Object.fromEntries(
      Object.entries(secret?.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]),
    );
  } catch (err) {
    if (kubeErrorStatus(err) === 404) return undefined;
    throw err;
  }
}

async function template(cell: string) {
  const dep = await cells[cell]?.apps.readNamespacedDeployment({ name: deploymentName(app, 'v1'), namespace: app });
  return dep?.spec?.template;
}

async function runningPods(cell: string): Promise<V1Pod[]> {
  const list = await cells[cell]?.core.listNamespacedPod({ namespace: app });
  return (list?.items ?? []).filter((p) => p.status?.phase === 'Running' && !p.metadata?.deletionTimestamp);
}

/** What the app answers on its pod address (the sample app shows APP_VERSION as `version`). */
async function versionAnswered(pod: V1Pod): Promise<string> {
  const res = await fetch(`http://${pod.status?.podIP}:8080/`, { signal: AbortSignal.timeout(5000) });
  return ((await res.json()) as { version: string }).version;
}

/** The host pid of a pod's sample-app process, found by the pod's UID in its cgroup path. */
async function containerPid(pod: V1Pod): Promise<number> {
  const uid = pod.metadata?.uid as string;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cgroup = await readFile(`/proc/${entry}/cgroup`, 'utf8').catch(() => '');
    if (!cgroup.includes(`/pod${uid}/`)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('/sample-app')) return Number(entry);
  }
  throw new Error(`no process of pod ${pod.metadata?.name}`);
}

function statusField(status: string, field: string): string {
  return (
    status
      .split('\n')
      .find((l) => l.startsWith(`${field}:`))
      ?.slice(field.length + 1)
      .trim() ?? ''
  );
}

beforeAll(async () => {
  w = await world();
  scheduler = await startScheduler(w, { BERTH_SECRETS_KEYS_FILE: keysFile });
});

afterAll(async () => {
  await scheduler?.service.stop();
  await deleteNamespaces(app);
  await w?.close();
  rmSync(keyDir, { recursive: true, force: true });
});

describe('tenant pods', () => {
  it('get their secrets by secretKeyRef, roll when one changes, and run restricted', async () => {
    await putSecret('APP_VERSION', 'from-secret-1');
    await putSecret('DATABASE_URL', 'postgres://shop:hunter2-0451@db/shop');
    // A plain variable of a secret's name gives way to the secret.
    await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 2, env: { APP_VERSION: 'plain', MODE: 'x' } })]);
    await waitAvailable(app, 'v1', { 'cell-a': 1, 'cell-b': 1 });

    for (const cell of ['cell-a', 'cell-b']) {
      expect(await secretIn(cell)).toEqual({
        APP_VERSION: 'from-secret-1',
        DATABASE_URL: 'postgres://shop:hunter2-0451@db/shop',
      });
      const t = await template(cell);
      expect(t?.spec?.containers[0]?.env).toEqual([
        { name: 'APP_VERSION', valueFrom: { secretKeyRef: { name: 'berth-app-secrets', key: 'APP_VERSION' } } },
        { name: 'DATABASE_URL', valueFrom: { secretKeyRef: { name: 'berth-app-secrets', key: 'DATABASE_URL' } } },
        { name: 'MODE', value: 'x' },
      ]);
      // The Deployment holds names only, never a value.
      expect(JSON.stringify(t)).not.toContain('hunter2');
    }
    const [pod] = await runningPods('cell-a');
    if (!pod) throw new Error('no running pod in cell-a');
    expect(await versionAnswered(pod)).toBe('from-secret-1');

    // Restricted: the pod as the cell shows it, and the process as the host's kernel does.
    expect(pod.spec?.automountServiceAccountToken).toBe(false);
    expect(pod.spec?.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    const mounts = pod.spec?.containers[0]?.volumeMounts ?? [];
    expect(mounts.some((m) => m.mountPath.startsWith('/var/run/secrets/kubernetes.io'))).toBe(false);
    expect((pod.spec?.volumes ?? []).some((v) => v.name.startsWith('kube-api-access'))).toBe(false);
    const pid = await containerPid(pod);
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    expect(statusField(status, 'Uid').split(/\s+/)).toEqual(['65534', '65534', '65534', '65534']);
    expect(statusField(status, 'NoNewPrivs')).toBe('1');
    expect(statusField(status, 'CapEff')).toBe('0000000000000000');
    expect(statusField(status, 'Seccomp')).toBe('2');
    // No token in the container's own mount namespace.
    await expect(stat(`/proc/${pid}/root/var/run/secrets/kubernetes.io/serviceaccount/token`)).rejects.toThrow();
    expect(await readFile(`/proc/${pid}/environ`, 'utf8')).toContain(
      'DATABASE_URL=postgres://shop:hunter2-0451@db/shop',
    );

    // A changed secret: the Secret is rewritten, the template changes and the pods roll onto it.
    const before = (await template('cell-a'))?.metadata?.annotations?.['berth.dev/secrets-hash'];
    expect(before).toMatch(/^[0-9a-f]{16}$/);
    await putSecret('APP_VERSION', 'from-secret-2');
    await waitFor(async () => (await secretIn('cell-b'))?.APP_VERSION === 'from-secret-2', {
      timeoutMs: 30_000,
      message: "cell-b's Secret rewritten",
    });
    // Each cell is applied on its own (its Secret, then its Deployments): wait for cell-a's.
    const after = await waitFor(
      async () => {
        const hash = (await template('cell-a'))?.metadata?.annotations?.['berth.dev/secrets-hash'];
        return hash && hash !== before ? hash : undefined;
      },
      { timeoutMs: 30_000, message: "cell-a's template takes the new secrets' hash" },
    );
    expect(after).toMatch(/^[0-9a-f]{16}$/);
    await waitFor(
      async () => {
        const pods = await runningPods('cell-a');
        if (pods.length !== 1) return undefined;
        return (await versionAnswered(pods[0] as V1Pod).catch(() => '')) === 'from-secret-2' ? true : undefined;
      },
      { timeoutMs: 120_000, intervalMs: 500, message: 'the pods rolled onto the new value' },
    );
    await waitAvailable(app, 'v1', { 'cell-a': 1, 'cell-b': 1 });

    // No value in the scheduler's log.
    expect(scheduler.logs()).not.toContain('hunter2');
    expect(scheduler.logs()).not.toContain('from-secret');
  });

  it('report a secret that does not open by name, on the status rows, and keep what the cells have', async () => {
    const hash = (await template('cell-a'))?.metadata?.annotations?.['berth.dev/secrets-hash'];
    const other = new SecretsKeyring(`k9:${'9d'.repeat(32)}`);
    await putSecret('STRIPE_SK', 'sk_live_never_seen_0001', other);
    const rows = await waitFor(
      async () => {
        const got = await w.etcd.getAll().prefix(w.keys.appStatus(app)).strings();
        const parsed = Object.values(got).map((raw) => versionCellStatusSchema.parse(JSON.parse(raw)));
        const failing = parsed.filter((s: VersionCellStatus) =>
          s.conditions.some((c) => c.type === 'SecretsApplied' && c.status === 'False'),
        );
        return failing.length === 2 ? failing : undefined;
      },
      { timeoutMs: 30_000, message: 'both status rows name the secret that does not open' },
    );
    const message = rows[0]?.conditions.find((c) => c.type === 'SecretsApplied')?.message ?? '';
    expect(message).toContain('STRIPE_SK');
    expect(message).toContain('"k9"');
    expect(message).not.toContain('sk_live');
    expect(scheduler.logs()).toContain('STRIPE_SK');
    expect(scheduler.logs()).not.toContain('sk_live_never_seen');
    // The cells keep their Secret and the pods their template: nothing rolls.
    expect(await secretIn('cell-a')).toEqual({
      APP_VERSION: 'from-secret-2',
      DATABASE_URL: 'postgres://shop:hunter2-0451@db/shop',
    });
    expect((await template('cell-a'))?.metadata?.annotations?.['berth.dev/secrets-hash']).toBe(hash);
    // Fixed (sealed with the scheduler's key): it goes in, and the condition goes away.
    await putSecret('STRIPE_SK', 'sk_live_now_opened_01');
    await waitFor(async () => (await secretIn('cell-a'))?.STRIPE_SK === 'sk_live_now_opened_01', {
      timeoutMs: 30_000,
      message: 'the fixed secret reaches cell-a',
    });
    await waitFor(
      async () => {
        const got = await w.etcd.getAll().prefix(w.keys.appStatus(app)).strings();
        return Object.values(got).every((raw) => !raw.includes('SecretsApplied')) ? true : undefined;
      },
      { timeoutMs: 30_000, message: 'the condition cleared' },
    );
  });

  it("live in a namespace that enforces the restricted profile and denies ingress but the LB's", async () => {
    const ns = await cells['cell-a']?.core.readNamespace({ name: app });
    expect(ns?.metadata?.labels?.['pod-security.kubernetes.io/enforce']).toBe('restricted');
    // A root pod in it is refused by the cell itself.
    const refused = await cells['cell-a']?.core
      .createNamespacedPod({
        namespace: app,
        body: {
          metadata: { name: 'root-pod' },
          spec: {
            containers: [
              {
                name: 'c',
                image: env.BERTH_SAMPLE_IMAGE ?? '127.0.0.1:5000/berth/sample-app:v1',
                securityContext: { runAsUser: 0, privileged: true },
              },
            ],
          },
        },
      })
      .then(
        () => 'created',
        (err) => kubeErrorStatus(err),
      );
    expect(refused).toBe(403);
    const networking = cells['cell-a']?.kubeConfig.makeApiClient(NetworkingV1Api);
    const policies = await networking?.listNamespacedNetworkPolicy({ namespace: app });
    const byName = Object.fromEntries((policies?.items ?? []).map((p) => [p.metadata?.name, p.spec]));
    expect(byName['berth-default-deny']).toEqual({ podSelector: {}, policyTypes: ['Ingress'] });
    // The cell's node address: the host's side of the cell's bridge, where its nginx connects from.
    const node = (await cells['cell-a']?.core.listNode())?.items[0];
    const nodeIp = node?.status?.addresses?.find((a) => a.type === 'InternalIP')?.address;
    // client-node's model names the peers `_from` (`from` on the wire).
    const rule = byName['berth-allow-lb']?.ingress?.[0] as { _from?: unknown; from?: unknown } | undefined;
    expect(rule?._from ?? rule?.from).toEqual([{ ipBlock: { cidr: `${nodeIp}/32` } }]);
    expect(byName['berth-allow-lb']?.ingress?.[0]?.ports).toEqual([{ port: 8080, protocol: 'TCP' }]);
  });
});
