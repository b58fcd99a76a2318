/**
 * Renders a domain into nginx config: pure functions of stored data, shared by the API (which
 * shows a domain's config to its app's members) and the lb-agent (which writes it to disk, runs
 * `nginx -t` and reloads). The contract with the lb-agent's Lua side is in docs/traffic.md:
 *
 * - one `upstream berth_{app}_{port}` per app and port a group routes to, with a placeholder peer
 *   and `balancer_by_lua_block { require("berth.balancer").balance("{app}", "{port}") }`: the
 *   peers come from the routing documents the agent pushes to Lua, never from this file, so an
 *   endpoint or weight change needs no reload;
 * - one `server` block per domain: `server_name`, one `location` per path proxying to that
 *   upstream, the domain's body size and read timeout, its response headers, and an admin's raw
 *   directives.
 *
 * User data can only ever become one token or one quoted string here: every value is checked
 * again against its pattern (a value that would not be one token is refused with InputError, not
 * escaped into something else), header values are quoted with `"` and `\` escaped, and `$`, line
 * breaks and other control characters are refused. The one exception is `options.raw`, which only
 * admins may write: it is copied into the server block as it is, and `nginx -t` guards the reload.
 */
import { InputError, jsonPath } from '../errors/index.ts';
import type { Domain } from '../model/index.ts';

export type RenderOptions = {
  /** `listen` arguments of every server block: `80`, `127.0.0.1:8080`, `[::]:80`. Default `80`. */
  listen?: readonly string[];
  /** Idle keepalive connections each worker keeps per upstream. Default 64. */
  keepalive?: number;
  /** How long an idle upstream connection is kept: below the apps' own idle timeout. Default `50s`. */
  keepaliveTimeout?: string;
};

const DEFAULTS = { listen: ['80'], keepalive: 64, keepaliveTimeout: '50s' } as const;

const PATTERNS = {
  label: /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/,
  domain: /^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$/,
  path: /^\/[A-Za-z0-9._~%/-]*$/,
  size: /^[0-9]{1,9}[kKmMgG]?$/,
  time: /^[0-9]{1,7}(ms|s|m|h)?$/,
  headerName: /^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$/,
  listen: /^(\[[0-9a-fA-F:.]+\]:|[0-9.]+:|[a-z0-9.-]+:)?[0-9]{1,5}$/,
} as const;

/** The upstream an app's port is served by: `berth_shop_http` (names hold no `_`, so it is unambiguous). */
export function upstreamName(app: string, port: string): string {
  return `berth_${token(app, PATTERNS.label, '$.app')}_${token(port, PATTERNS.label, '$.port')}`;
}

/**
 * One app port's upstream: a placeholder peer that is never used (nginx needs one server line)
 * and the Lua balancer that picks the real peer per request; upstream keepalive.
 */
export function renderUpstream(app: string, port: string, options: RenderOptions = {}): string {
  const name = upstreamName(app, port);
  const keepalive = options.keepalive ?? DEFAULTS.keepalive;
  if (!Number.isInteger(keepalive) || keepalive < 1 || keepalive > 10_000) {
    throw new InputError('keepalive must be an integer from 1 to 10000', [{ path: '$.keepalive', message: 'bad' }]);
  }
  const timeout = token(options.keepaliveTimeout ?? DEFAULTS.keepaliveTimeout, PATTERNS.time, '$.keepaliveTimeout');
  return [
    `# Berth: app ${app}, port ${port}. Peers come from Lua (routing documents), never from this file.`,
    `upstream ${name} {`,
    '    server 0.0.0.1:1; # placeholder: balancer_by_lua picks every peer',
    '    balancer_by_lua_block {',
    `        require("berth.balancer").balance("${app}", "${port}")`,
    '    }',
    `    keepalive ${keepalive};`,
    `    keepalive_timeout ${timeout};`,
    '}',
    '',
  ].join('\n');
}

/** One domain's server block. */
export function renderServer(domain: Domain, options: RenderOptions = {}): string {
  const name = token(domain.domain, PATTERNS.domain, '$.domain');
  const upstream = upstreamName(domain.app, domain.port);
  const listen = (options.listen ?? DEFAULTS.listen).map((l, i) => token(l, PATTERNS.listen, `$.listen[${i}]`));
  const o = domain.options;
  const lines: string[] = [
    `# Berth: domain ${name} -> app ${domain.app}, port ${domain.port} (LB group ${domain.group}). Generated; do not edit.`,
    'server {',
    ...listen.map((l) => `    listen ${l};`),
    `    server_name ${name};`,
  ];
  if (o.clientMaxBodySize !== undefined) {
    lines.push(`    client_max_body_size ${token(o.clientMaxBodySize, PATTERNS.size, '$.options.clientMaxBodySize')};`);
  }
  for (const [header, value] of Object.entries(o.headers ?? {})) {
    const path = jsonPath(['options', 'headers', header]);
    lines.push(`    add_header ${token(header, PATTERNS.headerName, path)} ${quote(value, path)} always;`);
  }
  const seen = new Set<string>();
  domain.paths.forEach((p, i) => {
    const path = token(p, PATTERNS.path, `$.paths[${i}]`);
    if (seen.has(path))
      throw new InputError(`path ${path} appears twice`, [{ path: `$.paths[${i}]`, message: 'duplicate path' }]);
    seen.add(path);
    lines.push(
      '',
      `    location ${path} {`,
      // The access phase picks the version (forced, weighted or sticky) and may answer 503 itself.
      `        access_by_lua_block { require("berth.balancer").route("${domain.app}", "${domain.port}") }`,
      `        proxy_pass http://${upstream};`,
      '        proxy_http_version 1.1;',
      '        proxy_set_header Connection "";',
      '        proxy_set_header Host $host;',
      '        proxy_set_header X-Real-IP $remote_addr;',
      '        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;',
      '        proxy_set_header X-Forwarded-Proto $scheme;',
      '        proxy_next_upstream error timeout http_502;',
      '        proxy_next_upstream_tries 3;',
    );
    if (o.readTimeout !== undefined) {
      lines.push(`        proxy_read_timeout ${token(o.readTimeout, PATTERNS.time, '$.options.readTimeout')};`);
    }
    lines.push('    }');
  });
  if (o.raw !== undefined && o.raw.trim() !== '') {
    lines.push(
      '',
      '    # raw directives (set by an admin)',
      ...o.raw
        .trimEnd()
        .split('\n')
        .map((l) => `    ${l}`),
    );
  }
  lines.push('}', '');
  return lines.join('\n');
}

/**
 * What `GET /apps/{app}/domains/{domain}/config` shows: the upstream the domain proxies to, then
 * its server block (the lb-agent writes them to separate files, since domains share upstreams).
 */
export function renderDomainConfig(domain: Domain, options: RenderOptions = {}): string {
  return `${renderUpstream(domain.app, domain.port, options)}\n${renderServer(domain, options)}`;
}

/** `value` if it matches `pattern` in full, else InputError naming `path`. */
function token(value: string, pattern: RegExp, path: string): string {
  if (typeof value !== 'string' || !pattern.test(value)) {
    throw new InputError(`${path} cannot be written into nginx config: ${JSON.stringify(value)}`, [
      { path, message: 'not a single nginx token of the expected form' },
    ]);
  }
  return value;
}

/**
 * A double-quoted nginx string: `"` and `\` escaped. Control characters (line breaks included)
 * and `$` (nginx variable expansion) are refused.
 */
export function quote(value: string, path = '$'): string {
  if (typeof value !== 'string' || !/^[\x20-\x23\x25-\x7e]*$/.test(value)) {
    throw new InputError(`${path} cannot be written into nginx config`, [
      { path, message: 'expected printable ASCII without "$" or control characters' },
    ]);
  }
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}
