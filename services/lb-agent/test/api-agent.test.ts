/**
 * A broken raw directive, end to end through the API: an admin binds a domain with a raw
 * directive that fails `nginx -t`; the lb-agent keeps that domain on its last good config, every
 * other domain keeps serving, and the failure shows in `GET /lb-groups/{group}/agents` and in the
 * app's event feed.
 */
import { regionEnv, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from '../../api/test/harness.ts';
import { get, removeNginx, startAgent, startNginx, type TestAgent, type TestNginx } from './harness.ts';

const env = regionEnv();
let api: TestApi;
let nginx: TestNginx;
let agent: TestAgent;
let url: string;
const app = 'rawapp';

beforeAll(async () => {
  api = await startApi();
  await ensureRegion(api);
  const group = await api.call('POST', '/lb-groups', { token: api.adminToken, body: { name: 'edge' } });
  expect(group.status).toBe(201);
  expect((await api.call('POST', '/apps', { token: api.adminToken, body: appBody(app) })).status).toBe(201);
  nginx = await startNginx({ workers: 1 });
  url = `http://127.0.0.1:${nginx.port}/`;
  agent = await startAgent({
    etcdEndpoints: env.ETCD_ENDPOINTS as string,
    prefix: api.prefix,
    group: 'edge',
    host: 'edge-1',
    nginx,
    env: { NATS_URL: env.NATS_URL as string, EVENT_SUBJECT_ROOT: api.subjectRoot },
  });
}, 60_000);

afterAll(async () => {
  await agent?.stop();
  if (nginx) await removeNginx(nginx);
  await api?.stop();
});

function bind(domain: string, raw?: string) {
  return api.call('POST', `/apps/${app}/domains`, {
    token: api.adminToken,
    body: { domain, group: 'edge', options: raw ? { raw } : {} },
  });
}

describe('a broken raw directive through the API', () => {
  it('keeps the domain on its last good config and reports it in the agents route and the feed', async () => {
    expect((await bind('plain.example.test')).status).toBe(201);
    expect((await bind('raw.example.test', 'add_header X-Raw good always;')).status).toBe(201);
    // No endpoints yet: both domains answer the balancer's 503, the raw one with its header.
    await waitFor(async () => (await get(url, 'raw.example.test')).headers['x-raw'] === 'good', {
      message: 'raw.example.test rendered',
    });
    expect((await get(url, 'plain.example.test')).status).toBe(503);

    const patch = await api.call('PATCH', `/apps/${app}/domains/raw.example.test`, {
      token: api.adminToken,
      body: { options: { raw: 'add_header X-Raw bad always;\ngzipp on;' } },
    });
    expect(patch.status).toBe(200);

    const agents = await waitFor(
      async () => {
        const res = await api.call('GET', '/lb-groups/edge/agents', { token: api.adminToken });
        const failed = res.json.items?.[0]?.failedDomains ?? [];
        return failed.length > 0 ? res.json.items : undefined;
      },
      { message: 'the failure in GET /lb-groups/edge/agents' },
    );
    expect(agents).toHaveLength(1);
    expect(agents[0]).toMatchObject({ host: 'edge-1', group: 'edge', lastError: null });
    expect(agents[0].failedDomains[0].domain).toBe('raw.example.test');
    expect(agents[0].failedDomains[0].message).toMatch(/unknown directive "gzipp"/);
    expect(agents[0].lastGoodGeneration).toBeLessThan(agents[0].appliedGeneration);

    // Last good config for the broken domain; the other domain untouched.
    expect((await get(url, 'raw.example.test')).headers['x-raw']).toBe('good');
    expect((await get(url, 'plain.example.test')).status).toBe(503);

    const event = await waitFor(
      async () => {
        const res = await api.call('GET', `/apps/${app}/events?limit=20`, { token: api.adminToken });
        return res.json.items?.find(
          (e: { kind: string; action: string }) => e.kind === 'domain' && e.action === 'config-failed',
        );
      },
      { message: 'a config-failed event in the app feed' },
    );
    expect(event).toMatchObject({
      resourceId: app,
      resourceName: 'raw.example.test',
      actor: { type: 'service', name: 'lb-agent' },
      data: { group: 'edge', host: 'edge-1' },
    });
    expect(event.data.message).toMatch(/gzipp/);
  });
});
