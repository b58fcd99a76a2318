/**
 * A private Debian `docker-registry` (distribution 2.8) in `auth: token` mode whose realm is a
 * test API's token endpoint, as infra/region.sh configures the region's registry
 * (docs/registry.md): its own storage in `dir`, a loopback port, and optionally the notification
 * endpoint. Its signing key comes from infra/registry-token-key.sh, as make up makes it.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exited, freePort, REPO_ROOT, waitFor } from '@berth/shared/testing';

/** The key pair the API signs with and the certificate the registry trusts, made in `dir/secrets`. */
export function makeSigningKey(dir: string): { keyFile: string; certFile: string } {
  const [keyFile, certFile] = execFileSync(join(REPO_ROOT, 'infra/registry-token-key.sh'), [join(dir, 'secrets')], {
    encoding: 'utf8',
  })
    .trim()
    .split('\n') as [string, string];
  return { keyFile, certFile };
}

/** A free loopback address for the registry: the API must know it before the registry starts. */
export async function registryAddress(): Promise<string> {
  return `127.0.0.1:${await freePort()}`;
}

export type TokenRegistry = {
  host: string;
  url: string;
  /** The last 20 000 characters of its output (`auth.user.name=…` names who was refused). */
  log(): string;
  stop(): Promise<void>;
};

export async function startTokenRegistry(o: {
  dir: string;
  host: string;
  apiUrl: string;
  service: string;
  issuer: string;
  certFile: string;
  /** The notification endpoint's bearer token (REGISTRY_NOTIFY_TOKEN of the API). */
  notifyToken?: string;
}): Promise<TokenRegistry> {
  const config = join(o.dir, 'registry.yml');
  const lines = [
    'version: 0.1',
    'log:',
    '  level: info',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${join(o.dir, 'storage')}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: ${o.host}`,
    'auth:',
    '  token:',
    `    realm: ${o.apiUrl}/api/v1/registry/token`,
    `    service: ${o.service}`,
    `    issuer: ${o.issuer}`,
    `    rootcertbundle: ${o.certFile}`,
  ];
  if (o.notifyToken) {
    lines.push(
      'notifications:',
      '  endpoints:',
      '    - name: berth-api',
      `      url: ${o.apiUrl}/api/v1/registry/notifications`,
      '      headers:',
      `        Authorization: [Bearer ${o.notifyToken}]`,
      '      timeout: 2s',
      '      threshold: 5',
      '      backoff: 1s',
      '      ignoredmediatypes: [application/octet-stream]',
    );
  }
  writeFileSync(config, `${lines.join('\n')}\n`, { mode: 0o600 });
  const child: ChildProcess = spawn('/usr/bin/docker-registry', ['serve', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const keep = (d: Buffer) => {
    log = (log + d).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const url = `http://${o.host}`;
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`docker-registry exited: ${log}`);
      return (await fetch(`${url}/v2/`)).status === 401;
    },
    { timeoutMs: 15_000, message: 'the private registry answers with a challenge' },
  );
  return {
    host: o.host,
    url,
    log: () => log,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const done = exited(child);
      child.kill('SIGTERM');
      await done;
    },
  };
}

/**
 * The real docker client against the region's dockerd, with a config dir of its own (its logins);
 * never blocks: the API it logs in against may run in the calling process.
 */
export function dockerCli(
  config: string,
  args: string[],
  options: { dockerHost: string | undefined; input?: string },
): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('docker', ['--config', config, ...args], {
      env: { ...process.env, DOCKER_HOST: options.dockerHost },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      out += d;
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code: code ?? 1, out }));
    child.stdin.end(options.input ?? '');
  });
}
