import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError } from '../errors/index.ts';
import {
  effectiveConfig,
  envDuration,
  envInt,
  etcdEnv,
  eventsEnv,
  natsEnv,
  parseDuration,
  parseEnv,
  redisEnv,
  secret,
  serviceEnv,
} from './index.ts';

describe('parseDuration', () => {
  it('reads every unit into milliseconds', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration(' 7d ')).toBe(7 * 86_400_000);
  });

  it('answers undefined for what is not a duration', () => {
    for (const text of ['', '30', 's', '-1s', '1w', '1 s', 'ten s']) expect(parseDuration(text)).toBeUndefined();
  });
});

describe('envDuration', () => {
  const schema = z.object({ TIMEOUT: envDuration('30s') });

  it('takes the default when the variable is unset or empty', () => {
    expect(schema.parse({}).TIMEOUT).toBe(30_000);
    expect(schema.parse({ TIMEOUT: '' }).TIMEOUT).toBe(30_000);
  });

  it('names the expected form when the value is not a duration', () => {
    const r = schema.safeParse({ TIMEOUT: '30' });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.message).toBe('expected a duration like 500ms, 30s, 5m, 1h (got "30")');
  });
});

describe('parseEnv', () => {
  const schema = z.object({
    ...serviceEnv,
    ...etcdEnv,
    ...eventsEnv,
    API_TOKEN: secret(z.string().min(40)),
    WORKERS: envInt(4, { min: 1, max: 64 }),
  });

  it('names every bad variable on its own line, and never echoes a secret', () => {
    let err: unknown;
    try {
      parseEnv(schema, {
        ETCD_ENDPOINTS: 'ftp://nope',
        WORKERS: '0',
        API_TOKEN: 'short-secret-value',
        EVENT_SUBJECT_ROOT: 'Bad Root',
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const issues = (err as ConfigError).issues.map((i) => i.path).sort();
    expect(issues).toEqual(['API_TOKEN', 'ETCD_ENDPOINTS', 'EVENT_SUBJECT_ROOT', 'WORKERS']);
    expect((err as Error).message.split('\n').length).toBe(5);
    expect((err as Error).message).not.toContain('short-secret-value');
  });

  it('says a required variable is not set, and reads a secret from NAME_FILE', () => {
    expect(() => parseEnv(schema, { ETCD_ENDPOINTS: 'http://127.0.0.1:2379' })).toThrow(
      /API_TOKEN: required but not set/,
    );
    const dir = mkdtempSync(join(tmpdir(), 'berth-env-'));
    const file = join(dir, 'token');
    writeFileSync(file, `${'x'.repeat(40)}\n`);
    const config = parseEnv(schema, { ETCD_ENDPOINTS: 'http://127.0.0.1:2379', API_TOKEN_FILE: file });
    expect(config.API_TOKEN).toBe('x'.repeat(40));
    expect(config.WORKERS).toBe(4);
    expect(config.EVENT_SUBJECT_ROOT).toBe('berth');
  });
});

describe('the region credentials', () => {
  const schema = z.object({ ...etcdEnv, ...natsEnv, ...redisEnv });

  it('reads each password from its _FILE, as make up passes them, and never logs one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-env-'));
    const file = (name: string, value: string) => {
      writeFileSync(join(dir, name), `${value}\n`);
      return join(dir, name);
    };
    const config = parseEnv(schema, {
      ETCD_ENDPOINTS: 'http://127.0.0.1:2379',
      ETCD_USERNAME: 'scheduler',
      ETCD_PASSWORD_FILE: file('etcd', 'etcd-pw-4f1c'),
      NATS_URL: 'nats://127.0.0.1:4222',
      NATS_USER: 'scheduler',
      NATS_PASSWORD_FILE: file('nats', 'nats-pw-9a2e'),
      REDIS_URL: 'redis://127.0.0.1:6379',
      REDIS_USERNAME: 'api',
      REDIS_PASSWORD_FILE: file('redis', 'redis-pw-77d0'),
    });
    expect([config.ETCD_PASSWORD, config.NATS_PASSWORD, config.REDIS_PASSWORD]).toEqual([
      'etcd-pw-4f1c',
      'nats-pw-9a2e',
      'redis-pw-77d0',
    ]);
    const logged = JSON.stringify(effectiveConfig(schema, config));
    expect(logged).toContain('"NATS_USER":"scheduler"');
    for (const pw of ['etcd-pw-4f1c', 'nats-pw-9a2e', 'redis-pw-77d0']) expect(logged).not.toContain(pw);
  });

  it('names a password file it cannot read', () => {
    expect(() =>
      parseEnv(schema, {
        ETCD_ENDPOINTS: 'http://127.0.0.1:2379',
        NATS_URL: 'nats://127.0.0.1:4222',
        REDIS_URL: 'redis://127.0.0.1:6379',
        REDIS_PASSWORD_FILE: '/nonexistent/redis-api.password',
      }),
    ).toThrow(/REDIS_PASSWORD_FILE: cannot read \/nonexistent\/redis-api.password: ENOENT/);
  });
});
