import type { BerthEvent, EventInput } from '@berth/shared/events';
import { BerthKeys } from '@berth/shared/keys';
import { buildEvent } from '@berth/shared/nats';
import { MemoryBackend, Store } from '@berth/shared/store';
import { describe, expect, it } from 'vitest';
import { bearerMatches, replaces, TagPushes, tagChangeOf } from './notifications.ts';

const DIGEST = `sha256:${'a'.repeat(64)}`;
const OTHER = `sha256:${'b'.repeat(64)}`;
const MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json';

/** One event as distribution 2.8 sends it (docs/notifications.md), with the fields it adds. */
function event(
  over: {
    action?: string;
    tag?: string;
    digest?: string;
    repository?: string;
    at?: string;
    actor?: string;
    mediaType?: string;
  } = {},
) {
  return {
    id: 'asd-234-asd-234',
    timestamp: over.at ?? '2026-11-29T20:50:01.123456789Z',
    action: over.action ?? 'push',
    target: {
      mediaType: over.mediaType ?? MANIFEST_V2,
      size: 708,
      digest: over.digest ?? DIGEST,
      length: 708,
      repository: over.repository ?? 'team/shop',
      url: 'http://127.0.0.1:5000/v2/team/shop/manifests/sha256:aaa',
      ...(over.tag === '' ? {} : { tag: over.tag ?? 'v1' }),
    },
    request: { id: 'r1', addr: '127.0.0.1:4711', host: '127.0.0.1:5000', method: 'PUT', useragent: 'docker/27' },
    actor: over.actor === undefined ? { name: 'alice' } : over.actor ? { name: over.actor } : {},
    source: { addr: 'host:5000', instanceID: 'x' },
  };
}

describe('reading the registry’s events', () => {
  it('a manifest pushed by tag is a push by the token’s subject at the registry’s time (UTC, ms)', () => {
    expect(tagChangeOf(event({ at: '2026-11-29T21:50:01.123456789+01:00' }))).toEqual({
      kind: 'push',
      group: 'team',
      repo: 'shop',
      tag: 'v1',
      record: { pushedAt: '2026-11-29T20:50:01.123Z', pushedBy: 'alice', digest: DIGEST },
    });
    // Anonymous (an anonymous registry) pushes with no actor name.
    const anonymous = tagChangeOf(event({ actor: '' }));
    expect(anonymous.kind === 'push' && anonymous.record.pushedBy).toBe('');
  });

  it('a manifest delete names the digest whose tags go', () => {
    expect(tagChangeOf(event({ action: 'delete', tag: '', mediaType: '' }))).toEqual({
      kind: 'delete',
      group: 'team',
      repo: 'shop',
      digest: DIGEST,
      at: '2026-11-29T20:50:01.123Z',
    });
  });

  it('pulls, mounts, blobs, pushes by digest, groupless or nested repositories and junk change nothing', () => {
    for (const raw of [
      event({ action: 'pull' }),
      event({ action: 'mount' }),
      event({ mediaType: 'application/octet-stream', tag: '' }),
      event({ tag: '' }),
      event({ repository: 'shop' }),
      event({ repository: 'team/tools/lint' }),
      event({ repository: 'Team/shop' }),
      event({ digest: 'nonsense' }),
      event({ at: 'yesterday' }),
      { events: [] },
      'text',
      null,
    ]) {
      expect(tagChangeOf(raw).kind, JSON.stringify(raw)).toBe('ignored');
    }
  });

  it('only a strictly newer push replaces a record', () => {
    const old = { pushedAt: '2026-11-29T20:00:00.000Z', pushedBy: 'a', digest: DIGEST };
    expect(replaces(old, undefined)).toBe(true);
    expect(replaces({ ...old, pushedAt: '2026-11-29T20:00:00.001Z' }, old)).toBe(true);
    expect(replaces({ ...old, pushedBy: 'b' }, old)).toBe(false);
    expect(replaces({ ...old, pushedAt: '2026-11-29T19:59:59.999Z' }, old)).toBe(false);
  });

  it('the bearer secret must match exactly', () => {
    const check = bearerMatches('s3cret-s3cret-s3cret');
    expect(check('Bearer s3cret-s3cret-s3cret')).toBe(true);
    expect(check('bearer s3cret-s3cret-s3cret')).toBe(true);
    for (const wrong of [
      undefined,
      '',
      'Bearer ',
      'Bearer s3cret',
      'Bearer s3cret-s3cret-s3cret-',
      'Basic s3cret-s3cret-s3cret',
    ]) {
      expect(check(wrong), String(wrong)).toBe(false);
    }
  });
});

describe('the records', () => {
  function setup() {
    const keys = new BerthKeys('/t');
    const store = new Store(new MemoryBackend());
    const published: BerthEvent[] = [];
    const events = {
      record: (input: EventInput) => {
        const e = buildEvent(input);
        return { op: { op: 'put' as const, key: keys.outbox(e.id), value: e }, event: e };
      },
      flush: (list: readonly BerthEvent[]) => {
        published.push(...list);
      },
    };
    const pushes = new TagPushes({ store, keys, events });
    const group = () =>
      store.commit([
        {
          op: 'put',
          key: keys.imageGroup('team'),
          value: {
            name: 'team',
            public: false,
            description: '',
            createdBy: 'alice',
            createdAt: '2026-11-29T00:00:00.000Z',
            updatedAt: '2026-11-29T00:00:00.000Z',
          },
        },
      ]);
    const apply = (raw: unknown) => pushes.apply(tagChangeOf(raw));
    return { store, keys, pushes, published, group, apply };
  }

  it('a push is recorded once, with a `pushed` event; a redelivery or an older push changes nothing', async () => {
    const { pushes, published, group, apply } = setup();
    await group();
    expect((await apply(event({ at: '2026-11-29T20:00:00Z' }))).applied).toBe('recorded');
    expect((await apply(event({ at: '2026-11-29T20:00:00Z' }))).applied).toBe('stale');
    expect((await apply(event({ at: '2026-11-29T19:00:00Z', actor: 'bob', digest: OTHER }))).applied).toBe('stale');
    expect((await pushes.ofRepository('team', 'shop')).get('v1')).toEqual({
      pushedAt: '2026-11-29T20:00:00.000Z',
      pushedBy: 'alice',
      digest: DIGEST,
    });
    expect(published).toHaveLength(1);
    expect(published[0]).toMatchObject({
      kind: 'image',
      resourceId: 'team/shop',
      resourceName: 'v1',
      action: 'pushed',
      actor: { type: 'user', name: 'alice' },
      data: { repository: 'team/shop', tag: 'v1', digest: DIGEST },
    });
    // A later push of the tag wins; a build robot is a service.
    expect(
      (await apply(event({ at: '2026-11-29T21:00:00Z', actor: 'build@0123456789abcdef.1', digest: OTHER }))).applied,
    ).toBe('recorded');
    expect((await pushes.ofRepository('team', 'shop')).get('v1')?.pushedBy).toBe('build@0123456789abcdef.1');
    expect(published[1]?.actor).toEqual({ type: 'service', name: 'build@0123456789abcdef.1' });
    expect(JSON.stringify(published)).not.toMatch(/Bearer/);
  });

  it('a push to a repository of no image group records nothing', async () => {
    const { pushes, apply } = setup();
    expect((await apply(event())).applied).toBe('no-group');
    expect((await pushes.ofRepository('team', 'shop')).size).toBe(0);
  });

  it('a manifest delete forgets the tags that named it when they were pushed before it', async () => {
    const { pushes, group, apply } = setup();
    await group();
    await apply(event({ tag: 'v1', at: '2026-11-29T20:00:00Z' }));
    await apply(event({ tag: 'alias', at: '2026-11-29T20:00:01Z' }));
    await apply(event({ tag: 'v2', digest: OTHER, at: '2026-11-29T20:00:02Z' }));
    // Pushed again after the delete (which arrives late): kept.
    await apply(event({ tag: 'again', at: '2026-11-29T20:10:00Z' }));
    const del = await apply(event({ action: 'delete', tag: '', at: '2026-11-29T20:05:00Z' }));
    expect(del).toEqual({ applied: 'forgotten', count: 2 });
    expect([...(await pushes.ofRepository('team', 'shop')).keys()].sort()).toEqual(['again', 'v2']);
    expect((await apply(event({ action: 'delete', tag: '', at: '2026-11-29T20:05:00Z' }))).count).toBe(0);
  });
});
