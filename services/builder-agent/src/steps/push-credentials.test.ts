import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseEnv } from '@berth/shared/config';
import { ConfigError } from '@berth/shared/errors';
import { deriveAgentKey, robotKeySchema, runPushCredential } from '@berth/shared/registry';
import { describe, expect, test } from 'vitest';
import { builderAgentEnv } from '../env.ts';
import { pullCredential, pushCredentials } from './push-credentials.ts';

const master = robotKeySchema.parse('42'.repeat(32));
const agentKey = deriveAgentKey(master, 'b1');
const RUN = 'abcdef0123456789abcd';

describe('push credentials', () => {
  test("with the agent's key each attempt of each run has its own robot credential", () => {
    const of = pushCredentials({ registryAddr: '127.0.0.1:5000', agentKey });
    const first = of(RUN, 1);
    expect(first).toEqual({
      username: `build@${RUN}.1`,
      password: runPushCredential(agentKey, RUN, 1).password,
      serveraddress: '127.0.0.1:5000',
    });
    // What the token server recomputes from the master for this agent.
    expect(first?.password).toBe(runPushCredential(deriveAgentKey(master, 'b1'), RUN, 1).password);
    expect(of(RUN, 2)?.password).not.toBe(first?.password);
    expect(of('abcdef0123456789abce', 1)?.password).not.toBe(first?.password);
    // Another agent's key cannot mint this run's password.
    expect(runPushCredential(deriveAgentKey(master, 'b2'), RUN, 1).password).not.toBe(first?.password);
  });

  test('a static user is the same for every run; none is anonymous', () => {
    const of = pushCredentials({ registryAddr: 'reg:5000', username: 'ci', password: 'pw' });
    expect(of(RUN, 1)).toEqual({ username: 'ci', password: 'pw', serveraddress: 'reg:5000' });
    expect(of('x', 3)).toEqual(of(RUN, 1));
    expect(pushCredentials({ registryAddr: 'reg:5000' })(RUN, 1)).toBeUndefined();
  });
});

describe('the compile image pull', () => {
  test("sends the run's credential to the region's registry only", () => {
    const run = pushCredentials({ registryAddr: '127.0.0.1:5000', agentKey })(RUN, 1);
    expect(pullCredential('127.0.0.1:5000/tools/go:1.24', '127.0.0.1:5000', run)).toBe(run);
    expect(pullCredential('golang:1.24', '127.0.0.1:5000', run)).toBeUndefined();
    expect(pullCredential('ghcr.io/x/y:1', '127.0.0.1:5000', run)).toBeUndefined();
    expect(pullCredential('127.0.0.1:50001/x/y:1', '127.0.0.1:5000', run)).toBeUndefined();
  });
});

describe('BUILDER_REGISTRY_KEY', () => {
  const base = {
    BERTH_REGION: 'local',
    ETCD_ENDPOINTS: 'http://127.0.0.1:2379',
    REDIS_URL: 'redis://127.0.0.1:6379',
    NATS_URL: 'nats://127.0.0.1:4222',
  };
  const issues = (env: Record<string, string>) => {
    try {
      parseEnv(builderAgentEnv, { ...base, ...env });
      return [];
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      return err.issues.map((i) => i.path);
    }
  };

  test('parses into the key, from the variable or its _FILE', () => {
    const hex = agentKey.toString('hex');
    expect(parseEnv(builderAgentEnv, { ...base, BUILDER_REGISTRY_KEY: hex }).BUILDER_REGISTRY_KEY).toEqual(agentKey);
    const dir = mkdtempSync(join(tmpdir(), 'key-'));
    try {
      writeFileSync(join(dir, 'key'), `${hex}\n`);
      const fromFile = parseEnv(builderAgentEnv, { ...base, BUILDER_REGISTRY_KEY_FILE: join(dir, 'key') });
      expect(fromFile.BUILDER_REGISTRY_KEY).toEqual(agentKey);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a static user with it, or too short a key, is refused naming the field', () => {
    const hex = agentKey.toString('hex');
    expect(issues({ BUILDER_REGISTRY_KEY: hex, REGISTRY_USERNAME: 'ci', REGISTRY_PASSWORD: 'pw' })).toEqual([
      'BUILDER_REGISTRY_KEY',
    ]);
    expect(issues({ BUILDER_REGISTRY_KEY: hex, REGISTRY_PASSWORD: 'pw' })).toEqual(['BUILDER_REGISTRY_KEY']);
    expect(issues({ BUILDER_REGISTRY_KEY: 'ab'.repeat(16) })).toEqual(['BUILDER_REGISTRY_KEY']);
  });
});
