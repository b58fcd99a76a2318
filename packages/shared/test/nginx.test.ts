/**
 * The nginx renderer against Debian's real nginx with the Lua module (a private instance on a
 * free loopback port): what it renders passes `nginx -t`, two domains of one app share one
 * upstream, a request reaches the backend that `berth.balancer` (a stub of the lb-agent's module)
 * picks, and a header value that tries to close the block is served as one literal header.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Domain } from '../src/model/index.ts';
import { renderServer, renderUpstream } from '../src/nginx/index.ts';
import { exited, freePort, waitFor } from '../src/testing/index.ts';

const run = promisify(execFile);

let dir: string;
let backend: Server;
let backendPort: number;

function domain(name: string, options: Partial<Domain['options']> = {}, paths = ['/']): Domain {
  return {
    domain: name,
    app: 'shop',
    group: 'local',
    port: 'http',
    paths,
    options: { headers: {}, ...options },
    createdAt: '2026-01-01T00:00:00.000Z',
    createdBy: 'alice',
    updatedAt: '2026-01-01T00:00:00.000Z',
  };
}

/** A config directory of its own: nginx.conf including the rendered files, and the Lua stub. */
async function writeConfig(name: string, listen: string, files: Record<string, string>): Promise<string> {
  const prefix = join(dir, name);
  await mkdir(join(prefix, 'conf.d'), { recursive: true });
  await mkdir(join(prefix, 'lua', 'berth'), { recursive: true });
  await mkdir(join(prefix, 'logs'), { recursive: true });
  // The lb-agent's Lua module, reduced to the contract: route(app, port) in the access phase
  // (a no-op here), balance(app, port) sets the peer.
  await writeFile(
    join(prefix, 'lua', 'berth', 'balancer.lua'),
    `local b = require("ngx.balancer")
return { route = function(app, port) end, balance = function(app, port)
  assert(app == "shop" and port == "http", "balance() got " .. tostring(app) .. "/" .. tostring(port))
  assert(b.set_current_peer("127.0.0.1", ${backendPort}))
end }
`,
  );
  for (const [file, text] of Object.entries(files)) await writeFile(join(prefix, 'conf.d', file), text);
  await writeFile(
    join(prefix, 'nginx.conf'),
    `load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/logs/error.log warn;
events { worker_connections 64; }
http {
  lua_package_path "${prefix}/lua/?.lua;/usr/share/lua/5.1/?.lua;;";
  access_log off;
  client_body_temp_path ${prefix}/tmp-body;
  proxy_temp_path ${prefix}/tmp-proxy;
  server { listen ${listen} default_server; return 404; }
  include ${prefix}/conf.d/*.conf;
}
`,
  );
  return prefix;
}

/** A GET with its own Host header (fetch does not send one it is given). */
function get(
  address: string,
  host: string,
  path: string,
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  const [hostname, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const req = request({ hostname, port: Number(port), path, headers: { host } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function nginxTest(prefix: string): Promise<{ ok: boolean; output: string }> {
  try {
    const { stderr } = await run('nginx', ['-t', '-p', prefix, '-c', join(prefix, 'nginx.conf')]);
    return { ok: true, output: stderr };
  } catch (err) {
    return { ok: false, output: String((err as { stderr?: string }).stderr ?? err) };
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-nginx-'));
  // nginx's workers may run as another user: they must read the Lua stub.
  await chmod(dir, 0o755);
  backend = createServer((req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end(`backend saw ${req.headers.host} ${req.url}`);
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  backendPort = (backend.address() as { port: number }).port;
});

afterAll(async () => {
  await new Promise((r) => backend?.close(r));
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('rendered config in a real nginx', () => {
  it('passes nginx -t with every option, two domains of one app sharing its upstream', async () => {
    const listen = ['127.0.0.1:1'];
    const prefix = await writeConfig('syntax', '127.0.0.1:1', {
      'upstream-shop-http.conf': renderUpstream('shop', 'http'),
      'a.conf': renderServer(
        domain(
          'a.example.test',
          { clientMaxBodySize: '10m', readTimeout: '60s', headers: { 'X-Frame-Options': 'DENY' }, raw: 'gzip on;' },
          ['/', '/api/'],
        ),
        { listen },
      ),
      'b.conf': renderServer(domain('b.example.test'), { listen }),
    });
    const result = await nginxTest(prefix);
    expect(result.ok, result.output).toBe(true);
  });

  it('a broken raw directive fails nginx -t, naming it (what keeps the last good config)', async () => {
    const prefix = await writeConfig('broken', '127.0.0.1:1', {
      'upstream.conf': renderUpstream('shop', 'http'),
      'a.conf': renderServer(domain('a.example.test', { raw: 'gzipp on;' }), { listen: ['127.0.0.1:1'] }),
    });
    const result = await nginxTest(prefix);
    expect(result.ok).toBe(false);
    expect(result.output).toContain('unknown directive "gzipp"');
  });

  it('routes through the Lua balancer and serves an injected header as one literal value', async () => {
    const port = await freePort();
    const listen = `127.0.0.1:${port}`;
    const evil = 'a; } server { listen 81; "q" \\ {';
    const prefix = await writeConfig('live', listen, {
      'upstream.conf': renderUpstream('shop', 'http'),
      'a.conf': renderServer(domain('shop.example.test', { headers: { 'X-Evil': evil } }), { listen: [listen] }),
    });
    let nginx: ChildProcess | undefined;
    try {
      nginx = spawn('nginx', ['-p', prefix, '-c', join(prefix, 'nginx.conf')], { stdio: 'ignore' });
      const res = await waitFor(
        async () => {
          const r = await get(listen, 'shop.example.test', '/hello');
          return r.status === 200 ? r : undefined;
        },
        { timeoutMs: 10_000, message: 'nginx answering through the balancer' },
      );
      // The placeholder peer answers nothing: the backend is reached only through balance("shop", "http").
      expect(res.body).toBe('backend saw shop.example.test /hello');
      expect(res.headers['x-evil']).toBe(evil);
    } finally {
      if (nginx?.pid) {
        nginx.kill('SIGQUIT');
        await exited(nginx);
      }
    }
  });
});
