/**
 * Push webhooks of GitHub, GitLab and Gitea through the API, against the region's real etcd,
 * Redis and NATS: signatures over the raw body (valid, invalid, GitHub's published vector shape),
 * the branch and tag filters, deletes ignored, a redelivery starting nothing, and the run pinned
 * to the pushed commit with the image tag from the template or the git tag. Payloads carry the
 * providers' documented push fields.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { type BuildRun, buildQueueName } from '@berth/shared/builds';
import { regionCredentials, regionEnv, uniqueId } from '@berth/shared/testing';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';

let api: TestApi;
let owner: string;
const region = `wr${uniqueId(6)}`;
const group = `wg${uniqueId(6)}`;
const app = 'hooked';
let config: { id: string; webhook: { url: string; secret: string } };

beforeAll(async () => {
  api = await startApi();
  await ensureRegion(api, region);
  owner = await api.user('w-owner');
  expect((await api.call('POST', '/image-groups', { token: owner, body: { name: group } })).status).toBe(201);
  const created = await api.call('POST', '/apps', {
    token: owner,
    body: { ...appBody(app, region), image: `${group}/web` },
  });
  expect(created.status).toBe(201);
  const res = await api.call('POST', `/apps/${app}/build-configs`, {
    token: owner,
    body: {
      name: 'web',
      git: { url: 'https://git.example.test/team/web.git', branch: 'main' },
      target: `${group}/web`,
      triggers: { branches: ['main', 'release/*'], tags: ['v*'] },
    },
  });
  expect(res.status, JSON.stringify(res.json)).toBe(201);
  config = res.json;
});

afterAll(async () => {
  // No agent registered in this region: nothing was queued, but make sure.
  const redis = new Redis(regionEnv().REDIS_URL as string, {
    maxRetriesPerRequest: null,
    ...regionCredentials().redis,
  });
  await new Queue(buildQueueName(region, 'none'), { connection: redis }).obliterate({ force: true }).catch(() => 0);
  redis.disconnect();
  await api?.stop();
});

const sha = () => randomBytes(20).toString('hex');

/** A push payload with the fields GitHub and Gitea document for `push` events. */
function githubPush(ref: string, after: string, extra: Record<string, unknown> = {}) {
  return {
    ref,
    before: sha(),
    after,
    created: false,
    deleted: false,
    forced: false,
    compare: 'https://git.example.test/team/web/compare',
    commits: [{ id: after, message: 'change', timestamp: new Date().toISOString(), author: { name: 'Dev' } }],
    head_commit: { id: after, message: 'change' },
    repository: {
      id: 1,
      name: 'web',
      full_name: 'team/web',
      clone_url: 'https://git.example.test/team/web.git',
      default_branch: 'main',
    },
    pusher: { name: 'dev', email: 'dev@example.test' },
    sender: { login: 'dev', id: 7 },
    ...extra,
  };
}

/** A GitLab push payload (`Push Hook`), with its documented fields. */
function gitlabPush(ref: string, after: string, checkoutSha: string | null = after) {
  return {
    object_kind: 'push',
    event_name: 'push',
    before: sha(),
    after,
    ref,
    checkout_sha: checkoutSha,
    user_username: 'dev',
    user_name: 'Dev',
    project_id: 15,
    project: {
      id: 15,
      name: 'web',
      path_with_namespace: 'team/web',
      git_http_url: 'https://git.example.test/team/web.git',
    },
    commits: [],
    total_commits_count: 1,
  };
}

function hmac(secret: string, body: string): string {
  return createHmac('sha256', secret).update(body).digest('hex');
}

function post(provider: string, body: string, headers: Record<string, string>) {
  return api.call('POST', `/hooks/${provider}/${config.id}`, {
    raw: body,
    headers: { 'content-type': 'application/json', ...headers },
  });
}

describe('GitHub', () => {
  it('a signed push to main starts a run pinned to the pushed commit', async () => {
    const after = sha();
    const body = JSON.stringify(githubPush('refs/heads/main', after));
    const res = await post('github', body, {
      'x-github-event': 'push',
      'x-github-delivery': `d-${uniqueId()}`,
      'x-hub-signature-256': `sha256=${hmac(config.webhook.secret, body)}`,
    });
    expect(res.status, JSON.stringify(res.json)).toBe(202);
    const run = res.json.build as BuildRun;
    expect(res.json.started).toBe(true);
    expect(run).toMatchObject({
      commit: after,
      ref: 'refs/heads/main',
      state: 'queued',
      trigger: { type: 'webhook', by: 'dev' },
      image: { repository: `${group}/web`, tag: `main-${after.slice(0, 7)}`, digest: null },
    });
    const read = await api.call('GET', `/builds/${run.id}`, { token: owner });
    expect(read.json.commit).toBe(after);
  });

  it('a wrong or missing signature is refused, and the body is checked byte for byte', async () => {
    const body = JSON.stringify(githubPush('refs/heads/main', sha()));
    const wrong = await post('github', body, {
      'x-github-event': 'push',
      'x-hub-signature-256': `sha256=${hmac('not the secret', body)}`,
    });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('content-type')).toMatch(/problem\+json/);
    const signedOther = `${body} `;
    const tampered = await post('github', body, {
      'x-github-event': 'push',
      'x-hub-signature-256': `sha256=${hmac(config.webhook.secret, signedOther)}`,
    });
    expect(tampered.status).toBe(401);
    expect((await post('github', body, { 'x-github-event': 'push' })).status).toBe(401);
    // A token for GitLab does not stand in for GitHub's signature.
    expect((await post('github', body, { 'x-gitlab-token': config.webhook.secret })).status).toBe(401);
  });

  it('other branches, deletes and a ping start nothing, saying why', async () => {
    const sign = (body: string) => `sha256=${hmac(config.webhook.secret, body)}`;
    const other = JSON.stringify(githubPush('refs/heads/feature/x', sha()));
    const a = await post('github', other, { 'x-github-event': 'push', 'x-hub-signature-256': sign(other) });
    expect(a.status).toBe(202);
    expect(a.json).toMatchObject({ started: false });
    expect(a.json.reason).toMatch(/feature\/x/);
    const deleted = JSON.stringify(githubPush('refs/heads/main', '0'.repeat(40), { deleted: true }));
    const b = await post('github', deleted, { 'x-github-event': 'push', 'x-hub-signature-256': sign(deleted) });
    expect(b.status).toBe(202);
    expect(b.json.reason).toMatch(/deleted/);
    const ping = JSON.stringify({ zen: 'Keep it logically awesome.', hook_id: 1 });
    const c = await post('github', ping, { 'x-github-event': 'ping', 'x-hub-signature-256': sign(ping) });
    expect(c.status).toBe(200);
    expect(c.json).toMatchObject({ started: false, reason: 'ping' });
  });

  it('a redelivery (same X-GitHub-Delivery) starts nothing', async () => {
    const body = JSON.stringify(githubPush('refs/heads/release/2.0', sha()));
    const headers = {
      'x-github-event': 'push',
      'x-github-delivery': `d-${uniqueId()}`,
      'x-hub-signature-256': `sha256=${hmac(config.webhook.secret, body)}`,
    };
    const first = await post('github', body, headers);
    expect(first.status).toBe(202);
    expect(first.json.started).toBe(true);
    const again = await post('github', body, headers);
    expect(again.status).toBe(200);
    expect(again.json).toMatchObject({ started: false });
    expect(again.json.reason).toMatch(/seen before/);
    const runs = await api.call('GET', `/apps/${app}/build-configs/web/runs?limit=500`, { token: owner });
    expect(runs.json.items.filter((r: BuildRun) => r.ref === 'refs/heads/release/2.0')).toHaveLength(1);
  });
});

describe('GitLab', () => {
  it('X-Gitlab-Token is compared with the secret; a tag push tags the image with the git tag', async () => {
    const after = sha();
    const body = JSON.stringify({ ...gitlabPush('refs/tags/v1.4.0', after), object_kind: 'tag_push' });
    const res = await post('gitlab', body, {
      'x-gitlab-event': 'Tag Push Hook',
      'x-gitlab-token': config.webhook.secret,
      'x-gitlab-event-uuid': uniqueId(16),
    });
    expect(res.status, JSON.stringify(res.json)).toBe(202);
    expect(res.json.build).toMatchObject({ commit: after, ref: 'refs/tags/v1.4.0', image: { tag: 'v1.4.0' } });
    const wrong = await post('gitlab', body, { 'x-gitlab-event': 'Push Hook', 'x-gitlab-token': 'guess' });
    expect(wrong.status).toBe(401);
  });

  it('a branch delete (checkout_sha null) is ignored', async () => {
    const body = JSON.stringify(gitlabPush('refs/heads/main', '0'.repeat(40), null));
    const res = await post('gitlab', body, { 'x-gitlab-event': 'Push Hook', 'x-gitlab-token': config.webhook.secret });
    expect(res.status).toBe(202);
    expect(res.json.reason).toMatch(/deleted/);
  });
});

describe('Gitea', () => {
  it('X-Gitea-Signature (hex, no prefix) authenticates; the GitHub headers Gitea also sends do not decide', async () => {
    const after = sha();
    const body = JSON.stringify(githubPush('refs/heads/main', after, { pusher: { login: 'gitea-dev' } }));
    const signature = hmac(config.webhook.secret, body);
    const res = await post('gitea', body, {
      'x-gitea-event': 'push',
      'x-gitea-delivery': uniqueId(16),
      'x-gitea-signature': signature,
      'x-github-event': 'push',
      'x-hub-signature-256': `sha256=${signature}`,
    });
    expect(res.status, JSON.stringify(res.json)).toBe(202);
    expect(res.json.build).toMatchObject({ commit: after, trigger: { by: 'gitea-dev' } });
    const prefixed = await post('gitea', body, { 'x-gitea-event': 'push', 'x-gitea-signature': `sha256=${signature}` });
    expect(prefixed.status).toBe(401);
  });

  it("a deleted app's build configs take their webhook ids along", async () => {
    const other = 'hooked-gone';
    const created = await api.call('POST', '/apps', {
      token: owner,
      body: { ...appBody(other, region), image: `${group}/web` },
    });
    expect(created.status).toBe(201);
    const cfg = await api.call('POST', `/apps/${other}/build-configs`, {
      token: owner,
      body: { name: 'web', git: { url: 'file:///x' }, target: `${group}/web` },
    });
    expect(cfg.status).toBe(201);
    expect((await api.call('DELETE', `/apps/${other}`, { token: owner })).status).toBe(204);
    const index = await api.service.runtime.store.keys(api.service.runtime.keys.buildConfigId(cfg.json.id));
    expect(index).toHaveLength(0);
    const res = await api.call('POST', `/hooks/gitlab/${cfg.json.id}`, {
      raw: '{}',
      headers: { 'content-type': 'application/json', 'x-gitlab-token': cfg.json.webhook.secret },
    });
    expect(res.status).toBe(404);
  });

  it('a hook for a config that does not exist is 404', async () => {
    const res = await api.call('POST', '/hooks/gitea/0000000000000000', {
      raw: '{}',
      headers: { 'content-type': 'application/json' },
    });
    expect(res.status).toBe(404);
  });
});
