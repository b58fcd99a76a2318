/**
 * Image groups and their members through the API, against the region's real etcd and NATS: who
 * sees and changes what (the shared roles; private groups hidden from non-members, public ones
 * readable by all; admins see all), If-Match, problem+json with field paths, and the events.
 */
import { EventSubjects } from '@berth/shared/events';
import { imageGroupMemberSchema } from '@berth/shared/model';
import { NatsClient, readEvents } from '@berth/shared/nats';
import { regionCredentials, regionEnv, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';

let api: TestApi;
let owner: string;
let master: string;
let developer: string;
let reporter: string;
let stranger: string;
let counter = 0;

beforeAll(async () => {
  api = await startApi();
  owner = await api.user('ig-owner');
  master = await api.user('ig-master');
  developer = await api.user('ig-dev');
  reporter = await api.user('ig-reporter');
  stranger = await api.user('ig-stranger');
});

afterAll(async () => {
  await api?.stop();
});

/** A fresh private group of ig-owner with a Master, a Developer and a Reporter. */
async function fixture(isPublic = false): Promise<string> {
  const group = `grp-${++counter}`;
  const res = await api.call('POST', '/image-groups', {
    token: owner,
    body: { name: group, public: isPublic, description: 'team images' },
  });
  expect(res.status, JSON.stringify(res.json)).toBe(201);
  for (const [user, role] of [
    ['ig-master', 'Master'],
    ['ig-dev', 'Developer'],
    ['ig-reporter', 'Reporter'],
  ]) {
    const put = await api.call('PUT', `/image-groups/${group}/members/${user}`, { token: owner, body: { role } });
    expect(put.status, JSON.stringify(put.json)).toBe(200);
  }
  return group;
}

describe('image groups', () => {
  it('the creator is the Owner; the answer has an ETag and a Location', async () => {
    const res = await api.call('POST', '/image-groups', { token: developer, body: { name: 'dev-own' } });
    expect(res.status).toBe(201);
    expect(res.json).toMatchObject({
      name: 'dev-own',
      public: false,
      description: '',
      createdBy: 'ig-dev',
      role: 'Owner',
    });
    expect(res.headers.get('etag')).toMatch(/^"\d+"$/);
    expect(res.headers.get('location')).toBe('/api/v1/image-groups/dev-own');
    const members = await api.call('GET', '/image-groups/dev-own/members', { token: developer });
    expect(members.json.items).toMatchObject([{ user: 'ig-dev', role: 'Owner', addedBy: 'ig-dev' }]);
    const again = await api.call('POST', '/image-groups', { token: owner, body: { name: 'dev-own' } });
    expect(again.status).toBe(409);
  });

  it('a private group is hidden from non-members (404), a public one is readable by everyone', async () => {
    const hidden = await fixture(false);
    const open = await fixture(true);
    expect((await api.call('GET', `/image-groups/${hidden}`, { token: stranger })).status).toBe(404);
    expect((await api.call('GET', `/image-groups/${hidden}/members`, { token: stranger })).status).toBe(404);
    const seen = await api.call('GET', `/image-groups/${open}`, { token: stranger });
    expect(seen.status).toBe(200);
    expect(seen.json.role).toBeUndefined();
    expect((await api.call('GET', `/image-groups/${open}/members`, { token: stranger })).status).toBe(200);
    // Reading a public group is not a licence to change it.
    expect(
      (await api.call('PATCH', `/image-groups/${open}`, { token: stranger, body: { public: false } })).status,
    ).toBe(404);
    const listed = await api.call('GET', '/image-groups?limit=500', { token: stranger });
    const names = listed.json.items.map((g: { name: string }) => g.name);
    expect(names).toContain(open);
    expect(names).not.toContain(hidden);
    const mine = await api.call('GET', '/image-groups?limit=500', { token: reporter });
    expect(mine.json.items.find((g: { name: string }) => g.name === hidden)).toMatchObject({ role: 'Reporter' });
    const all = await api.call('GET', '/image-groups?limit=500', { token: api.adminToken });
    expect(all.json.items.find((g: { name: string }) => g.name === hidden)).toMatchObject({ role: 'Owner' });
  });

  it('Owner and Master change a group, with If-Match; weaker roles get 403 naming the role', async () => {
    const group = await fixture();
    const read = await api.call('GET', `/image-groups/${group}`, { token: master });
    const etag = read.headers.get('etag') ?? '';
    const changed = await api.call('PATCH', `/image-groups/${group}`, {
      token: master,
      body: { public: true, description: 'now public' },
      headers: { 'if-match': etag },
    });
    expect(changed.status, JSON.stringify(changed.json)).toBe(200);
    expect(changed.json).toMatchObject({ public: true, description: 'now public', role: 'Master' });
    const stale = await api.call('PATCH', `/image-groups/${group}`, {
      token: owner,
      body: { public: false },
      headers: { 'if-match': etag },
    });
    expect(stale.status).toBe(412);
    const weak = await api.call('PATCH', `/image-groups/${group}`, { token: developer, body: { public: false } });
    expect(weak.status).toBe(403);
    expect(weak.json).toMatchObject({ requiredRole: 'Master', role: 'Developer' });
    const bad = await api.call('PATCH', `/image-groups/${group}`, { token: owner, body: { public: 'yes', extra: 1 } });
    expect(bad.status).toBe(400);
    expect(bad.headers.get('content-type')).toMatch(/application\/problem\+json/);
    const paths = bad.json.errors.map((e: { path: string }) => e.path);
    expect(paths).toEqual(expect.arrayContaining(['$.public']));
    const badName = await api.call('POST', '/image-groups', { token: owner, body: { name: 'Not_A_Label' } });
    expect(badName.status).toBe(400);
    expect(badName.json.errors[0].path).toBe('$.name');
  });

  it('only the Owner deletes a group, and its members go with it', async () => {
    const group = await fixture();
    expect((await api.call('DELETE', `/image-groups/${group}`, { token: master })).status).toBe(403);
    expect((await api.call('DELETE', `/image-groups/${group}`, { token: owner })).status).toBe(204);
    expect((await api.call('GET', `/image-groups/${group}`, { token: owner })).status).toBe(404);
    const left = await api.service.runtime.store.list(
      api.service.runtime.keys.imageGroupMembers(group),
      imageGroupMemberSchema,
    );
    expect(left).toEqual([]);
    // A new group of the same name starts with no members but its creator.
    expect((await api.call('POST', '/image-groups', { token: developer, body: { name: group } })).status).toBe(201);
    const members = await api.call('GET', `/image-groups/${group}/members`, { token: developer });
    expect(members.json.items.map((m: { user: string }) => m.user)).toEqual(['ig-dev']);
  });
});

describe('image group members', () => {
  it('Master manages members below Owner; only an Owner grants Owner; the last Owner stays', async () => {
    const group = await fixture();
    const put = await api.call('PUT', `/image-groups/${group}/members/ig-stranger`, {
      token: master,
      body: { role: 'Guest' },
    });
    expect(put.status).toBe(200);
    expect(put.json).toMatchObject({ user: 'ig-stranger', role: 'Guest', addedBy: 'ig-master' });
    expect((await api.call('GET', `/image-groups/${group}`, { token: stranger })).json.role).toBe('Guest');
    const owner2 = await api.call('PUT', `/image-groups/${group}/members/ig-stranger`, {
      token: master,
      body: { role: 'Owner' },
    });
    expect(owner2.status).toBe(403);
    expect(
      (
        await api.call('PUT', `/image-groups/${group}/members/ig-stranger`, {
          token: developer,
          body: { role: 'Reporter' },
        })
      ).status,
    ).toBe(403);
    const last = await api.call('DELETE', `/image-groups/${group}/members/ig-owner`, { token: owner });
    expect(last.status).toBe(409);
    const demote = await api.call('PUT', `/image-groups/${group}/members/ig-owner`, {
      token: owner,
      body: { role: 'Master' },
    });
    expect(demote.status).toBe(409);
    expect((await api.call('DELETE', `/image-groups/${group}/members/ig-stranger`, { token: master })).status).toBe(
      204,
    );
    expect((await api.call('GET', `/image-groups/${group}`, { token: stranger })).status).toBe(404);
    expect((await api.call('DELETE', `/image-groups/${group}/members/ig-stranger`, { token: master })).status).toBe(
      404,
    );
  });

  it('a member that does not exist as a user, or a bad role, is a 400 naming the field', async () => {
    const group = await fixture();
    const nobody = await api.call('PUT', `/image-groups/${group}/members/nobody`, {
      token: owner,
      body: { role: 'Guest' },
    });
    expect(nobody.status).toBe(400);
    expect(nobody.json.errors[0].path).toBe('path:user');
    const role = await api.call('PUT', `/image-groups/${group}/members/ig-stranger`, {
      token: owner,
      body: { role: 'Boss' },
    });
    expect(role.status).toBe(400);
    expect(role.json.errors[0].path).toBe('$.role');
  });

  it('a membership change honours If-Match', async () => {
    const group = await fixture();
    const first = await api.call('PUT', `/image-groups/${group}/members/ig-dev`, {
      token: owner,
      body: { role: 'Master' },
    });
    const etag = first.headers.get('etag') ?? '';
    const again = await api.call('PUT', `/image-groups/${group}/members/ig-dev`, {
      token: owner,
      body: { role: 'Developer' },
      headers: { 'if-match': etag },
    });
    expect(again.status).toBe(200);
    const stale = await api.call('PUT', `/image-groups/${group}/members/ig-dev`, {
      token: owner,
      body: { role: 'Reporter' },
      headers: { 'if-match': etag },
    });
    expect(stale.status).toBe(412);
    const notYet = await api.call('PUT', `/image-groups/${group}/members/ig-stranger`, {
      token: owner,
      body: { role: 'Guest' },
      headers: { 'if-match': '"1"' },
    });
    expect(notYet.status).toBe(412);
  });
});

describe("an app's image", () => {
  it('must be one its owner can pull: a public group, or a private one they are a member of', async () => {
    await ensureRegion(api);
    const group = await fixture();
    const open = await fixture(true);
    const create = (token: string, name: string, image: string) =>
      api.call('POST', '/apps', { token, body: { ...appBody(name), image } });
    const refused = await create(stranger, 'ig-app-1', `${group}/shop`);
    expect(refused.status).toBe(400);
    expect(refused.json.errors).toEqual([expect.objectContaining({ path: '$.image' })]);
    expect((await api.call('GET', '/apps/ig-app-1', { token: api.adminToken })).status).toBe(404);
    expect((await create(stranger, 'ig-app-2', `${open}/shop`)).status).toBe(201);
    expect((await create(reporter, 'ig-app-3', `${group}/shop`)).status).toBe(201);
    // A group nobody created yet: nobody can push there, and its creator will own it.
    expect((await create(stranger, 'ig-app-4', 'ig-nobody-yet/shop')).status).toBe(201);
    // Changing the image is checked against the owner, not the caller: here, the stranger.
    const moved = await api.call('PATCH', '/apps/ig-app-2', { token: stranger, body: { image: `${group}/shop` } });
    expect(moved.status).toBe(400);
    expect(moved.json.errors).toEqual([expect.objectContaining({ path: '$.image' })]);
    expect((await api.call('GET', '/apps/ig-app-2', { token: stranger })).json.image).toBe(`${open}/shop`);
  });
});

describe('events', () => {
  it('every change of a group and of its members is an event with the actor', async () => {
    const group = await fixture();
    await api.call('PATCH', `/image-groups/${group}`, { token: owner, body: { description: 'changed' } });
    await api.call('DELETE', `/image-groups/${group}/members/ig-reporter`, { token: owner });
    await api.call('DELETE', `/image-groups/${group}`, { token: owner });
    const nats = await NatsClient.connect({
      servers: (regionEnv().NATS_URL ?? '').split(','),
      name: 'ig-test',
      ...regionCredentials().nats,
    });
    try {
      const subjects = new EventSubjects(api.subjectRoot);
      const seen = await waitFor(
        async () => {
          const events = await readEvents(nats.js, subjects, { filter: subjects.resource(group) });
          return events.length >= 7 ? events.map((e) => e.event) : undefined;
        },
        { message: 'the events of the group' },
      );
      expect(seen.map((e) => `${e.kind} ${e.resourceName ?? ''} ${e.action} ${e.actor.name}`)).toEqual([
        `image-group  created ig-owner`,
        `image-group-member ig-master added ig-owner`,
        `image-group-member ig-dev added ig-owner`,
        `image-group-member ig-reporter added ig-owner`,
        `image-group  updated ig-owner`,
        `image-group-member ig-reporter removed ig-owner`,
        `image-group  deleted ig-owner`,
      ]);
    } finally {
      await nats.drain();
    }
  });
});
