/**
 * The informer wrapper against a real API server (cell-b's): it recovers from a killed API
 * server, from a dropped connection and from a stalled one, with no missed change (its cache is
 * compared with a fresh list).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CoreV1Api, type KubeConfig, type V1ConfigMap } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadCellClient } from '../src/kube/index.ts';
import { ResilientInformer } from '../src/kube/informer.ts';
import { CuttableProxy, proxiedKubeConfig as proxied } from '../src/kube/testing.ts';
import { REPO_ROOT, regionEnv, uniqueId, waitFor } from '../src/testing/index.ts';

const CELL = 'cell-b';
const dir = regionEnv().KUBECONFIG_DIR ?? join(REPO_ROOT, '.local/cells');
const ns = `informer-${uniqueId()}`;
const cell = loadCellClient(dir, CELL);

function informerOn(kc: KubeConfig, stallMs = 60_000) {
  const core = kc.makeApiClient(CoreV1Api);
  return new ResilientInformer<V1ConfigMap>({
    name: `${CELL}/configmaps`,
    kubeConfig: kc,
    path: `/api/v1/namespaces/${ns}/configmaps`,
    list: (selectors) => core.listNamespacedConfigMap({ namespace: ns, ...selectors }),
    labelSelector: 'test=informer',
    stallMs,
    backoffInitialMs: 100,
    backoffMaxMs: 1000,
  });
}

async function freshNames(): Promise<string[]> {
  const list = await cell.core.listNamespacedConfigMap({ namespace: ns, labelSelector: 'test=informer' });
  return list.items.map((c) => c.metadata?.name as string).sort();
}

function cachedNames(informer: ResilientInformer<V1ConfigMap>): string[] {
  return informer
    .list(ns)
    .map((c) => c.metadata?.name as string)
    .sort();
}

async function put(name: string): Promise<void> {
  await waitFor(
    async () => {
      await cell.core.createNamespacedConfigMap({
        namespace: ns,
        body: { metadata: { name, labels: { test: 'informer' } }, data: { v: '1' } },
      });
      return true;
    },
    { timeoutMs: 30_000, message: `create ${name}` },
  );
}

async function remove(name: string): Promise<void> {
  await cell.core.deleteNamespacedConfigMap({ name, namespace: ns });
}

beforeAll(async () => {
  await cell.core.createNamespace({ body: { metadata: { name: ns } } });
});

afterAll(async () => {
  await cell.core.deleteNamespace({ name: ns }).catch(() => undefined);
});

describe('the informer wrapper', () => {
  it('recovers from a dropped connection with no missed change', async () => {
    const proxy = CuttableProxy.forKubeConfig(cell.kubeConfig);
    await proxy.listen();
    const informer = informerOn(proxied(dir, CELL, proxy.port));
    try {
      await put('a');
      await informer.start();
      await waitFor(() => cachedNames(informer).includes('a'));
      proxy.cut();
      // Changes while the connection is down.
      await put('b');
      await remove('a');
      await waitFor(async () => JSON.stringify(cachedNames(informer)) === JSON.stringify(await freshNames()), {
        timeoutMs: 20_000,
        message: 'cache equals a fresh list after the drop',
      });
      expect(cachedNames(informer)).toEqual(['b']);
      expect(informer.stale).toBe(false);
    } finally {
      await informer.stop();
      await proxy.close();
    }
  });

  it('stays stale for as long as the API server cannot be reached, and no longer', async () => {
    const proxy = CuttableProxy.forKubeConfig(cell.kubeConfig);
    await proxy.listen();
    const informer = informerOn(proxied(dir, CELL, proxy.port));
    try {
      await informer.start();
      proxy.takeDown();
      await waitFor(() => informer.stale, { timeoutMs: 5000, message: 'stale once the server is gone' });
      // Restarts keep failing meanwhile (a re-watch from the last resource version included):
      // none of them may pass for a connection.
      const until = Date.now() + 3000;
      while (Date.now() < until) {
        expect(informer.stale).toBe(true);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(informer.restarts).toBeGreaterThan(0);
      proxy.up();
      await waitFor(() => !informer.stale, { timeoutMs: 15_000, message: 'connected again' });
    } finally {
      await informer.stop();
      await proxy.close();
    }
  });

  it('restarts a stalled watch and catches up', async () => {
    const proxy = CuttableProxy.forKubeConfig(cell.kubeConfig);
    await proxy.listen();
    const informer = informerOn(proxied(dir, CELL, proxy.port), 2000);
    try {
      await informer.start();
      // The connection stays open but nothing passes: a half-open link.
      proxy.frozen = true;
      await put('c');
      await waitFor(() => informer.stale, { timeoutMs: 10_000, message: 'stall noticed' });
      proxy.frozen = false;
      proxy.cut();
      await waitFor(async () => JSON.stringify(cachedNames(informer)) === JSON.stringify(await freshNames()), {
        timeoutMs: 20_000,
        message: 'cache equals a fresh list after the stall',
      });
      expect(informer.restarts).toBeGreaterThan(0);
    } finally {
      await informer.stop();
      await proxy.close();
    }
  });

  it('recovers from a killed API server, keeping its last state meanwhile, with no missed change', {
    timeout: 120_000,
  }, async () => {
    const informer = informerOn(cell.kubeConfig);
    try {
      await informer.start();
      const before = cachedNames(informer);
      const pid = readFileSync(join(REPO_ROOT, `.local/run/${CELL}-apiserver.pid`), 'utf8').trim();
      process.kill(Number(pid), 'SIGKILL');
      await waitFor(() => informer.stale, { timeoutMs: 20_000, message: 'informer notices the API server is gone' });
      expect(cachedNames(informer)).toEqual(before); // the last known state is kept
      execFileSync('bash', [join(REPO_ROOT, 'infra/cells.sh'), 'up', CELL], { stdio: 'ignore', timeout: 90_000 });
      await put('d');
      await waitFor(async () => JSON.stringify(cachedNames(informer)) === JSON.stringify(await freshNames()), {
        timeoutMs: 30_000,
        message: 'cache equals a fresh list after the API server came back',
      });
      expect(cachedNames(informer)).toContain('d');
      await waitFor(() => !informer.stale, { timeoutMs: 10_000 });
    } finally {
      await informer.stop();
    }
  });
});
