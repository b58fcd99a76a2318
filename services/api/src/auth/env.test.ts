import { parseEnv } from '@berth/shared/config';
import { describe, expect, it } from 'vitest';
import { apiEnv } from '../env.ts';

const base = {
  ETCD_ENDPOINTS: 'http://127.0.0.1:2379',
  NATS_URL: 'nats://127.0.0.1:4222',
  REDIS_URL: 'redis://127.0.0.1:6379',
};

describe('sign-in settings', () => {
  it('trust no proxy by default, and take addresses and CIDRs', () => {
    expect(parseEnv(apiEnv, base).TRUSTED_PROXIES).toEqual([]);
    const config = parseEnv(apiEnv, { ...base, TRUSTED_PROXIES: '10.0.0.0/8, 192.168.1.7,::1,fd00::/8' });
    expect(config.TRUSTED_PROXIES).toEqual(['10.0.0.0/8', '192.168.1.7', '::1', 'fd00::/8']);
  });

  it('refuse what is not an address or a CIDR', () => {
    for (const bad of ['loopback', '10.0.0.0/33', '10.0.0.1/8/2', 'example.com', '::1/129']) {
      expect(() => parseEnv(apiEnv, { ...base, TRUSTED_PROXIES: bad }), bad).toThrow(/TRUSTED_PROXIES/);
    }
  });

  it('cap personal tokens at 50 and hash at OWASP cost by default', () => {
    const config = parseEnv(apiEnv, base);
    expect(config.MAX_TOKENS_PER_USER).toBe(50);
    expect(config.PASSWORD_HASH_LOG_N).toBe(17);
  });
});
