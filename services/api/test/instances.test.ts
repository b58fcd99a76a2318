/**
 * Instances, logs, exec and metrics through the API against the local region's real cells. The
 * region's scheduler runs the sample app (`sample`, v1 in cell-a and cell-b) in its own etcd
 * prefix; this API, in a prefix of its own, gets an app of the same name and its placement, so
 * it reads those real pods without starting a scheduler of its own (they are only read, and exec
 * runs harmless commands in them).
 */
import { waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';

const APP = 'sample';
const CELLS = ['cell-a', 'cell-b'];
let api: TestApi;
let reporter: string;
let guest: string;
let developer: string;

beforeAll(async () => {
  api = await startApi({ KUBECONFIG_DIR: process.env.KUBECONFIG_DIR ?? '.local/cells' });
  await ensureRegion(api);
  const created = await api.call('POST', '/apps', { token: api.adminToken, body: appBody(APP) });
  expect(created.status).toBe(201);
  const { runtime } = api.service;
  const now = new Date().toISOString();
  await runtime.etcd.put(runtime.keys.placement(APP, 'v1')).value(
    JSON.stringify({
      app: APP,
      version: 'v1',
      cells: Object.fromEntries(CELLS.map((c) => [c, 1])),
      generation: 1,
      desired: 2,
      conditions: [],
      updatedAt: now,
    }),
  );
  [reporter, guest, developer] = await Promise.all([api.user('rep'), api.user('gue'), api.user('dev')]);
  for (const [user, role] of [
    ['rep', 'Reporter'],
    ['gue', 'Guest'],
    ['dev', 'Developer'],
  ]) {
    const res = await api.call('PUT', `/apps/${APP}/members/${user}`, { token: api.adminToken, body: { role } });
    expect(res.status, JSON.stringify(res.body)).toBeLessThan(300);
  }
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
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = '';
    const reading = (async () => {
      for (;;) {
        const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
        if (done) return;
        text += decoder.decode(value, { stream: true });
      }
    })();
    try {
      // The app logs every `GET /` it serves; ask until the line shows up on the stream.
      await waitFor(
        async () => {
          await fetch(`http://${target?.ip}:8080/`).then((r) => r.text());
          return text.split('\n').some((l) => l.includes('"cell":"cell-a"') && l.includes('GET / from'));
        },
        { timeoutMs: 20_000, intervalMs: 500, message: 'a followed line' },
      );
    } finally {
      abort.abort();
      await reading;
    }
  });
});
