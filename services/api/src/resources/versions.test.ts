import { ROLES, type Version } from '@berth/shared/model';
import { describe, expect, it } from 'vitest';
import { versionInEvent, versionReadResponse, versionView } from './versions.ts';

const version: Version = {
  app: 'shop',
  name: 'v1',
  number: 1,
  imageTag: 'a',
  replicas: 1,
  cpu: '500m',
  memory: '512Mi',
  env: { DATABASE_URL: 'postgres://u:pw@db/x', MODE: 'prod' },
  ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
  healthCheck: { port: 8080, initialDelaySeconds: 5, periodSeconds: 10, timeoutSeconds: 2, failureThreshold: 3 },
  command: [],
  createdAt: '2026-11-29T21:00:00.000Z',
  createdBy: 'alice',
  updatedAt: '2026-11-29T21:00:00.000Z',
};

describe('a version as a reader sees it', () => {
  it('Developer and up see env values; Reporter and Guest see the names with null', () => {
    const seen = Object.fromEntries(ROLES.map((role) => [role, versionView(version, role).env]));
    expect(seen).toEqual({
      Owner: version.env,
      Master: version.env,
      Developer: version.env,
      Reporter: { DATABASE_URL: null, MODE: null },
      Guest: { DATABASE_URL: null, MODE: null },
    });
    // What the OpenAPI document says of both.
    for (const role of ROLES) expect(versionReadResponse.safeParse(versionView(version, role)).success).toBe(true);
  });

  it('an event carries every env name with no value, whatever the name', () => {
    expect(versionInEvent(version).env).toEqual({ DATABASE_URL: '[redacted]', MODE: '[redacted]' });
    expect(versionInEvent(version)).toMatchObject({ name: 'v1', imageTag: 'a', replicas: 1 });
  });
});
