/**
 * Long-lived streams against the local region's real cells: an exec's stdin ends with the
 * `stdin-eof` frame, and each user holds at most MAX_FOLLOWS_PER_USER followed logs and
 * MAX_EXEC_PER_USER exec sessions at once (2 each here). As in instances.test.ts, this API (in a
 * prefix of its own) gets an app named `sample` and the placement of the region's sample app, so
 * it reads those real pods; exec runs `/sample-app cat` in them, which only echoes.
 */
import { uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { ensureRegion, mirrorSampleApp, startApi, type TestApi } from './harness.ts';

const APP = 'sample';
let api: TestApi;
let reporter: string;
let developer: string;
let other: string;
let instance: string;

beforeAll(async () => {
  api = await startApi({
    KUBECONFIG_DIR: process.env.KUBECONFIG_DIR ?? '.local/cells',
    MAX_FOLLOWS_PER_USER: '2',
    MAX_EXEC_PER_USER: '2',
  });
  await ensureRegion(api);
  const suffix = uniqueId(4);
  const tokens = await mirrorSampleApp(api, {
    [`rep${suffix}`]: 'Reporter',
    [`dev${suffix}`]: 'Developer',
    [`oth${suffix}`]: 'Developer',
  });
  reporter = tokens[`rep${suffix}`] as string;
  developer = tokens[`dev${suffix}`] as string;
  other = tokens[`oth${suffix}`] as string;
  const listed = await api.call('GET', `/apps/${APP}/instances`, { token: reporter });
  instance = (listed.json.items as Array<{ instance: string; ready: boolean }>).find((i) => i.ready)?.instance ?? '';
  expect(instance, 'a ready instance of the sample app (make up deploys it)').not.toBe('');
}, 60_000);

afterAll(async () => {
  await api?.stop();
});

type Session = {
  /** 101 once upgraded, else the refusal's status. */
  status: Promise<number>;
  /** The refusal's body (problem+json), when refused. */
  refusal: Promise<Record<string, unknown> | undefined>;
  ws: WebSocket;
  stdout: () => string;
  /** Settles when the socket closes: the exit code frame's code (undefined when none came). */
  ended: Promise<number | null | undefined>;
};

/** Opens an exec session of `command` with stdin on. */
function openExec(token: string, command: string[]): Session {
  const q = new URLSearchParams(command.map((c): [string, string] => ['command', c]));
  q.set('stdin', 'true');
  const ws = new WebSocket(`${api.url.replace(/^http/, 'ws')}/api/v1/apps/${APP}/instances/${instance}/exec?${q}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  let stdout = '';
  let code: number | null | undefined;
  let setStatus: (s: number) => void = () => undefined;
  let setRefusal: (b: Record<string, unknown> | undefined) => void = () => undefined;
  const status = new Promise<number>((r) => {
    setStatus = r;
  });
  const refusal = new Promise<Record<string, unknown> | undefined>((r) => {
    setRefusal = r;
  });
  ws.on('unexpected-response', (_req, res) => {
    setStatus(res.statusCode ?? 0);
    let body = '';
    res.on('data', (c: Buffer) => {
      body += c;
    });
    res.on('end', () => setRefusal(JSON.parse(body)));
  });
  ws.on('open', () => {
    setStatus(101);
    setRefusal(undefined);
  });
  ws.on('message', (data: Buffer, binary) => {
    if (binary && data[0] === 1) stdout += data.subarray(1).toString();
    if (!binary) {
      const frame = JSON.parse(data.toString());
      if (frame.type === 'exit') code = frame.code;
    }
  });
  ws.on('error', () => undefined);
  const ended = new Promise<number | null | undefined>((resolve) => ws.on('close', () => resolve(code)));
  return { status, refusal, ws, stdout: () => stdout, ended };
}

/** Ends a session's stdin; `/sample-app cat` then exits 0. */
async function finish(s: Session): Promise<number | null | undefined> {
  s.ws.send(JSON.stringify({ type: 'stdin-eof' }));
  return s.ended;
}

describe('exec stdin', () => {
  it('ends with stdin-eof: the command reads its input to the end and exits 0', async () => {
    const s = openExec(developer, ['/sample-app', 'cat']);
    expect(await s.status).toBe(101);
    s.ws.send(Buffer.from('hello\n'));
    s.ws.send(Buffer.from('world\n'));
    const code = await finish(s);
    expect(code).toBe(0);
    expect(s.stdout()).toBe('hello\nworld\n');
  }, 30_000);
});

describe('exec sessions per user', () => {
  it('refuses one more than MAX_EXEC_PER_USER with 429 before the upgrade, and takes one again once a session ended', async () => {
    const open = [openExec(developer, ['/sample-app', 'cat']), openExec(developer, ['/sample-app', 'cat'])];
    try {
      expect(await Promise.all(open.map((s) => s.status))).toEqual([101, 101]);
      const third = openExec(developer, ['/sample-app', 'cat']);
      expect(await third.status).toBe(429);
      expect(await third.refusal).toMatchObject({ status: 429, limit: 'MAX_EXEC_PER_USER', max: 2 });
      expect(String((await third.refusal)?.detail)).toContain('MAX_EXEC_PER_USER');

      // Another user has slots of their own.
      const theirs = openExec(other, ['/sample-app', 'cat']);
      expect(await theirs.status).toBe(101);
      expect(await finish(theirs)).toBe(0);

      // The command of one session ends: its slot is free for the next.
      expect(await finish(open[0] as Session)).toBe(0);
      const again = openExec(developer, ['/sample-app', 'cat']);
      expect(await again.status).toBe(101);
      open.push(again);

      // A client that goes away frees its slot too.
      (open[1] as Session).ws.terminate();
      await waitFor(
        async () => {
          const s = openExec(developer, ['/sample-app', 'cat']);
          if ((await s.status) !== 101) return false;
          open.push(s);
          return true;
        },
        { timeoutMs: 10_000, intervalMs: 200, message: 'a slot freed by a client that went away' },
      );
    } finally {
      for (const s of open) if (s.ws.readyState === WebSocket.OPEN) s.ws.close();
    }
  }, 60_000);
});

describe('followed logs per user', () => {
  const follow = (token: string, signal: AbortSignal) =>
    fetch(`${api.url}/api/v1/apps/${APP}/logs?follow=true&tail=0`, {
      headers: { authorization: `Bearer ${token}` },
      signal,
    });

  it('refuses one more than MAX_FOLLOWS_PER_USER with a 429 problem, and takes one again once a follow was closed', async () => {
    const aborts = [new AbortController(), new AbortController()];
    try {
      const streams = await Promise.all(aborts.map((a) => follow(reporter, a.signal)));
      expect(streams.map((r) => r.status)).toEqual([200, 200]);

      const refused = new AbortController();
      aborts.push(refused);
      const third = await follow(reporter, refused.signal);
      expect(third.status).toBe(429);
      expect(third.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      const problem = (await third.json()) as Record<string, unknown>;
      expect(problem).toMatchObject({ status: 429, limit: 'MAX_FOLLOWS_PER_USER', max: 2, open: 2 });

      // Reading without follow is not a stream: never counted.
      const plain = await fetch(`${api.url}/api/v1/apps/${APP}/logs?tail=1`, {
        headers: { authorization: `Bearer ${reporter}` },
      });
      expect(plain.status).toBe(200);
      await plain.text();

      // The client closes one follow: the API sees it go and frees the slot.
      aborts[0]?.abort();
      await waitFor(
        async () => {
          const a = new AbortController();
          aborts.push(a);
          const r = await follow(reporter, a.signal);
          if (r.status === 200) return true;
          await r.text();
          return false;
        },
        { timeoutMs: 10_000, intervalMs: 200, message: 'a follow slot freed by a closed stream' },
      );
    } finally {
      for (const a of aborts) a.abort();
    }
  }, 30_000);

  it("counts a build's log followed over SSE as a follow too", async () => {
    // A run of a config in this API's own prefix, where no builder-agent lives: it stays queued,
    // so its log stream stays open.
    const admin = api.adminToken;
    expect((await api.call('POST', '/image-groups', { token: admin, body: { name: 'team' } })).status).toBe(201);
    const config = await api.call('POST', `/apps/${APP}/build-configs`, {
      token: admin,
      body: { name: 'web', git: { url: 'file:///srv/git/shop.git' }, target: 'team/shop' },
    });
    expect(config.status, JSON.stringify(config.json)).toBe(201);
    const run = await api.call('POST', `/apps/${APP}/build-configs/web/runs`, { token: developer, body: {} });
    expect(run.status, JSON.stringify(run.json)).toBe(201);
    const buildLog = (signal: AbortSignal) =>
      fetch(`${api.url}/api/v1/builds/${run.json.id}/logs`, {
        headers: { authorization: `Bearer ${reporter}`, accept: 'text/event-stream' },
        signal,
      });
    const aborts = [new AbortController(), new AbortController(), new AbortController()];
    try {
      const appLog = await follow(reporter, (aborts[0] as AbortController).signal);
      expect(appLog.status).toBe(200);
      const sse = await buildLog((aborts[1] as AbortController).signal);
      expect(sse.status).toBe(200);
      expect(sse.headers.get('content-type')).toMatch(/^text\/event-stream/);
      const third = await buildLog((aborts[2] as AbortController).signal);
      expect(third.status).toBe(429);
      expect(await third.json()).toMatchObject({ limit: 'MAX_FOLLOWS_PER_USER', open: 2 });

      aborts[1]?.abort();
      await waitFor(
        async () => {
          const a = new AbortController();
          aborts.push(a);
          const r = await buildLog(a.signal);
          if (r.status === 200) return true;
          await r.text();
          return false;
        },
        { timeoutMs: 10_000, intervalMs: 200, message: 'a follow slot freed by a closed build log' },
      );
    } finally {
      for (const a of aborts) a.abort();
    }
  }, 30_000);
});
