/**
 * The informer wrapper against a real API server (KWOK cell-b): it recovers from a killed API
 * server, from a dropped connection and from a stalled one, with no missed change (its cache is
 * compared with a fresh list).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, KubeConfig, type V1ConfigMap } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kubeconfigPath, loadCellClient } from '../src/kube/index.ts';
import { ResilientInformer } from '../src/kube/informer.ts';
import { REPO_ROOT, regionEnv, uniqueId, waitFor } from '../src/testing/index.ts';

const CELL = 'cell-b';
const dir = regionEnv().KUBECONFIG_DIR ?? join(REPO_ROOT, '.local/cells');
const ns = `informer-${uniqueId()}`;
const cell = loadCellClient(dir, CELL);

/** A TCP proxy in front of the API server that a test can cut or freeze. */
class CuttableProxy {
  readonly server: Server;
  readonly sockets = new Set<Socket>();
  frozen = false;
  port = 0;

  constructor(target: { host: string; port: number }) {
    this.server = createServer((client) => {
      const upstream = connect(target.port, target.host);
      this.sockets.add(client).add(upstream);
      const forward = (from: Socket, to: Socket) =>
        from.on('data', (d) => {
          if (!this.frozen) to.write(d);
        });
      forward(client, upstream);
      forward(upstream, client);
      const close = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on('error', close).on('close', close);
      upstream.on('error', close).on('close', close);
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as { port: number }).port;
  }

  /** Drops every connection, as a broken network would. */
  cut(): void {
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}

function proxiedKubeConfig(port: number): KubeConfig {
  const text = readFileSync(kubeconfigPath(dir, CELL), 'utf8').replace(
    /server: https:\/\/127\.0\.0\.1:\d+/,
    `server: https://127.0.0.1:${port}`,
  );
  const path = join(tmpdir(), `${ns}.kubeconfig`);
  writeFileSync(path, text, { mode: 0o600 });
  const kc = new KubeConfig();
  kc.loadFromFile(path);
  return kc;
}

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
    const server = new URL(cell.kubeConfig.getCurrentCluster()?.server as string);
    const proxy = new CuttableProxy({ host: server.hostname, port: Number(server.port) });
    await proxy.listen();
    const informer = informerOn(proxiedKubeConfig(proxy.port));
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

  it('restarts a stalled watch and catches up', async () => {
    const server = new URL(cell.kubeConfig.getCurrentCluster()?.server as string);
    const proxy = new CuttableProxy({ host: server.hostname, port: Number(server.port) });
    await proxy.listen();
    const informer = informerOn(proxiedKubeConfig(proxy.port), 2000);
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
