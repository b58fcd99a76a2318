/**
 * The region's servers with one identity per service (infra/region-auth.sh,
 * docs/security.md): a scratch etcd, NATS and Redis of their own, set up by the script the
 * way `make up` sets up the region's, then each identity tried against what it must and must not
 * reach. The IPAM plugin's credentials cannot read users/; lb-agent cannot write another group's
 * tree; builder-agent cannot write users/; a NATS user cannot publish outside its subjects; a Redis
 * user cannot touch keys outside its patterns; no password is on a command line or in a log.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createEtcdClient, type Etcd3 } from '@berth/shared/etcd';
import { EventSubjects } from '@berth/shared/events';
import { ensureStreams, NatsClient } from '@berth/shared/nats';
import { createRedis, Redis } from '@berth/shared/redis';
import { GatewayBackend } from '@berth/shared/store/lite';
import { exited, freePort, REPO_ROOT, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const SCRIPT = join(REPO_ROOT, 'infra/region-auth.sh');
const dir = mkdtempSync(join(tmpdir(), 'berth-region-auth-'));
const secrets = join(dir, 'secrets');
const children: ChildProcess[] = [];
let etcdUrl = '';
let natsUrl = '';
let redisPort = 0;
let scriptOutput = '';

/** The script as make up runs it, against the scratch servers and secrets. */
async function regionAuth(...args: string[]): Promise<string> {
  return regionAuthWith({}, ...args);
}

async function regionAuthWith(env: Record<string, string>, ...args: string[]): Promise<string> {
  const { stdout, stderr } = await run('bash', [SCRIPT, ...args], {
    env: {
      ...process.env,
      BERTH_LOCAL: join(dir, 'local'),
      BERTH_SECRETS_DIR: secrets,
      ETCD_PREFIX: '/berth',
      EVENT_SUBJECT_ROOT: 'berth',
      BERTH_LB_GROUP: 'public',
      BERTH_IPAM_CELLS: 'cell-a cell-b',
      ...env,
    },
  });
  scriptOutput += stdout + stderr;
  return stdout;
}

const password = (server: string, id: string) => readFileSync(join(secrets, `${server}-${id}.password`), 'utf8');

function daemon(name: string, command: string, args: string[]): ChildProcess {
  const log = join(dir, `${name}.log`);
  writeFileSync(log, '');
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const append = (d: Buffer) => writeFileSync(log, d, { flag: 'a' });
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  children.push(child);
  return child;
}

const etcdAs = (id: string): Etcd3 =>
  createEtcdClient({ endpoints: [etcdUrl], username: id, password: password('etcd', id) });

/** The error's text when the call fails, '' when it succeeds. */
async function refusal(call: () => unknown): Promise<string> {
  try {
    await call();
    return '';
  } catch (err) {
    return String((err as Error)?.message ?? err);
  }
}

beforeAll(async () => {
  const etcdPort = await freePort();
  const peerPort = await freePort();
  etcdUrl = `http://127.0.0.1:${etcdPort}`;
  // An etcd with data and no auth: the region before this change, which make up upgrades.
  daemon('etcd', 'etcd', [
    '--name=scratch',
    `--data-dir=${join(dir, 'etcd')}`,
    `--listen-client-urls=${etcdUrl}`,
    `--advertise-client-urls=${etcdUrl}`,
    `--listen-peer-urls=http://127.0.0.1:${peerPort}`,
    `--initial-advertise-peer-urls=http://127.0.0.1:${peerPort}`,
    `--initial-cluster=scratch=http://127.0.0.1:${peerPort}`,
  ]);
  await waitFor(async () => (await fetch(`${etcdUrl}/health`)).ok, { timeoutMs: 15_000, message: 'etcd healthy' });
  const anonymous = createEtcdClient({ endpoints: [etcdUrl] });
  await anonymous.put('/berth/users/alice').value('{"name":"alice"}');
  await anonymous.put('/berth/lb-groups/internal').value('{}');
  anonymous.close();

  await regionAuth('secrets');
  await regionAuth('etcd', etcdUrl);

  const natsPort = await freePort();
  natsUrl = `nats://127.0.0.1:${natsPort}`;
  mkdirSync(join(dir, 'nats'));
  await regionAuth('nats-conf', join(dir, 'nats/auth.conf'));
  writeFileSync(
    join(dir, 'nats/nats.conf'),
    `listen: 127.0.0.1:${natsPort}\njetstream { store_dir: "${join(dir, 'nats/js')}" }\ninclude ./auth.conf\n`,
  );
  daemon('nats', 'nats-server', ['-c', join(dir, 'nats/nats.conf')]);

  redisPort = await freePort();
  await regionAuth('redis-acl', join(dir, 'users.acl'));
  daemon('redis', 'redis-server', [
    '--bind',
    '127.0.0.1',
    '--port',
    String(redisPort),
    '--aclfile',
    join(dir, 'users.acl'),
    '--save',
    '',
    '--appendonly',
    'no',
  ]);
  await waitFor(
    async () => {
      const nats = await NatsClient.connect({
        servers: [natsUrl],
        name: 'probe',
        user: 'tests',
        pass: password('nats', 'tests'),
      });
      await nats.drain();
      return true;
    },
    { timeoutMs: 15_000, message: 'nats-server up' },
  );
});

afterAll(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      const done = exited(child);
      child.kill('SIGKILL');
      await done;
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('credentials', () => {
  it('are files only their owner can read, and no password is in a log or on a command line', async () => {
    const files = readdirSync(secrets).filter((f) => f.endsWith('.password'));
    expect(files).toEqual(
      expect.arrayContaining(['etcd-ipam-cell-a.password', 'nats-api.password', 'redis-tests.password']),
    );
    for (const f of files) expect(statSync(join(secrets, f)).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'nats/auth.conf')).mode & 0o777).toBe(0o600);
    const passwords = files.map((f) => readFileSync(join(secrets, f), 'utf8'));
    const logs = [scriptOutput, ...['etcd', 'nats', 'redis'].map((n) => readFileSync(join(dir, `${n}.log`), 'utf8'))];
    // The ACL file holds hashes only; the servers' command lines name files, never a password.
    logs.push(readFileSync(join(dir, 'users.acl'), 'utf8'));
    logs.push(...children.map((c) => readFileSync(`/proc/${c.pid}/cmdline`, 'utf8')));
    for (const pw of passwords) for (const text of logs) expect(text).not.toContain(pw);
    // A service's variables name files, never a password.
    const env = await regionAuth('env', 'builder-agent');
    expect(env).toContain(`ETCD_PASSWORD_FILE=${join(secrets, 'etcd-builder-agent.password')}`);
    expect(env).toContain('REDIS_USERNAME=builder-agent');
    for (const pw of passwords) expect(env).not.toContain(pw);
  });

  it('make up again changes nothing: the data and every identity still work', async () => {
    await regionAuth('etcd', etcdUrl);
    const api = etcdAs('api');
    try {
      expect(await api.get('/berth/users/alice').string()).toBe('{"name":"alice"}');
    } finally {
      api.close();
    }
  });
});

describe('etcd', () => {
  it('refuses a client without credentials', async () => {
    const anonymous = createEtcdClient({ endpoints: [etcdUrl] });
    try {
      expect(await refusal(() => anonymous.get('/berth/users/alice').string())).toMatch(/user name is empty/);
    } finally {
      anonymous.close();
    }
  });

  it("the IPAM plugin's identity reads and writes its cell's IPAM keys, and cannot read users or tokens", async () => {
    const plugin = new GatewayBackend([etcdUrl], {
      username: 'ipam-cell-a',
      password: password('etcd', 'ipam-cell-a'),
    });
    await plugin.txn([], [{ put: '/berth/ipam/cell-a/ips/198.18.0.9', value: '{"pod":"p"}' }]);
    expect((await plugin.range('/berth/ipam/cell-a/ips/')).map((kv) => kv.key)).toEqual([
      '/berth/ipam/cell-a/ips/198.18.0.9',
    ]);
    expect(await refusal(() => plugin.get('/berth/users/alice'))).toMatch(/permission denied/);
    expect(await refusal(() => plugin.range('/berth/tokens/'))).toMatch(/permission denied/);
    expect(await refusal(() => plugin.txn([], [{ put: '/berth/users/mallory', value: '{"admin":true}' }]))).toMatch(
      /permission denied/,
    );
    // Another cell's addresses are not its own either.
    expect(await refusal(() => plugin.txn([], [{ put: '/berth/ipam/cell-b/ips/198.19.32.9', value: '{}' }]))).toMatch(
      /permission denied/,
    );
    const wrong = new GatewayBackend([etcdUrl], { username: 'ipam-cell-a', password: 'not-the-password' });
    expect(await refusal(() => wrong.get('/berth/ipam/cell-a/ips/198.18.0.9'))).toMatch(/authentication failed/);
  });

  it('lb-agent writes only its own group, discovery only upstreams, builder-agent never users', async () => {
    const lb = etcdAs('lb-agent');
    const discovery = etcdAs('discovery');
    const builder = etcdAs('builder-agent');
    const scheduler = etcdAs('scheduler');
    try {
      await lb.put('/berth/slb/public/agents/lb-1').value('{}');
      expect(await lb.get('/berth/slb/public/agents/lb-1').string()).toBe('{}');
      expect(await refusal(() => lb.put('/berth/slb/internal/agents/lb-1').value('{}'))).toMatch(/permission denied/);
      expect(await refusal(() => lb.put('/berth/slb/public/domains/evil.test').value('{}'))).toMatch(
        /permission denied/,
      );
      expect(await refusal(() => lb.get('/berth/slb/internal/domains/x').string())).toMatch(/permission denied/);

      // Upstreams of every group (the groups in etcd when make up ran), nothing else in the tree.
      await discovery.put('/berth/slb/public/upstreams/shop').value('{}');
      await discovery.put('/berth/slb/internal/upstreams/shop').value('{}');
      expect(await refusal(() => discovery.put('/berth/slb/public/domains/shop.test').value('{}'))).toMatch(
        /permission denied/,
      );
      expect(await refusal(() => discovery.get('/berth/users/alice').string())).toMatch(/permission denied/);

      await builder.put('/berth/builders/local/agent-1').value('{}');
      await builder.put('/berth/builds/run-1').value('{}');
      expect(await refusal(() => builder.put('/berth/users/alice').value('{"admin":true}'))).toMatch(
        /permission denied/,
      );
      expect(await refusal(() => builder.put('/berth/builders/other-region/agent-1').value('{}'))).toMatch(
        /permission denied/,
      );

      await scheduler.put('/berth/placements/shop/v1').value('{}');
      await scheduler.put('/berth/elections/scheduler').value('me');
      expect(await refusal(() => scheduler.put('/berth/apps/shop').value('{}'))).toMatch(/permission denied/);
      expect(await refusal(() => scheduler.get('/berth/tokens/t1').string())).toMatch(/permission denied/);
    } finally {
      for (const c of [lb, discovery, builder, scheduler]) c.close();
    }
  });
});

describe('etcd roles that change', () => {
  it("make up takes back a grant the roles no longer list: the lb-agent's old group", async () => {
    await regionAuthWith({ BERTH_LB_GROUP: 'edge' }, 'etcd', etcdUrl);
    const lb = etcdAs('lb-agent');
    try {
      await lb.put('/berth/slb/edge/agents/lb-1').value('{}');
      expect(await refusal(() => lb.put('/berth/slb/public/agents/lb-1').value('{}'))).toMatch(/permission denied/);
      expect(await refusal(() => lb.get('/berth/slb/public/domains/x').string())).toMatch(/permission denied/);
    } finally {
      lb.close();
      await regionAuth('etcd', etcdUrl);
    }
  });
});

describe('NATS', () => {
  const subjects = new EventSubjects('berth');
  const as = (id: string) => NatsClient.connect({ servers: [natsUrl], name: id, user: id, pass: password('nats', id) });

  it('refuses a connection without credentials', async () => {
    expect(await refusal(() => NatsClient.connect({ servers: [natsUrl], name: 'anonymous' }))).toMatch(
      /cannot connect/,
    );
  });

  it('a service publishes events through JetStream and nothing outside its subjects', async () => {
    const scheduler = await as('scheduler');
    try {
      await ensureStreams(await scheduler.jsm(), subjects);
      const ack = await scheduler.js.publish(subjects.event('app', 'shop', 'placed'), '{}');
      expect(ack.seq).toBeGreaterThan(0);
      // A cancel is the API's to send: the server refuses it.
      expect(
        await refusal(() => scheduler.connection.request('berth.agents.agent-1.cancel', '{}', { timeout: 2000 })),
      ).toMatch(/permission/i);
      // Streams cannot be deleted by a service.
      expect(await refusal(async () => (await scheduler.jsm()).streams.delete(subjects.eventsStream))).not.toBe('');
    } finally {
      await scheduler.drain();
    }
  });

  it('builder-agent hears its cancels but cannot listen to the event feed', async () => {
    const builder = await as('builder-agent');
    try {
      const sub = builder.connection.subscribe(subjects.allEvents());
      const ended = (async () => {
        for await (const _ of sub) {
          // no event may arrive
        }
      })();
      expect(await refusal(() => ended)).toMatch(/permission/i);
    } finally {
      await builder.drain();
    }
  });
});

describe('Redis', () => {
  let api: Redis;
  let builder: Redis;
  beforeAll(async () => {
    const url = `redis://127.0.0.1:${redisPort}`;
    api = createRedis({ url, username: 'api', password: password('redis', 'api') });
    builder = createRedis({
      url,
      username: 'builder-agent',
      password: password('redis', 'builder-agent'),
      role: 'worker',
    });
    await waitFor(() => api.status === 'ready' && builder.status === 'ready', { message: 'redis users signed in' });
  });
  afterAll(() => {
    api.disconnect();
    builder.disconnect();
  });

  it('the default user is off', async () => {
    // No ready check: that INFO would be refused before the command under test.
    const anonymous = new Redis(`redis://127.0.0.1:${redisPort}`, { enableReadyCheck: false, maxRetriesPerRequest: 0 });
    try {
      expect(await refusal(() => anonymous.get('bull:x'))).toMatch(/NOAUTH|WRONGPASS|Authentication/i);
    } finally {
      anonymous.disconnect();
    }
  });

  it('each user reaches only its key patterns and no admin command', async () => {
    await api.set('berth:berth:login:a:127.0.0.1:1', '1');
    await api.set('bull:builds-local-a:id', '1');
    await builder.incr('bull:builds-local-a:id');
    expect(await refusal(() => api.set('sessions:x', '1'))).toMatch(/NOPERM/);
    expect(await refusal(() => builder.get('berth:berth:login:a:127.0.0.1:1'))).toMatch(/NOPERM/);
    expect(await refusal(() => builder.flushall())).toMatch(/NOPERM/);
    expect(await refusal(() => api.call('ACL', 'LIST'))).toMatch(/NOPERM/);
  });
});
