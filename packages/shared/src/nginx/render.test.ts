import { describe, expect, it } from 'vitest';
import { InputError } from '../errors/index.ts';
import { type Domain, domainSchema } from '../model/index.ts';
import { quote, renderDomainConfig, renderServer, renderUpstream, upstreamName } from './index.ts';

function domain(overrides: Partial<Domain> = {}, options: Partial<Domain['options']> = {}): Domain {
  return {
    domain: 'shop.example.test',
    app: 'shop',
    group: 'public',
    port: 'http',
    paths: ['/'],
    options: { headers: {}, ...options },
    createdAt: '2026-01-01T00:00:00.000Z',
    createdBy: 'alice',
    updatedAt: '2026-01-01T00:00:00.000Z',
    ...overrides,
  };
}

/** The directives of a config, one per statement: what nginx would parse, comments left out. */
function directives(config: string): string[] {
  return config
    .split('\n')
    .map((l) => l.replace(/#.*$/, '').trim())
    .filter(Boolean);
}

describe('a domain rendered into nginx config', () => {
  it('has its server_name, one location per path to the app port upstream, size, timeout and headers', () => {
    const config = renderServer(
      domain(
        { paths: ['/', '/api/'] },
        { clientMaxBodySize: '10m', readTimeout: '60s', headers: { 'X-Frame-Options': 'DENY' } },
      ),
      { listen: ['127.0.0.1:8080'] },
    );
    const lines = directives(config);
    expect(lines).toContain('listen 127.0.0.1:8080;');
    expect(lines).toContain('server_name shop.example.test;');
    expect(lines).toContain('client_max_body_size 10m;');
    expect(lines).toContain('add_header X-Frame-Options "DENY" always;');
    expect(lines.filter((l) => l === 'proxy_pass http://berth_shop_http;')).toHaveLength(2);
    // Every location picks its version in the access phase, where it may answer 503 itself.
    expect(
      lines.filter((l) => l === 'access_by_lua_block { require("berth.balancer").route("shop", "http") }'),
    ).toHaveLength(2);
    expect(lines.filter((l) => l === 'proxy_read_timeout 60s;')).toHaveLength(2);
    expect(lines).toContain('location / {');
    expect(lines).toContain('location /api/ {');
    // Braces balance: the server block is closed exactly once.
    expect(config.split('{').length).toBe(config.split('}').length);
  });

  it('leaves nginx defaults alone when no size or timeout is set, and listens on 80 by default', () => {
    const lines = directives(renderServer(domain()));
    expect(lines).toContain('listen 80;');
    expect(lines.some((l) => l.startsWith('client_max_body_size'))).toBe(false);
    expect(lines.some((l) => l.startsWith('proxy_read_timeout'))).toBe(false);
    expect(lines.some((l) => l.startsWith('add_header'))).toBe(false);
  });

  it('puts an upstream per app port with a placeholder peer and the Lua balancer, with keepalive', () => {
    const lines = directives(renderUpstream('shop', 'http', { keepalive: 16, keepaliveTimeout: '30s' }));
    expect(lines[0]).toBe('upstream berth_shop_http {');
    expect(lines).toContain('balancer_by_lua_block {');
    expect(lines).toContain('require("berth.balancer").balance("shop", "http")');
    expect(lines).toContain('keepalive 16;');
    expect(lines).toContain('keepalive_timeout 30s;');
    expect(lines.filter((l) => l.startsWith('server '))).toHaveLength(1);
    expect(upstreamName('my-app', 'grpc')).toBe('berth_my-app_grpc');
  });

  it('shows the upstream then the server block as the config endpoint answers', () => {
    const config = renderDomainConfig(domain());
    expect(config.indexOf('upstream berth_shop_http')).toBeLessThan(config.indexOf('server {'));
  });

  it('copies an admin raw directive into the server block, indented', () => {
    const lines = directives(renderServer(domain({}, { raw: 'gzip on;\ngzip_types text/css;' })));
    const close = lines.lastIndexOf('}');
    expect(lines.slice(close - 2, close)).toEqual(['gzip on;', 'gzip_types text/css;']);
  });
});

describe('user data never becomes a directive', () => {
  it('a header value with ";", "{", "}" and quotes stays one quoted string', () => {
    const value = 'a; } server { listen 81; "q" \\ {';
    const lines = directives(renderServer(domain({}, { headers: { 'X-Evil': value } })));
    const header = lines.filter((l) => l.startsWith('add_header'));
    expect(header).toEqual(['add_header X-Evil "a; } server { listen 81; \\"q\\" \\\\ {" always;']);
    expect(lines.some((l) => l.startsWith('listen 81'))).toBe(false);
  });

  it.each([
    ['a line break', 'DENY\nreturn 200;'],
    ['a carriage return', 'DENY\r'],
    ['a tab', 'a\tb'],
    ['a NUL', 'a\u0000'],
    ['a variable', '$http_authorization'],
    ['non-ASCII', 'caf\u00e9'],
  ])('a header value with %s is refused', (_what, value) => {
    expect(() => renderServer(domain({}, { headers: { 'X-A': value } }))).toThrow(InputError);
    expect(() => quote(value)).toThrow(InputError);
  });

  it.each([
    ['a header name with a space', { headers: { 'X A': 'b' } }, '$.options.headers["X A"]'],
    ['a header name with ";"', { headers: { 'X;return': 'b' } }, '$.options.headers["X;return"]'],
    ['a body size with a directive', { clientMaxBodySize: '10m; return 200' }, '$.options.clientMaxBodySize'],
    ['a timeout with a line break', { readTimeout: '60s\nreturn 200;' }, '$.options.readTimeout'],
  ])('%s is refused, naming the field', (_what, options, path) => {
    try {
      renderServer(domain({}, options as Partial<Domain['options']>));
      expect.unreachable('rendered');
    } catch (err) {
      expect(err).toBeInstanceOf(InputError);
      expect((err as InputError).issues[0]?.path).toBe(path);
    }
  });

  it.each([
    ['a path with a space', { paths: ['/a b'] }, '$.paths[0]'],
    ['a path with "{"', { paths: ['/', '/x{'] }, '$.paths[1]'],
    ['a path with ";"', { paths: ['/;return 200'] }, '$.paths[0]'],
    ['a regex location', { paths: ['~ .*'] }, '$.paths[0]'],
    ['a duplicate path', { paths: ['/', '/'] }, '$.paths[1]'],
    ['a domain with a space', { domain: 'shop.example.test default_server' }, '$.domain'],
    ['an uppercase domain', { domain: 'Shop.example.test' }, '$.domain'],
    ['an app that would break the Lua string', { app: 'shop")os.exit(' }, '$.app'],
    ['a port with "_"', { port: 'a_b' }, '$.port'],
  ])('%s is refused, naming the field', (_what, overrides, path) => {
    try {
      renderDomainConfig(domain(overrides as Partial<Domain>));
      expect.unreachable('rendered');
    } catch (err) {
      expect(err).toBeInstanceOf(InputError);
      expect((err as InputError).issues[0]?.path).toBe(path);
    }
  });

  it('a listen argument with more than an address and port is refused', () => {
    expect(() => renderServer(domain(), { listen: ['80 default_server'] })).toThrow(InputError);
  });

  it('the stored schema refuses what the renderer refuses', () => {
    const bad = [
      { options: { headers: { 'X-A': 'a\nb' } } },
      { options: { headers: { 'X-A': '$host' } } },
      { options: { headers: {}, clientMaxBodySize: '10 m' } },
      { paths: ['/a;b'] },
      { domain: '1.2.3.4' },
      { domain: 'localhost' },
      { domain: '-a.example.test' },
      { domain: `${'a'.repeat(64)}.example.test` },
    ];
    for (const b of bad) {
      expect(domainSchema.safeParse({ ...domain(), ...b }).success, JSON.stringify(b)).toBe(false);
    }
    expect(domainSchema.safeParse(domain({}, { headers: { 'X-A': 'a; b { "c" }' } })).success).toBe(true);
  });
});
