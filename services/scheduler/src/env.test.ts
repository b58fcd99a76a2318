import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { effectiveConfig, parseEnv } from '@berth/shared/config';
import { ConfigError } from '@berth/shared/errors';
import { describe, expect, it } from 'vitest';
import { schedulerEnv } from './env.ts';

const key = 'c0ffee11'.repeat(8);
const base = { ETCD_ENDPOINTS: 'http://127.0.0.1:2379', NATS_URL: 'nats://127.0.0.1:4222' };

describe('REGISTRY_PULL_KEY', () => {
  it('is unset by default: no pull Secrets', () => {
    expect(parseEnv(schedulerEnv, base).REGISTRY_PULL_KEY).toBeUndefined();
  });

  it('is read from the variable or from REGISTRY_PULL_KEY_FILE, and never shown', () => {
    const dir = mkdtempSync(join(tmpdir(), 'scheduler-env-'));
    try {
      writeFileSync(join(dir, 'cells.key'), `${key}\n`);
      const fromFile = parseEnv(schedulerEnv, { ...base, REGISTRY_PULL_KEY_FILE: join(dir, 'cells.key') });
      expect(fromFile.REGISTRY_PULL_KEY?.toString('hex')).toBe(key);
      expect(parseEnv(schedulerEnv, { ...base, REGISTRY_PULL_KEY: key }).REGISTRY_PULL_KEY?.toString('hex')).toBe(key);
      expect(JSON.stringify(effectiveConfig(schedulerEnv, fromFile))).not.toContain(key);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a key too short to be one, without echoing it', () => {
    const short = 'ab'.repeat(16);
    expect(() => parseEnv(schedulerEnv, { ...base, REGISTRY_PULL_KEY: short })).toThrow(ConfigError);
    try {
      parseEnv(schedulerEnv, { ...base, REGISTRY_PULL_KEY: short });
    } catch (err) {
      expect(String((err as Error).message)).toContain('REGISTRY_PULL_KEY');
      expect(String((err as Error).message)).not.toContain(short);
    }
  });
});

describe('BERTH_SECRETS_KEYS and LB_SOURCE_CIDRS', () => {
  const ring = `k1:${'ab'.repeat(32)}`;

  it('reads the keyring from the variable or a file, and never shows it', () => {
    expect(parseEnv(schedulerEnv, base).BERTH_SECRETS_KEYS).toBeUndefined();
    const dir = mkdtempSync(join(tmpdir(), 'scheduler-env-'));
    try {
      writeFileSync(join(dir, 'secrets.keys'), `${ring}\n`);
      const config = parseEnv(schedulerEnv, { ...base, BERTH_SECRETS_KEYS_FILE: join(dir, 'secrets.keys') });
      expect(config.BERTH_SECRETS_KEYS?.currentKeyId).toBe('k1');
      expect(JSON.stringify(effectiveConfig(schedulerEnv, config))).not.toContain('ab'.repeat(32));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('takes a list of CIDRs and refuses anything else', () => {
    expect(parseEnv(schedulerEnv, base).LB_SOURCE_CIDRS).toEqual([]);
    expect(
      parseEnv(schedulerEnv, { ...base, LB_SOURCE_CIDRS: '192.0.2.0/24, 2001:db8::1/128' }).LB_SOURCE_CIDRS,
    ).toEqual(['192.0.2.0/24', '2001:db8::1/128']);
    expect(() => parseEnv(schedulerEnv, { ...base, LB_SOURCE_CIDRS: '192.0.2.0' })).toThrow(ConfigError);
    expect(() => parseEnv(schedulerEnv, { ...base, LB_SOURCE_CIDRS: '192.0.2.0/33' })).toThrow(ConfigError);
  });
});
