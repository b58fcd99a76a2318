import { rank } from '@berth/shared/builds';
import { describe, expect, it } from 'vitest';
import { choosePlacement } from './placement.ts';
import { runIdOf } from './runs.ts';
import { renderTag } from './tag.ts';
import { sha256Hex } from './webhook-secrets.ts';
import { eventOf, globMatch, matchTrigger, parsePush, verifyDelivery } from './webhooks.ts';

const agents = ['a1', 'a2', 'a3'].map((id) => ({ id, weight: 1, slots: 2, draining: false }));

describe('placement', () => {
  it('puts a config on its home agent while its queue has room', () => {
    const home = rank('cfg', agents)[0]?.id;
    expect(choosePlacement({ key: 'cfg', agents, waiting: new Map() })).toEqual({
      agentId: home,
      rank: 1,
      reason: 'affinity',
    });
  });

  it('spills to the next in the ranking when the home queue holds 2 × slots waiting jobs', () => {
    const [home, second] = rank('cfg', agents);
    const waiting = new Map([[home?.id as string, 4]]);
    expect(choosePlacement({ key: 'cfg', agents, waiting })).toEqual({ agentId: second?.id, rank: 2, reason: 'spill' });
    expect(choosePlacement({ key: 'cfg', agents, waiting: new Map([[home?.id as string, 3]]) })?.rank).toBe(1);
  });

  it('skips a draining home, and places nothing when every agent drains', () => {
    const [home, second] = rank('cfg', agents);
    const draining = agents.map((a) => ({ ...a, draining: a.id === home?.id }));
    expect(choosePlacement({ key: 'cfg', agents: draining, waiting: new Map() })?.agentId).toBe(second?.id);
    const all = agents.map((a) => ({ ...a, draining: true }));
    expect(choosePlacement({ key: 'cfg', agents: all, waiting: new Map() })).toBeUndefined();
    expect(choosePlacement({ key: 'cfg', agents: [], waiting: new Map() })).toBeUndefined();
  });

  it('takes the least loaded agent when every queue is deep, and says rehome after an agent left', () => {
    const waiting = new Map([
      ['a1', 9],
      ['a2', 5],
      ['a3', 7],
    ]);
    expect(choosePlacement({ key: 'cfg', agents, waiting })?.agentId).toBe('a2');
    expect(choosePlacement({ key: 'cfg', agents, waiting: new Map(), rehome: true })?.reason).toBe('rehome');
  });
});

describe('run ids', () => {
  it("are the config id and the run's number, so one config's runs sort in order", () => {
    const id = 'abcdefghij012345';
    expect(runIdOf(id, 1)).toBe(`${id}00000001`);
    expect(runIdOf(id, 36) > runIdOf(id, 35)).toBe(true);
    expect(runIdOf(id, 1)).toMatch(/^[a-z0-9]{16,32}$/);
  });
});

describe('image tags', () => {
  it('fill the template, and a tag push uses the git tag', () => {
    const sha = '0123456789abcdef0123456789abcdef01234567';
    expect(renderTag({ template: '{branch}-{sha7}', branch: 'main', commit: sha, run: 3 })).toBe('main-0123456');
    expect(renderTag({ template: '{branch}-{run}', branch: 'feature/x', commit: null, run: 3 })).toBe('feature-x-3');
    expect(renderTag({ template: '{branch}-{sha7}', branch: 'main', gitTag: 'v1.2.0', commit: sha, run: 1 })).toBe(
      'v1.2.0',
    );
  });
});

describe('webhook signatures', () => {
  const header = (h: Record<string, string>) => (name: string) => h[name.toLowerCase()];

  it("GitHub's published test vector verifies", () => {
    const secret = "It's a Secret to Everybody";
    const ok = verifyDelivery(
      'github',
      header({ 'x-hub-signature-256': 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17' }),
      Buffer.from('Hello, World!'),
      { plain: secret, hash: sha256Hex(secret) },
    );
    expect(ok).toBe(true);
  });

  it('a changed body, a wrong secret or a missing header does not verify', () => {
    const secret = "It's a Secret to Everybody";
    const sig = { 'x-hub-signature-256': 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17' };
    const s = { plain: secret, hash: sha256Hex(secret) };
    expect(verifyDelivery('github', header(sig), Buffer.from('Hello, World?'), s)).toBe(false);
    expect(verifyDelivery('github', header(sig), Buffer.from('Hello, World!'), { ...s, plain: 'other' })).toBe(false);
    expect(verifyDelivery('github', header({}), Buffer.from('Hello, World!'), s)).toBe(false);
  });

  it('Gitea signs with the hex HMAC without prefix; GitLab sends the secret itself', () => {
    const secret = "It's a Secret to Everybody";
    const s = { plain: secret, hash: sha256Hex(secret) };
    const hex = '757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17';
    expect(verifyDelivery('gitea', header({ 'x-gitea-signature': hex }), Buffer.from('Hello, World!'), s)).toBe(true);
    expect(
      verifyDelivery('gitea', header({ 'x-gitea-signature': `sha256=${hex}` }), Buffer.from('Hello, World!'), s),
    ).toBe(false);
    expect(verifyDelivery('gitlab', header({ 'x-gitlab-token': secret }), Buffer.alloc(0), s)).toBe(true);
    expect(verifyDelivery('gitlab', header({ 'x-gitlab-token': 'nope' }), Buffer.alloc(0), s)).toBe(false);
  });
});

describe('push payloads and triggers', () => {
  const config = { git: { url: 'file:///repo', branch: 'main' }, triggers: undefined };

  it('a push to the config branch starts a run; other branches and deletes do not', () => {
    expect(matchTrigger(config, 'refs/heads/main')).toEqual({ start: true, kind: 'branch', name: 'main' });
    expect(matchTrigger(config, 'refs/heads/dev').start).toBe(false);
    expect(matchTrigger(config, 'refs/tags/v1').start).toBe(false);
    const deleted = parsePush('github', { ref: 'refs/heads/main', after: '0'.repeat(40), deleted: true });
    expect(deleted?.deleted).toBe(true);
    const gitlabDelete = parsePush('gitlab', { ref: 'refs/heads/main', after: '0'.repeat(40), checkout_sha: null });
    expect(gitlabDelete?.deleted).toBe(true);
  });

  it('trigger globs match branches and tags', () => {
    const withTriggers = { ...config, triggers: { branches: ['main', 'release/*'], tags: ['v*'] } };
    expect(matchTrigger(withTriggers, 'refs/heads/release/1.0').start).toBe(true);
    expect(matchTrigger(withTriggers, 'refs/heads/release/1.0/hotfix').start).toBe(false);
    expect(matchTrigger(withTriggers, 'refs/tags/v1.2.0')).toEqual({ start: true, kind: 'tag', name: 'v1.2.0' });
    expect(globMatch('**', 'a/b/c')).toBe(true);
    expect(globMatch('v?', 'v1')).toBe(true);
    expect(globMatch('a.b', 'aXb')).toBe(false);
  });

  it("reads each provider's event header (Gitea's GitHub headers do not count)", () => {
    const h = (o: Record<string, string>) => (n: string) => o[n];
    expect(eventOf('gitlab', h({ 'x-gitlab-event': 'Tag Push Hook' }))).toBe('push');
    expect(eventOf('github', h({ 'x-github-event': 'ping' }))).toBe('ping');
    expect(eventOf('gitea', h({ 'x-github-event': 'push', 'x-gitea-event': 'create' }))).toBe('create');
  });
});
