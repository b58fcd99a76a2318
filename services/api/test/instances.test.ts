/**
 * Instances, logs, exec and metrics through the API against the local region's real cells. The
 * region's scheduler runs the sample app (`sample`, v1 in cell-a and cell-b) in its own etcd
 * prefix; this API, in a prefix of its own, gets an app of the same name and its placement, so
 * it reads those real pods without starting a scheduler of its own (they are only read, and exec
 * runs harmless commands in them).
 */
import { get, request } from 'node:http';
import { loadCellClient } from '@berth/shared/kube';
import { lbAgentStatusSchema } from '@berth/shared/model';
import { regionEnv, uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { appBody, ensureRegion, mirrorSampleApp, startApi, type TestApi } from './harness.ts';

const APP = 'sample';
const CELLS = ['cell-a', 'cell-b'];
let api: TestApi;
let reporter: string;
let guest: string;
let developer: string;

beforeAll(async () => {
  api = await startApi({ KUBECONFIG_DIR: process.env.KUBECONFIG_DIR ?? '.local/cells' });
  await ensureRegion(api);
  const tokens = await mirrorSampleApp(api, { rep: 'Reporter', gue: 'Guest', dev: 'Developer' });
  [reporter, guest, developer] = [tokens.rep, tokens.gue, tokens.dev] as [string, string, string];
}, 60_000);

afterAll(async () => {
  await api?.stop();
});

describe('instances', () => {
  it('lists the pods of both cells with their addresses', async () => {
    const res = await api.call('GET', `/apps/${APP}/instances`, { token: reporter });
    expect(res.status).toBe(200);
    expect(res.json.unreachable).toEqual([]);
    const items = res.json.items as Array<Record<string, unknown>>;
    expect(new Set(items.map((i) => i.cell))).toEqual(new Set(CELLS));
    for (const i of items) {
      expect(i.version).toBe('v1');
      expect(i.ip).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
      expect(i.node).toBe(`${i.cell}-node0`);
      expect(i.instance).toMatch(/^sample-v1-/);
      expect(typeof i.restarts).toBe('number');
    }
    expect(items.some((i) => i.phase === 'Running' && i.ready === true && i.startedAt)).toBe(true);
  });

  it('filters by cell and refuses a Guest', async () => {
    const one = await api.call('GET', `/apps/${APP}/instances?cell=cell-b`, { token: reporter });
    expect(one.status).toBe(200);
    expect(one.json.items.every((i: { cell: string }) => i.cell === 'cell-b')).toBe(true);
    const denied = await api.call('GET', `/apps/${APP}/instances`, { token: guest });
    expect(denied.status).toBe(403);
  });

  it('lists a cell that does not answer as unreachable', async () => {
    const { runtime } = api.service;
    await runtime.etcd.put(runtime.keys.placement(APP, 'v9')).value(
      JSON.stringify({
        app: APP,
        version: 'v9',
        cells: { 'cell-nowhere': 1 },
        generation: 1,
        desired: 1,
        conditions: [],
        updatedAt: new Date().toISOString(),
      }),
    );
    try {
      const res = await api.call('GET', `/apps/${APP}/instances`, { token: developer });
      expect(res.status).toBe(200);
      expect(res.json.unreachable).toEqual(['cell-nowhere']);
      expect(res.json.items.length).toBeGreaterThanOrEqual(2);
    } finally {
      await runtime.etcd.delete().key(runtime.keys.placement(APP, 'v9'));
    }
  });
});

describe('logs', () => {
  it('returns the lines of both cells as text, each prefixed with cell/instance', async () => {
    const res = await fetch(`${api.url}/api/v1/apps/${APP}/logs`, { headers: { authorization: `Bearer ${reporter}` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const lines = (await res.text()).split('\n').filter(Boolean);
    for (const cell of CELLS) {
      expect(lines.some((l) => new RegExp(`^${cell}/sample-v1-\\S+ .*sample-app v1 listening on :8080`).test(l))).toBe(
        true,
      );
    }
  });

  it('answers NDJSON when asked, with a time on every line, and honours tail and cell', async () => {
    const res = await fetch(`${api.url}/api/v1/apps/${APP}/logs?tail=1&cell=cell-b`, {
      headers: { authorization: `Bearer ${reporter}`, accept: 'application/x-ndjson' },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/x-ndjson/);
    const records = (await res.text())
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
    expect(records.length).toBeGreaterThan(0);
    for (const r of records) {
      expect(r).toMatchObject({ cell: 'cell-b', version: 'v1' });
      expect(r.instance).toMatch(/^sample-v1-/);
      expect(r.ts).toMatch(/^\d{4}-\d\d-\d\dT/);
      expect(typeof r.line).toBe('string');
    }
    const perInstance = new Map<string, number>();
    for (const r of records) perInstance.set(r.instance, (perInstance.get(r.instance) ?? 0) + 1);
    expect(Math.max(...perInstance.values())).toBe(1);
  });

  it('follows: a line the app prints after the request started arrives on the open stream', async () => {
    const instances = await api.call('GET', `/apps/${APP}/instances?cell=cell-a`, { token: reporter });
    const target = (instances.json.items as Array<{ ip: string; ready: boolean }>).find((i) => i.ready);
    expect(target).toBeDefined();
    const abort = new AbortController();
    const res = await fetch(`${api.url}/api/v1/apps/${APP}/logs?follow=true&tail=0&format=ndjson`, {
      headers: { authorization: `Bearer ${reporter}` },
      signal: abort.signal,
    });
    expect(res.status).toBe(200);
    const stream = followText(res);
    try {
      // The app logs every `GET /` it serves; ask until the line shows up on the stream.
      await waitFor(
        async () => {
          await fetch(`http://${target?.ip}:8080/`).then((r) => r.text());
          return stream
            .text()
            .split('\n')
            .some((l) => l.includes('"cell":"cell-a"') && l.includes('GET / from'));
        },
        { timeoutMs: 20_000, intervalMs: 500, message: 'a followed line' },
      );
    } finally {
      abort.abort();
      await stream.done;
    }
  });
});

/** Reads a streaming answer into text as it arrives; `done` settles once the stream ends or is aborted. */
function followText(res: Response): { text: () => string; done: Promise<void> } {
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = '';
  const done = (async () => {
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
      if (done) return;
      text += decoder.decode(value, { stream: true });
    }
  })();
  return { text: () => text, done };
}

type ExecOutcome = {
  status?: number;
  stdout: string;
  stderr: string;
  code?: number | null;
  error?: string;
  closeCode?: number;
};

/** Runs `command` in `instance` through the exec WebSocket and collects what comes back. */
function exec(
  token: string,
  instance: string,
  command: string[],
  options: { tty?: boolean; onOpen?: (ws: WebSocket) => void } = {},
): Promise<ExecOutcome> {
  const q = new URLSearchParams(command.map((c): [string, string] => ['command', c]));
  if (options.tty) q.set('tty', 'true');
  const url = `${api.url.replace(/^http/, 'ws')}/api/v1/apps/${APP}/instances/${instance}/exec?${q}`;
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` } });
  const out: ExecOutcome = { stdout: '', stderr: '' };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('exec did not end')), 20_000);
    ws.on('unexpected-response', (_req, res) => {
      clearTimeout(timer);
      resolve({ ...out, status: res.statusCode });
    });
    ws.on('open', () => options.onOpen?.(ws));
    ws.on('message', (data: Buffer, binary) => {
      if (binary) {
        if (data[0] === 1) out.stdout += data.subarray(1).toString();
        else if (data[0] === 2) out.stderr += data.subarray(1).toString();
      } else {
        const frame = JSON.parse(data.toString());
        if (frame.type === 'exit') out.code = frame.code;
        if (frame.type === 'error') out.error = frame.message;
      }
    });
    ws.on('close', (code) => {
      clearTimeout(timer);
      resolve({ ...out, status: 101, closeCode: code });
    });
    ws.on('error', () => undefined);
  });
}

describe('exec', () => {
  let instance: string;
  beforeAll(async () => {
    const res = await api.call('GET', `/apps/${APP}/instances?cell=cell-b`, { token: reporter });
    instance = (res.json.items as Array<{ instance: string; ready: boolean }>).find((i) => i.ready)?.instance ?? '';
    expect(instance).not.toBe('');
  });

  it('runs a command and ends with its exit code 0', async () => {
    const r = await exec(developer, instance, ['/sample-app', 'version']);
    expect(r.status).toBe(101);
    expect(r.stdout.trim()).toBe('v1');
    expect(r.code).toBe(0);
    expect(r.closeCode).toBe(1000);
  });

  it('returns the non-zero code of a failing command, and its stderr apart', async () => {
    const r = await exec(developer, instance, ['/sample-app', 'get']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('usage: sample-app get URL');
    expect(r.stdout).toBe('');
  });

  it('reports a command that cannot start as an error frame', async () => {
    const r = await exec(developer, instance, ['/no-such-program']);
    expect(r.status).toBe(101);
    expect(r.error).toMatch(/no-such-program/);
    expect(r.closeCode).toBe(1011);
  });

  it('runs in a terminal that takes resizes', async () => {
    const r = await exec(developer, instance, ['/sample-app', 'hostname'], {
      tty: true,
      onOpen: (ws) => ws.send(JSON.stringify({ type: 'resize', cols: 120, rows: 40 })),
    });
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(instance);
  });

  it('refuses a Guest and a Reporter with 403, a stranger with 401, too long a command with 400', async () => {
    expect((await exec(guest, instance, ['/sample-app', 'version'])).status).toBe(403);
    expect((await exec(reporter, instance, ['/sample-app', 'version'])).status).toBe(403);
    expect((await exec('nope', instance, ['/sample-app', 'version'])).status).toBe(401);
    expect(
      (
        await exec(
          developer,
          instance,
          Array.from({ length: 17 }, () => 'x'),
        )
      ).status,
    ).toBe(400);
    const plain = await api.call('GET', `/apps/${APP}/instances/${instance}/exec`, { token: developer });
    expect(plain.status).toBe(426);
  });

  it('records each session in the feed with who, where and how long, never what ran', async () => {
    await exec(developer, instance, ['/sample-app', 'version']);
    const ended = await waitFor(
      async () => {
        const feed = await api.call('GET', `/apps/${APP}/events?limit=50`, { token: reporter });
        type FeedEvent = {
          kind: string;
          action: string;
          resourceName: string;
          actor?: { name: string };
          data: Record<string, unknown>;
        };
        return (feed.json.items as FeedEvent[]).find(
          (e) => e.action === 'exec-ended' && e.actor?.name === 'dev' && e.resourceName === instance,
        );
      },
      { timeoutMs: 10_000, message: 'an exec-ended event' },
    );
    expect(ended.kind).toBe('pod');
    expect(ended.data).toMatchObject({ cell: 'cell-b', version: 'v1', exitCode: 0 });
    expect(typeof ended.data.durationMs).toBe('number');
    expect(ended.data.startedAt).toMatch(/^\d{4}-/);
    expect(JSON.stringify(ended)).not.toContain('/sample-app');
  });
});

describe('metrics', () => {
  it('answers CPU, memory and restarts per version and cell from the kubelets', async () => {
    const res = await api.call('GET', `/apps/${APP}/metrics?window=1h`, { token: reporter });
    expect(res.status).toBe(200);
    expect(res.json.window).toBe('1h');
    expect(res.json.unreachable).toEqual([]);
    const rows = res.json.items as Array<Record<string, unknown>>;
    expect(rows.map((r) => `${r.version}@${r.cell}`).sort()).toEqual(CELLS.map((c) => `v1@${c}`));
    for (const r of rows) {
      expect(r.instances).toBeGreaterThanOrEqual(1);
      expect(r.measured).toBe(r.instances);
      expect(r.cpuCores).toBeGreaterThanOrEqual(0);
      expect(r.memoryBytes).toBeGreaterThan(100_000);
      expect(typeof r.restarts).toBe('number');
    }
    expect((await api.call('GET', `/apps/${APP}/metrics`, { token: guest })).status).toBe(403);
  });
});

describe('requests from the lb-agents', () => {
  // The region's nginx routes `sample.berth.test` to the region's sample app, and the region's
  // lb-agent counts its requests. This API gets the same domain in the same group, and the
  // agent's status (where it serves its counts) copied from the region's prefix into its own.
  const LB = process.env.BERTH_LB_URL ?? regionEnv().BERTH_LB_URL ?? 'http://127.0.0.1:8080';
  const REGION_PREFIX = process.env.ETCD_PREFIX ?? regionEnv().ETCD_PREFIX ?? '/berth';
  const GROUP = 'local';
  const DOMAIN = 'sample.berth.test';

  beforeAll(async () => {
    const group = await api.call('POST', '/lb-groups', { token: api.adminToken, body: { name: GROUP } });
    expect([201, 409]).toContain(group.status);
    const bound = await api.call('POST', `/apps/${APP}/domains`, {
      token: api.adminToken,
      body: { domain: DOMAIN, group: GROUP },
    });
    expect(bound.status, JSON.stringify(bound.json)).toBe(201);
    const { etcd, keys } = api.service.runtime;
    const regionAgents = `${REGION_PREFIX}/slb/${GROUP}/agents/`;
    const agents = await waitFor(
      async () => {
        const all = Object.values(await etcd.getAll().prefix(regionAgents).strings());
        const parsed = all.map((v) => lbAgentStatusSchema.parse(JSON.parse(v)));
        return parsed.some((a) => a.statsUrl) ? parsed : undefined;
      },
      { timeoutMs: 30_000, message: `an lb-agent with a statsUrl under ${regionAgents} (the region's lb-agent)` },
    );
    for (const a of agents) await etcd.put(keys.lbAgent(GROUP, a.host)).value(JSON.stringify(a));
  }, 60_000);

  /** One GET / through the region's nginx; the version that answered (X-Berth-Version). */
  function viaNginx(): Promise<{ status: number; version: string | undefined }> {
    return new Promise((resolve, reject) => {
      get(`${LB}/`, { headers: { host: DOMAIN } }, (res) => {
        res.resume();
        res.on('end', () => {
          const v = res.headers['x-berth-version'];
          resolve({ status: res.statusCode ?? 0, version: typeof v === 'string' ? v : undefined });
        });
      }).on('error', reject);
    });
  }

  type Requests = { version: string; total: number; '2xx': number; '5xx': number }[] | null;
  async function requests(query = ''): Promise<{ requests: Requests; agents: { answered: number; missing: number } }> {
    const res = await api.call('GET', `/apps/${APP}/metrics?window=1h${query}`, { token: reporter });
    expect(res.status).toBe(200);
    return res.json;
  }
  const total = (r: Requests, version: string, field: 'total' | '2xx' = 'total') =>
    r?.find((x) => x.version === version)?.[field] ?? 0;

  it('counts the requests each version served through nginx, by status class', async () => {
    const before = await requests();
    expect(before.agents.answered).toBeGreaterThanOrEqual(1);
    expect(before.requests).not.toBeNull();
    const N = 20;
    const served = new Map<string, number>();
    for (let i = 0; i < N; i++) {
      const r = await viaNginx();
      expect(r.status).toBe(200);
      expect(r.version).toBeDefined();
      served.set(r.version as string, (served.get(r.version as string) ?? 0) + 1);
    }
    const after = await requests();
    expect(after.agents).toEqual({ answered: before.agents.answered, missing: 0 });
    for (const [version, n] of served) {
      expect(total(after.requests, version) - total(before.requests, version)).toBeGreaterThanOrEqual(n);
      expect(total(after.requests, version, '2xx') - total(before.requests, version, '2xx')).toBeGreaterThanOrEqual(n);
    }
    // A version filter narrows the answer to that version.
    const [version] = served.keys();
    const only = await requests(`&version=${version}`);
    expect(only.requests?.map((r) => r.version)).toEqual([version]);
  });

  it('counts an agent that does not answer as missing', async () => {
    const { etcd, keys } = api.service.runtime;
    const key = keys.lbAgent(GROUP, 'gone-host');
    const dead = {
      host: 'gone-host',
      group: GROUP,
      appliedGeneration: 1,
      lastGoodGeneration: 1,
      failedDomains: [],
      lastError: null,
      statsUrl: 'http://127.0.0.1:9/stats/requests',
      reportedAt: new Date().toISOString(),
    };
    await etcd.put(key).value(JSON.stringify(dead));
    try {
      const r = await requests();
      expect(r.agents.missing).toBe(1);
      expect(r.agents.answered).toBeGreaterThanOrEqual(1);
    } finally {
      await etcd.delete().key(key).exec();
    }
  });
});

describe('the OpenAPI document', () => {
  it('describes instances, logs, exec and metrics', async () => {
    const res = await fetch(`${api.url}/api/v1/openapi.json`);
    const doc = (await res.json()) as { paths: Record<string, Record<string, { responses: Record<string, unknown> }>> };
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining([
        '/api/v1/apps/{app}/instances',
        '/api/v1/apps/{app}/logs',
        '/api/v1/apps/{app}/instances/{instance}/exec',
        '/api/v1/apps/{app}/metrics',
      ]),
    );
    expect(Object.keys(doc.paths['/api/v1/apps/{app}/instances/{instance}/exec']?.get?.responses ?? {})).toEqual(
      expect.arrayContaining(['101', '426']),
    );
  });
});

describe('upgrades', () => {
  it('leaves a request that asks for another protocol (curl --http2) an ordinary one', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        `${api.url}/api/v1/openapi.json`,
        {
          headers: {
            connection: 'Upgrade, HTTP2-Settings',
            upgrade: 'h2c',
            'http2-settings': 'AAMAAABkAAQAoAAAAAIAAAAA',
          },
        },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(200);
  });

  it('answers a WebSocket anywhere but exec with 404', async () => {
    const ws = new WebSocket(`${api.url.replace(/^http/, 'ws')}/api/v1/apps/${APP}/instances`, {
      headers: { authorization: `Bearer ${developer}` },
    });
    const status = await new Promise<number>((resolve) => {
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => resolve(101));
      ws.on('error', () => undefined);
    });
    expect(status).toBe(404);
  });
});

describe('logs of an instance that starts while following', () => {
  // An app of its own in cell-a: its namespace and, once the follow is open, one pod of the
  // sample image, made with the cell's admin kubeconfig as the scheduler would.
  const app = `inst-${uniqueId(6)}`;
  const cell = loadCellClient(process.env.KUBECONFIG_DIR ?? '.local/cells', 'cell-a');

  beforeAll(async () => {
    const created = await api.call('POST', '/apps', { token: api.adminToken, body: appBody(app) });
    expect(created.status).toBe(201);
    const { runtime } = api.service;
    await runtime.etcd.put(runtime.keys.placement(app, 'v1')).value(
      JSON.stringify({
        app,
        version: 'v1',
        cells: { 'cell-a': 1 },
        generation: 1,
        desired: 1,
        conditions: [],
        updatedAt: new Date().toISOString(),
      }),
    );
    await cell.core.createNamespace({ body: { metadata: { name: app } } });
  });

  afterAll(async () => {
    await cell.core.deleteNamespace({ name: app }).catch(() => undefined);
  });

  it('picks up the new instance and streams its first lines', async () => {
    const abort = new AbortController();
    const res = await fetch(`${api.url}/api/v1/apps/${app}/logs?follow=true&format=ndjson`, {
      headers: { authorization: `Bearer ${api.adminToken}` },
      signal: abort.signal,
    });
    expect(res.status).toBe(200);
    const stream = followText(res);
    try {
      await cell.core.createNamespacedPod({
        namespace: app,
        body: {
          metadata: { name: `${app}-v1-0`, labels: { 'berth.dev/app': app, 'berth.dev/version': 'v1' } },
          spec: {
            terminationGracePeriodSeconds: 1,
            containers: [
              {
                name: 'app',
                image: process.env.BERTH_SAMPLE_IMAGE ?? '127.0.0.1:5000/berth/sample-app:v1',
                imagePullPolicy: 'IfNotPresent',
              },
            ],
          },
        },
      });
      await waitFor(() => stream.text().includes('listening on :8080'), {
        timeoutMs: 60_000,
        intervalMs: 200,
        message: "the new instance's first line on the followed stream",
      });
      const line = JSON.parse(
        stream
          .text()
          .split('\n')
          .find((l) => l.includes('listening on :8080')) ?? '{}',
      );
      expect(line).toMatchObject({ cell: 'cell-a', instance: `${app}-v1-0`, version: 'v1' });
    } finally {
      abort.abort();
      await stream.done;
    }
  }, 90_000);
});
