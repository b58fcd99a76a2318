/**
 * The real cells keep Secrets encrypted in their etcd (infra/cells.sh, docs/secrets.md "What the
 * cells store"): a Secret written through a cell's API server is stored under
 * `/cells/<cell>/secrets/<namespace>/<name>` as `k8s:enc:secretbox:v1:key1:…`, never in clear,
 * and reads back as written. The key and the config that holds it are readable by their owner only.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { createEtcdClient } from '@berth/shared/etcd';
import { REPO_ROOT, regionEnv, uniqueId } from '@berth/shared/testing';
import * as k8s from '@kubernetes/client-node';
import { afterAll, describe, expect, it } from 'vitest';

const region = regionEnv();
const setting = (name: string): string | undefined => process.env[name] ?? region[name];
const CELLS_DIR = setting('KUBECONFIG_DIR') ?? join(REPO_ROOT, '.local/cells');
const LOCAL = setting('BERTH_LOCAL') ?? join(REPO_ROOT, '.local');
// The cells' own etcd (docs/cells.md): every cell's API server under its prefix.
const CELLS_ETCD = setting('BERTH_CELLS_ETCD') ?? 'http://127.0.0.1:2381';
const NAMESPACE = `secrets-at-rest-${uniqueId()}`;

function core(cell: string): k8s.CoreV1Api {
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(join(CELLS_DIR, `${cell}.kubeconfig`));
  return kc.makeApiClient(k8s.CoreV1Api);
}

const etcd = createEtcdClient({ endpoints: [CELLS_ETCD] });

afterAll(async () => {
  for (const cell of ['cell-a', 'cell-b']) {
    await core(cell)
      .deleteNamespace({ name: NAMESPACE })
      .catch(() => undefined);
  }
  etcd.close();
});

describe('Secrets in the real cells', () => {
  for (const cell of ['cell-a', 'cell-b']) {
    it(`${cell} stores a Secret encrypted (k8s:enc:secretbox) and reads it back`, async () => {
      const api = core(cell);
      await api.createNamespace({ body: { metadata: { name: NAMESPACE } } });
      const value = `at-rest-${uniqueId(16)}`;
      await api.createNamespacedSecret({
        namespace: NAMESPACE,
        body: { metadata: { name: 'probe' }, stringData: { VALUE: value } },
      });
      const raw = await etcd.get(`/cells/${cell}/secrets/${NAMESPACE}/probe`).buffer();
      expect(raw, 'the Secret is in the cell’s etcd').not.toBeNull();
      const text = (raw as Buffer).toString('latin1');
      expect(text.startsWith('k8s:enc:secretbox:v1:key1:')).toBe(true);
      expect(text).not.toContain(value);
      expect(text).not.toContain(Buffer.from(value).toString('base64'));
      const read = await api.readNamespacedSecret({ namespace: NAMESPACE, name: 'probe' });
      expect(Buffer.from(read.data?.VALUE ?? '', 'base64').toString()).toBe(value);
    });
  }

  it('the encryption key and its config are readable by their owner only', () => {
    for (const file of ['cells-encryption-key', 'cells-encryption.yaml']) {
      expect(statSync(join(LOCAL, 'secrets', file)).mode & 0o777, file).toBe(0o600);
    }
    expect(statSync(join(LOCAL, 'secrets')).mode & 0o777).toBe(0o700);
  });
});
