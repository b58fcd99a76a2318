/**
 * The benchmark's own KWOK cells: the ones after the region's cells (cell-c… when the region runs
 * cell-a and cell-b), so the region's cells keep their size and `.local/env` is not rewritten.
 * Cells the benchmark starts are stopped again at its end; cells that were running are left up.
 */
import { execFileSync } from 'node:child_process';
import { request } from 'node:https';
import { join } from 'node:path';
import { createEtcdClient } from '@berth/shared/etcd';
import type { CellClient } from '@berth/shared/kube';
import { REPO_ROOT } from '@berth/shared/testing';

const LAST_CELL = 17; // cell-r: infra/cells.sh gives 16 KWOK cells after cell-a and cell-b one /21 each

const cellName = (index: number) => `cell-${String.fromCharCode(97 + index)}`;

/** `count` cell names after the last one of the region (`BERTH_CELLS`, default cell-a,cell-b). */
export function benchCellNames(regionCells: string | undefined, count: number): string[] {
  const indexes = (regionCells || 'cell-a,cell-b').split(',').map((c) => c.trim().charCodeAt(5) - 97);
  const first = Math.max(...indexes) + 1;
  if (first + count - 1 > LAST_CELL) {
    throw new RangeError(`${count} benchmark cells after ${cellName(first - 1)} go beyond ${cellName(LAST_CELL)}`);
  }
  return Array.from({ length: count }, (_, i) => cellName(first + i));
}

function libSh(script: string, args: string[]): string {
  return execFileSync('bash', ['-c', `source infra/lib.sh; ${script}`, 'bench', ...args], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
}

/** The cells among `cells` whose API server runs now. */
export function runningCells(cells: string[]): string[] {
  const out = libSh('for c in "$@"; do if is_running "$c-apiserver"; then echo "$c"; fi; done', cells);
  return out.split('\n').filter(Boolean);
}

/** Starts (or resizes) the named KWOK cells with `nodes` simulated nodes each and waits until ready. */
export function upCells(cells: string[], nodes: number): void {
  execFileSync('bash', [join(REPO_ROOT, 'infra/cells.sh'), 'up', ...cells], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, BERTH_KWOK_NODES: String(nodes) },
  });
}

/** Stops every process of the named cells (their data stays in etcd-cells, as `cells.sh down` leaves it). */
export function stopCells(cells: string[]): void {
  if (cells.length === 0) return;
  libSh(
    'for c in "$@"; do for n in kwok scheduler controller-mgr apiserver; do stop_daemon "$c-$n" & done; done; wait',
    cells,
  );
}

/** The etcd every cell's API server stores in (infra/cells.sh), each under `/cells/{cell}/`. */
const CELLS_ETCD = process.env.BERTH_CELLS_ETCD_URL ?? 'http://127.0.0.1:2381';

/**
 * Deletes the stored state of stopped cells, so their next start is a fresh cluster. Deleting a
 * full run's 4000 namespaces through the cells took more than 10 minutes on 2 cores, and a next
 * run that found them still terminating measured that work beside its own.
 */
export async function wipeCells(cells: string[]): Promise<void> {
  if (cells.length === 0) return;
  const etcd = createEtcdClient({ endpoints: [CELLS_ETCD] });
  try {
    for (const cell of cells) await etcd.delete().prefix(`/cells/${cell}/`);
  } finally {
    etcd.close();
  }
}

/** `apiserver_request_total` of one cell's API server, summed by `verb resource[/subresource]`. */
export async function apiRequests(client: CellClient): Promise<Map<string, number>> {
  const server = new URL(client.kubeConfig.getCurrentCluster()?.server ?? 'https://127.0.0.1');
  const options: import('node:https').RequestOptions = {
    hostname: server.hostname,
    port: server.port,
    path: '/metrics',
    method: 'GET',
  };
  await client.kubeConfig.applyToHTTPSOptions(options);
  const text = await new Promise<string>((resolve, reject) => {
    const req = request(options, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        body += chunk;
      });
      res.on('end', () =>
        res.statusCode === 200 ? resolve(body) : reject(new Error(`${client.cell} /metrics: HTTP ${res.statusCode}`)),
      );
    });
    req.on('error', reject);
    req.end();
  });
  const counts = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith('apiserver_request_total{')) continue;
    const label = (name: string) => new RegExp(`[{,]${name}="([^"]*)"`).exec(line)?.[1] ?? '';
    const sub = label('subresource');
    const key = `${label('verb')} ${label('resource')}${sub ? `/${sub}` : ''}`;
    counts.set(key, (counts.get(key) ?? 0) + Number(line.split(' ').pop()));
  }
  return counts;
}

export const WRITE_VERBS = new Set(['APPLY', 'PATCH', 'POST', 'PUT', 'DELETE', 'DELETECOLLECTION', 'CREATE', 'UPDATE']);

/** Requests between two snapshots of every cell, summed by `verb resource`. */
export function requestDelta(before: Map<string, number>[], after: Map<string, number>[]): Map<string, number> {
  const delta = new Map<string, number>();
  after.forEach((counts, i) => {
    for (const [key, n] of counts) {
      const d = n - (before[i]?.get(key) ?? 0);
      if (d > 0) delta.set(key, (delta.get(key) ?? 0) + d);
    }
  });
  return delta;
}
