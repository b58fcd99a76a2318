import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { effectiveConfig, etcdEnv, parseEnv, redisEnv, secret, serviceEnv } from '../config/index.ts';
import { createLogger, REDACTED } from './index.ts';

function capture(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      chunks.push(String(chunk));
      done();
    },
  });
  return { stream, text: () => chunks.join('') };
}

describe('secrets never reach log output', () => {
  const schema = z.object({
    ...serviceEnv,
    ...etcdEnv,
    ...redisEnv,
    BERTH_ADMIN_PASSWORD: secret(z.string().min(8)),
  });

  it('a secret from config, logged any way at all, is redacted', () => {
    const config = parseEnv(schema, {
      ETCD_ENDPOINTS: 'http://127.0.0.1:2379',
      ETCD_PASSWORD: 'etcd-pass-0xdeadbeef',
      REDIS_URL: 'redis://:redis-pw-8d7f6e@127.0.0.1:6379/0',
      BERTH_ADMIN_PASSWORD: 'admin-secret-42424242',
    });
    const out = capture();
    const logger = createLogger({ service: 'test', destination: out.stream }).child({ component: 'unit' });

    logger.info({ config: effectiveConfig(schema, config) }, 'starting');
    logger.info(`connecting to etcd as root with ${config.ETCD_PASSWORD}`);
    logger.info({ url: config.REDIS_URL }, 'redis');
    logger.warn({ request: { headers: { authorization: 'Bearer tok_abcdefghijkl' } } }, 'request');
    logger.error({ err: new Error(`login failed for admin:${config.BERTH_ADMIN_PASSWORD}`) }, 'login');
    logger.info({ nested: { deeper: { kubeconfig: 'apiVersion: v1\nusers: [...]', token: 'x' } } }, 'cell');

    const text = out.text();
    for (const secretValue of [
      'etcd-pass-0xdeadbeef',
      'redis-pw-8d7f6e',
      'admin-secret-42424242',
      'tok_abcdefghijkl',
      'apiVersion: v1',
    ]) {
      expect(text).not.toContain(secretValue);
    }
    expect(text).toContain(REDACTED);
    // What is not secret is still there, in JSON with the service and component on every line.
    const lines = text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(6);
    expect(lines.every((l) => l.service === 'test' && l.component === 'unit')).toBe(true);
    expect(lines[0]?.config).toMatchObject({ ETCD_ENDPOINTS: ['http://127.0.0.1:2379'], ETCD_PASSWORD: REDACTED });
  });

  it('a bad config names each bad variable on its own line and never echoes a secret', () => {
    let message = '';
    try {
      parseEnv(schema, {
        HTTP_ADDR: 'nonsense',
        ETCD_ENDPOINTS: 'ftp://x',
        LOG_LEVEL: 'loud',
        SHUTDOWN_TIMEOUT: 'soon',
        BERTH_ADMIN_PASSWORD: 'short',
      });
    } catch (err) {
      message = (err as Error).message;
    }
    const lines = message
      .split('\n')
      .slice(1)
      .map((l) => l.trim());
    expect(lines.map((l) => l.split(':')[0]).sort()).toEqual([
      'BERTH_ADMIN_PASSWORD',
      'ETCD_ENDPOINTS',
      'HTTP_ADDR',
      'LOG_LEVEL',
      'REDIS_URL',
      'SHUTDOWN_TIMEOUT',
    ]);
    expect(message).toContain('HTTP_ADDR: expected host:port (got "nonsense")');
    expect(message).toContain('REDIS_URL: required');
    expect(message).not.toContain('short');
  });

  it('booleans, durations and lists parse the way operators write them', () => {
    const s = z.object({ ...serviceEnv, ...etcdEnv });
    const config = parseEnv(s, {
      ETCD_ENDPOINTS: 'http://a:2379, http://b:2379',
      SHUTDOWN_TIMEOUT: '1.5s',
      HTTP_ADDR: '[::1]:7070',
    });
    expect(config.ETCD_ENDPOINTS).toEqual(['http://a:2379', 'http://b:2379']);
    expect(config.SHUTDOWN_TIMEOUT).toBe(1500);
    expect(config.HTTP_ADDR).toEqual({ host: '::1', port: 7070 });
    expect(config.ETCD_PREFIX).toBe('/berth');
  });
});
