/**
 * `berth`: every command and how it maps to the API. The command names, arguments and flags are
 * a contract (scripts and docs rely on them): see the README's first five minutes and issue 14.
 *
 * `instances`, `logs`, `exec` and `top` use the routes of issue 14's API part
 * (services/api/src/resources/instances.ts): instances and metrics through the typed client,
 * logs (NDJSON) and exec (WebSocket) as streams in ./streams.ts.
 */
import { hostname } from 'node:os';
import { type BerthClient, call, createBerthClient } from '@berth/client';
import { Command, Option } from 'commander';
import { completionScript } from './completion.ts';
import { type Effective, effectiveConfig, writeConfig } from './config.ts';
import { UsageError } from './errors.ts';
import { details, duration, type Format, parseFormat, render, style, table, withSpinner } from './output.ts';
import { parseCount, parseSince, parseTag, parseVersionName, parseWeights } from './parse.ts';
import { execCommand, followLogs, listInstances, readSse } from './streams.ts';

export const CLI_VERSION = '0.1.0';

export type Io = {
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stderr: NodeJS.WriteStream;
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
};

type Globals = { api?: string; output?: string };

/** What every command needs: the API client, the output format, and where to print. */
type Ctx = {
  api: BerthClient;
  config: Effective;
  format: Format;
  print(text: string): void;
  io: Io;
};

const apps = (app: string) => ({ params: { path: { app } } });

/** `afterDashes`: what followed `--` on the command line (the command of `berth exec`). */
export function buildProgram(io: Io, afterDashes: string[] = []): Command {
  const program = new Command('berth');
  program
    .description("Berth's command-line tool: apps, versions, traffic, logs and builds through the API")
    .version(CLI_VERSION)
    .option('--api <url>', 'the API address (default: BERTH_API_URL, then the stored one, then http://127.0.0.1:7070)')
    .addOption(new Option('-o, --output <format>', 'table, json or yaml').default('table'))
    .showSuggestionAfterError(false)
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    });

  const ctx = (cmd: Command): Ctx => {
    const globals = cmd.optsWithGlobals() as Globals;
    const format = parseFormat(globals.output);
    const config = effectiveConfig({ api: globals.api }, io.env);
    const api = createBerthClient({ baseUrl: config.api, token: config.token, userAgent: `berth-cli/${CLI_VERSION}` });
    return { api, config, format, io, print: (text) => io.stdout.write(text.endsWith('\n') ? text : `${text}\n`) };
  };
  const color = () => style(io.stdout, io.env);

  // ---- login, logout, whoami -------------------------------------------------------------------

  program
    .command('login')
    .description('sign in and store a token in ~/.config/berth/config.json (mode 600)')
    .option('--token <token>', 'a personal access token (berth checks it, then stores it)')
    .option('--username <user>', 'sign in with a password read from stdin (needs --password-stdin)')
    .option('--password-stdin', 'read the password from standard input')
    .action(async (opts: { token?: string; username?: string; passwordStdin?: boolean }, cmd: Command) => {
      const c = ctx(cmd);
      if (opts.token && opts.username) throw new UsageError('give --token or --username, not both');
      let token: string;
      let tokenId: string | undefined;
      if (opts.token) {
        token = opts.token;
      } else if (opts.username) {
        if (!opts.passwordStdin)
          throw new UsageError('--username needs --password-stdin (the password is read from stdin)');
        const password = (await readAll(io.stdin)).replace(/\r?\n$/, '');
        if (!password) throw new UsageError('no password on stdin');
        // The password buys a session, the session mints a personal access token: the CLI stores
        // a token that outlives the session (90 days), can be listed and revoked, and never the
        // password.
        const session = await call(c.api.POST('/api/v1/auth/login', { body: { username: opts.username, password } }));
        const asSession = createBerthClient({ baseUrl: c.config.api, token: session.token });
        const me = await call(asSession.GET('/api/v1/users/me'));
        const minted = await call(
          asSession.POST('/api/v1/tokens', {
            body: {
              name: `berth-cli@${hostname()}`.slice(0, 100),
              scopes: me.admin ? ['read', 'write', 'admin'] : ['read', 'write'],
              password,
            },
          }),
        );
        token = minted.token;
        tokenId = minted.id;
      } else {
        throw new UsageError('give --token T, or --username U --password-stdin');
      }
      const me = await call(createBerthClient({ baseUrl: c.config.api, token }).GET('/api/v1/users/me'));
      writeConfig(c.config.path, { api: c.config.api, token, user: me.name, ...(tokenId ? { tokenId } : {}) });
      c.print(
        render(c.format, { api: c.config.api, user: me.name }, () => `logged in to ${c.config.api} as ${me.name}`),
      );
    });

  program
    .command('logout')
    .description('revoke the token berth minted at login and forget it')
    .action(async (_o, cmd: Command) => {
      const c = ctx(cmd);
      const { stored } = c.config;
      if (stored.tokenId && stored.token) {
        const self = createBerthClient({ baseUrl: c.config.api, token: stored.token });
        await self.DELETE('/api/v1/tokens/{id}', { params: { path: { id: stored.tokenId } } }).catch(() => undefined);
      }
      writeConfig(c.config.path, { api: c.config.api });
      c.print('logged out');
    });

  program
    .command('whoami')
    .description('who the stored token (or BERTH_TOKEN) belongs to')
    .action(async (_o, cmd: Command) => {
      const c = ctx(cmd);
      const me = await call(c.api.GET('/api/v1/users/me'));
      c.print(
        render(c.format, me, () =>
          details([
            ['user', me.name],
            ['admin', me.admin],
            ['source', me.source],
            ['api', c.config.api],
          ]),
        ),
      );
    });

  // ---- apps ------------------------------------------------------------------------------------

  const appsCmd = program.command('apps').description('list, create, show and delete apps');
  appsCmd
    .command('list')
    .description('the apps you own or are a member of')
    .action(async (_o, cmd: Command) => {
      const c = ctx(cmd);
      const items = await allPages((cursor) =>
        call(c.api.GET('/api/v1/apps', { params: { query: { limit: 200, ...(cursor ? { cursor } : {}) } } })),
      );
      c.print(
        render(c.format, items, () =>
          table(items, [
            { header: 'NAME', get: (a) => a.name },
            { header: 'REGION', get: (a) => a.region },
            { header: 'IMAGE', get: (a) => a.image },
            { header: 'MIN-CELLS', get: (a) => a.minCells },
            { header: 'VERSIONS', get: (a) => a.lastVersion },
            { header: 'OWNER', get: (a) => a.owner },
          ]),
        ),
      );
    });
  appsCmd
    .command('create <name>')
    .description('create an app; you become its Owner')
    .requiredOption('--image <repo>', 'the image repository, e.g. team/shop (the tag comes with each version)')
    .option('--port <port>', 'the HTTP port the app listens on', '8080')
    .option('--min-cells <n>', 'spread every version over at least this many cells')
    .option('--region <region>', 'the region (default: BERTH_REGION, the only one, or that of your apps)')
    .option('--description <text>', 'a description')
    .action(
      async (
        name: string,
        opts: { image: string; port: string; minCells?: string; region?: string; description?: string },
        cmd: Command,
      ) => {
        const c = ctx(cmd);
        const port = parseCount('--port', opts.port, 65535);
        const minCells = opts.minCells === undefined ? undefined : parseCount('--min-cells', opts.minCells, 16);
        const region = opts.region ?? (await defaultRegion(c.api, io.env));
        const app = await call(
          c.api.POST('/api/v1/apps', {
            body: {
              name,
              region,
              image: opts.image,
              ports: [{ name: 'http', port }],
              ...(minCells !== undefined ? { minCells } : {}),
              ...(opts.description ? { description: opts.description } : {}),
            },
          }),
        );
        c.print(render(c.format, app, () => `app ${app.name} created in ${app.region} (image ${app.image})`));
      },
    );
  appsCmd
    .command('show <app>')
    .description('an app, its versions and its traffic split')
    .action(async (app: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      const [a, versions] = await Promise.all([
        call(c.api.GET('/api/v1/apps/{app}', apps(app))),
        call(c.api.GET('/api/v1/apps/{app}/versions', { params: { path: { app }, query: { limit: 200 } } })),
      ]);
      c.print(
        render(c.format, { ...a, versions: versions.items }, () =>
          [
            details([
              ['name', a.name],
              ['region', a.region],
              ['image', a.image],
              ['ports', a.ports.map((p) => `${p.name}:${p.port}`)],
              ['min cells', a.minCells],
              ['owner', a.owner],
              ['created', a.createdAt],
            ]),
            '',
            versionsTable(versions.items),
          ].join('\n'),
        ),
      );
    });
  appsCmd
    .command('delete <app>')
    .description('delete an app, its versions and its pods in every cell')
    .option('--yes', 'really delete it')
    .action(async (app: string, opts: { yes?: boolean }, cmd: Command) => {
      const c = ctx(cmd);
      if (!opts.yes) throw new UsageError(`deleting app ${app} stops all of it: add --yes to go ahead`);
      await call(c.api.DELETE('/api/v1/apps/{app}', apps(app)));
      c.print(render(c.format, { app, deleted: true }, () => `app ${app} deleted`));
    });

  // ---- versions, deploy, scale, rollback ---------------------------------------------------------

  const versionsCmd = program.command('versions').description("an app's versions");
  versionsCmd
    .command('list <app>')
    .description('every version, newest first')
    .action(async (app: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      const items = await allPages((cursor) =>
        call(
          c.api.GET('/api/v1/apps/{app}/versions', {
            params: { path: { app }, query: { limit: 200, ...(cursor ? { cursor } : {}) } },
          }),
        ),
      );
      c.print(render(c.format, items, () => versionsTable(items)));
    });
  const createVersion = (name: string, description: string) =>
    versionsCmd
      .command(name)
      .description(description)
      .argument('<app>')
      .option('--tag <tag>', 'the image tag (default: the newest version’s)')
      .option('--replicas <n>', 'replicas (default: the newest version’s)')
      .option('--cpu <cpu>', 'CPU per replica, e.g. 250m or 1')
      .option('--memory <memory>', 'memory per replica, e.g. 256Mi')
      .option('--env <KEY=VALUE...>', 'environment variables (replace the newest version’s)');
  const deployAction = async (
    app: string,
    opts: { tag?: string; replicas?: string; cpu?: string; memory?: string; env?: string[] },
    cmd: Command,
  ) => {
    const c = ctx(cmd);
    const body = {
      ...(opts.tag !== undefined ? { imageTag: parseTag(opts.tag) } : {}),
      ...(opts.replicas !== undefined ? { replicas: parseCount('--replicas', opts.replicas) } : {}),
      ...(opts.cpu !== undefined ? { cpu: opts.cpu } : {}),
      ...(opts.memory !== undefined ? { memory: opts.memory } : {}),
      ...(opts.env ? { env: parseEnvPairs(opts.env) } : {}),
    };
    // The API copies every field left out from the newest version (POST /apps/{app}/versions).
    const v = await withSpinner(
      `creating the next version of ${app}`,
      call(c.api.POST('/api/v1/apps/{app}/versions', { params: { path: { app } }, body })),
      io.stderr,
    );
    c.print(
      render(
        c.format,
        v,
        () => `${app} ${v.name} created: tag ${v.imageTag}, ${v.replicas} replicas of ${v.cpu} CPU, ${v.memory}`,
      ),
    );
  };
  createVersion('create', 'create the next version; what you leave out is copied from the newest').action(deployAction);
  program
    .command('deploy <app>')
    .description('deploy an image tag: a new version from the newest, with what you change')
    .requiredOption('--tag <tag>', 'the image tag to deploy')
    .option('--replicas <n>', 'replicas (default: the newest version’s)')
    .option('--cpu <cpu>', 'CPU per replica, e.g. 250m or 1')
    .option('--memory <memory>', 'memory per replica, e.g. 256Mi')
    .option('--env <KEY=VALUE...>', 'environment variables (replace the newest version’s)')
    .action(deployAction);

  program
    .command('scale <app> <version> <replicas>')
    .description("set a version's replicas")
    .action(async (app: string, version: string, replicas: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      const v = await call(
        c.api.POST('/api/v1/apps/{app}/versions/{version}/scale', {
          params: { path: { app, version: parseVersionName(version) } },
          body: { replicas: parseCount('REPLICAS', replicas) },
        }),
      );
      c.print(render(c.format, v, () => `${app} ${v.name} scaled to ${v.replicas}`));
    });

  program
    .command('rollback <app> <version>')
    .description('go back to an earlier version: it gets the replicas, the newer one none')
    .action(async (app: string, version: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      const r = await call(
        c.api.POST('/api/v1/apps/{app}/rollback', {
          params: { path: { app } },
          body: { version: parseVersionName(version) },
        }),
      );
      c.print(
        render(
          c.format,
          r,
          () =>
            `${app} rolled back to ${r.target.name} (${r.target.replicas} replicas); ${r.previous.name} scaled to ${r.previous.replicas}`,
        ),
      );
    });

  // ---- status --------------------------------------------------------------------------------------

  program
    .command('status <app>')
    .description('each version in each cell: desired, ready, available, restarts')
    .option('--watch', 'redraw until every version has its replicas ready')
    .option('--timeout <seconds>', 'with --watch: give up after this long (exit 1)', '600')
    .action(async (app: string, opts: { watch?: boolean; timeout: string }, cmd: Command) => {
      const c = ctx(cmd);
      const read = () => call(c.api.GET('/api/v1/apps/{app}/status', apps(app)));
      let status = await read();
      if (opts.watch) {
        const deadline = Date.now() + parseCount('--timeout', opts.timeout, 86_400) * 1000;
        const tty = Boolean(io.stdout.isTTY) && c.format === 'table';
        let last = '';
        while (!settled(status)) {
          if (c.format === 'table') {
            const text = statusTable(status);
            if (tty)
              io.stdout.write(`\x1b[H\x1b[2J${text}\n${color().dim('waiting for every replica to be ready…')}\n`);
            else if (text !== last) io.stdout.write(`${text}\n\n`);
            last = text;
          }
          if (Date.now() > deadline) throw new Error(`${app} did not settle within ${opts.timeout}s`);
          await new Promise((r) => setTimeout(r, 1000));
          status = await read();
        }
        if (tty) io.stdout.write('\x1b[H\x1b[2J');
      }
      c.print(render(c.format, status, () => statusTable(status)));
    });

  // ---- traffic, domains, members -------------------------------------------------------------------

  const trafficCmd = program.command('traffic').description("an app's traffic split between versions");
  const showTraffic = (c: Ctx, t: { app: string; mode: string; weights: Record<string, number> | null }) =>
    c.print(
      render(c.format, t, () =>
        t.weights
          ? table(Object.entries(t.weights), [
              { header: 'VERSION', get: ([v]) => v },
              { header: 'WEIGHT', get: ([, w]) => w },
            ])
          : `${t.app}: by ready replicas (no weights set)`,
      ),
    );
  trafficCmd
    .command('show <app>')
    .description('the current split')
    .action(async (app: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      showTraffic(c, await call(c.api.GET('/api/v1/apps/{app}/traffic', apps(app))));
    });
  trafficCmd
    .command('set <app> <weights...>')
    .description('split requests between versions: berth traffic set shop v1=90 v2=10')
    .action(async (app: string, weights: string[], _o, cmd: Command) => {
      const c = ctx(cmd);
      const parsed = parseWeights(weights);
      showTraffic(
        c,
        await call(c.api.PUT('/api/v1/apps/{app}/traffic', { params: { path: { app } }, body: { weights: parsed } })),
      );
    });
  trafficCmd
    .command('reset <app>')
    .description('no weights: each version gets requests by its ready replicas')
    .action(async (app: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      showTraffic(
        c,
        await call(c.api.PUT('/api/v1/apps/{app}/traffic', { params: { path: { app } }, body: { weights: null } })),
      );
    });

  const domainsCmd = program.command('domains').description("an app's domains");
  domainsCmd
    .command('list <app>', { isDefault: true })
    .description('the domains routed to the app')
    .action(async (app: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      const r = await call(c.api.GET('/api/v1/apps/{app}/domains', apps(app)));
      c.print(
        render(c.format, r.items, () =>
          table(r.items, [
            { header: 'DOMAIN', get: (d) => d.domain },
            { header: 'GROUP', get: (d) => d.group },
            { header: 'PORT', get: (d) => d.port },
            { header: 'PATHS', get: (d) => d.paths },
          ]),
        ),
      );
    });
  domainsCmd
    .command('add <app> <domain>')
    .description('route a domain to the app through an LB group')
    .requiredOption('--group <group>', 'the LB group (Nginx cluster) that serves it')
    .option('--path <prefix...>', 'location prefixes (default /)')
    .action(async (app: string, domain: string, opts: { group: string; path?: string[] }, cmd: Command) => {
      const c = ctx(cmd);
      const d = await call(
        c.api.POST('/api/v1/apps/{app}/domains', {
          params: { path: { app } },
          body: { domain, group: opts.group, ...(opts.path ? { paths: opts.path } : {}) },
        }),
      );
      c.print(render(c.format, d, () => `${d.domain} routed to ${app} by ${d.group}`));
    });
  domainsCmd
    .command('remove <app> <domain>')
    .description('stop routing a domain to the app')
    .action(async (app: string, domain: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      await call(c.api.DELETE('/api/v1/apps/{app}/domains/{domain}', { params: { path: { app, domain } } }));
      c.print(render(c.format, { app, domain, removed: true }, () => `${domain} removed from ${app}`));
    });

  const membersCmd = program.command('members').description("an app's members and their roles");
  membersCmd
    .command('list <app>', { isDefault: true })
    .description('who may do what')
    .action(async (app: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      const r = await call(c.api.GET('/api/v1/apps/{app}/members', apps(app)));
      c.print(
        render(c.format, r.items, () =>
          table(r.items, [
            { header: 'USER', get: (m) => m.user },
            { header: 'ROLE', get: (m) => m.role },
            { header: 'ADDED', get: (m) => m.addedAt },
            { header: 'BY', get: (m) => m.addedBy },
          ]),
        ),
      );
    });
  membersCmd
    .command('add <app> <user>')
    .description('add a member, or change their role')
    .requiredOption('--role <role>', 'Owner, Master, Developer, Reporter or Guest')
    .action(async (app: string, user: string, opts: { role: string }, cmd: Command) => {
      const c = ctx(cmd);
      const roles = ['Owner', 'Master', 'Developer', 'Reporter', 'Guest'] as const;
      const role = roles.find((r) => r.toLowerCase() === opts.role.toLowerCase());
      if (!role) throw new UsageError(`--role must be one of ${roles.join(', ')} (got "${opts.role}")`);
      const m = await call(
        c.api.PUT('/api/v1/apps/{app}/members/{user}', { params: { path: { app, user } }, body: { role } }),
      );
      c.print(render(c.format, m, () => `${m.user} is ${m.role} of ${app}`));
    });
  membersCmd
    .command('remove <app> <user>')
    .description('remove a member')
    .action(async (app: string, user: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      await call(c.api.DELETE('/api/v1/apps/{app}/members/{user}', { params: { path: { app, user } } }));
      c.print(render(c.format, { app, user, removed: true }, () => `${user} removed from ${app}`));
    });

  // ---- events ----------------------------------------------------------------------------------------

  program
    .command('events <app>')
    .description("the app's activity feed, oldest first (--follow: keep printing new ones)")
    .option('--limit <n>', 'how many of the newest to show', '20')
    .option('-f, --follow', 'keep polling for new events (the API has no event stream: every 2s)')
    .action(async (app: string, opts: { limit: string; follow?: boolean }, cmd: Command) => {
      const c = ctx(cmd);
      const limit = parseCount('--limit', opts.limit, 200);
      const read = (n: number) =>
        call(c.api.GET('/api/v1/apps/{app}/events', { params: { path: { app }, query: { limit: n } } }));
      const first = (await read(Math.max(limit, 1))).items.reverse();
      const line = (e: (typeof first)[number]) =>
        c.format === 'table'
          ? `${e.time}  ${e.actor.name.padEnd(12)}  ${e.kind}/${e.resourceName ?? e.resourceId}  ${e.action}`
          : JSON.stringify(e);
      if (!opts.follow) {
        c.print(
          render(c.format, first, () =>
            table(first, [
              { header: 'TIME', get: (e) => e.time },
              { header: 'ACTOR', get: (e) => e.actor.name },
              { header: 'RESOURCE', get: (e) => `${e.kind}/${e.resourceName ?? e.resourceId}` },
              { header: 'ACTION', get: (e) => e.action },
            ]),
          ),
        );
        return;
      }
      let seen = 0;
      for (const e of first) {
        c.print(line(e));
        seen = Math.max(seen, e.seq);
      }
      for (;;) {
        await new Promise((r) => setTimeout(r, 2000));
        const fresh = (await read(200)).items.filter((e) => e.seq > seen).reverse();
        for (const e of fresh) {
          c.print(line(e));
          seen = Math.max(seen, e.seq);
        }
      }
    });

  // ---- instances, logs, exec, top (routes from issue 14's API part) ----------------------------------

  program
    .command('instances <app>')
    .description('every pod of every version in every cell')
    .option('--version <v>', 'only this version')
    .option('--cell <cell>', 'only this cell')
    .action(async (app: string, opts: { version?: string; cell?: string }, cmd: Command) => {
      const c = ctx(cmd);
      const r = await listInstances(c.api, app, opts);
      c.print(
        render(c.format, r, () =>
          [
            table(r.items, [
              { header: 'INSTANCE', get: (i) => i.instance },
              { header: 'VERSION', get: (i) => i.version },
              { header: 'CELL', get: (i) => i.cell },
              { header: 'NODE', get: (i) => i.node },
              { header: 'IP', get: (i) => i.ip },
              { header: 'PHASE', get: (i) => i.phase },
              { header: 'READY', get: (i) => i.ready },
              { header: 'RESTARTS', get: (i) => i.restarts },
              { header: 'STARTED', get: (i) => i.startedAt },
              { header: 'LAST-EXIT', get: (i) => i.lastTermination?.reason },
            ]),
            ...(r.unreachable.length ? [`cells that did not answer: ${r.unreachable.join(', ')}`] : []),
          ].join('\n'),
        ),
      );
    });

  program
    .command('logs <app>')
    .description('container logs merged across cells, each line prefixed with cell/instance')
    .option('-f, --follow', 'keep streaming, picking up new instances as they start')
    .option('--version <v>', 'only this version')
    .option('--cell <cell>', 'only this cell')
    .option('--instance <instance>', 'only this instance')
    .option('--tail <n>', 'start with the last N lines of each instance')
    .option('--since <duration>', 'only lines newer than this, e.g. 5m')
    .action(
      async (
        app: string,
        opts: { follow?: boolean; version?: string; cell?: string; instance?: string; tail?: string; since?: string },
        cmd: Command,
      ) => {
        const c = ctx(cmd);
        await followLogs(c.api, app, {
          follow: Boolean(opts.follow),
          ...(opts.version ? { version: parseVersionName(opts.version) } : {}),
          ...(opts.cell ? { cell: opts.cell } : {}),
          ...(opts.instance ? { instance: opts.instance } : {}),
          ...(opts.tail ? { tail: parseCount('--tail', opts.tail, 100_000) } : {}),
          ...(opts.since ? { since: parseSince(opts.since) } : {}),
          json: c.format === 'json',
          write: (s) => io.stdout.write(s),
        });
      },
    );

  program
    .command('exec <app> [instance]')
    .description('run a command in a container (no instance: a ready one); exits with its exit code')
    .option('-i, --stdin', 'pass standard input to the command')
    .option('-t, --tty', 'allocate a terminal (with -i: an interactive shell)')
    .usage('APP [INSTANCE] [-it] -- CMD…')
    .action(
      async (app: string, instance: string | undefined, opts: { stdin?: boolean; tty?: boolean }, cmd: Command) => {
        const c = ctx(cmd);
        if (!afterDashes.length) throw new UsageError('give the command after --, e.g. berth exec shop -- sh');
        process.exitCode = await execCommand(c.api, app, instance, afterDashes, {
          stdin: Boolean(opts.stdin),
          tty: Boolean(opts.tty),
          io,
        });
      },
    );

  program
    .command('top <app>')
    .description('CPU, memory and restarts per version and cell, and requests per version from the LBs')
    .option('--version <v>', 'only this version')
    .option('--window <duration>', 'how far back to count restarts and requests, e.g. 15m (default)')
    .action(async (app: string, opts: { version?: string; window?: string }, cmd: Command) => {
      const c = ctx(cmd);
      const body = await call(
        c.api.GET('/api/v1/apps/{app}/metrics', {
          params: {
            path: { app },
            query: {
              ...(opts.version ? { version: parseVersionName(opts.version) } : {}),
              ...(opts.window ? { window: parseSince(opts.window) } : {}),
            },
          },
        }),
      );
      c.print(
        render(c.format, body, () =>
          [
            table(body.items, [
              { header: 'VERSION', get: (m) => m.version },
              { header: 'CELL', get: (m) => m.cell },
              { header: 'READY', get: (m) => `${m.ready}/${m.instances}` },
              { header: 'CPU', get: (m) => (m.cpuCores === null ? null : `${Math.round(m.cpuCores * 1000)}m`) },
              {
                header: 'MEMORY',
                get: (m) => (m.memoryBytes === null ? null : `${Math.round(m.memoryBytes / 2 ** 20)}Mi`),
              },
              { header: 'RESTARTS', get: (m) => m.restarts },
              { header: `RESTARTS(${body.window})`, get: (m) => m.restartedWithinWindow },
            ]),
            ...(body.unreachable.length ? [`cells that did not answer: ${body.unreachable.join(', ')}`] : []),
            '',
            requestsTable(body),
          ].join('\n'),
        ),
      );
    });

  // ---- builds ----------------------------------------------------------------------------------------

  const buildsCmd = program.command('builds').description('image builds from an app’s build configs');
  buildsCmd
    .command('start <app> <config>')
    .description('start a build of a build config')
    .option('--ref <ref>', 'a branch, tag or commit (default: the config’s branch)')
    .option('--tag <tag>', 'the image tag to push (default: the config’s pattern)')
    .option('-f, --follow', 'then follow its log until it ends')
    .action(
      async (app: string, config: string, opts: { ref?: string; tag?: string; follow?: boolean }, cmd: Command) => {
        const c = ctx(cmd);
        const run = await call(
          c.api.POST('/api/v1/apps/{app}/build-configs/{config}/runs', {
            params: { path: { app, config } },
            body: { ...(opts.ref ? { ref: opts.ref } : {}), ...(opts.tag ? { tag: parseTag(opts.tag) } : {}) },
          }),
        );
        c.print(render(c.format, run, () => `build ${run.id} (#${run.number} of ${app}/${config}) ${run.state}`));
        if (opts.follow) await buildLogs(c, run.id);
      },
    );
  buildsCmd
    .command('list <app> <config>')
    .description('the runs of a build config, newest first')
    .action(async (app: string, config: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      const r = await call(
        c.api.GET('/api/v1/apps/{app}/build-configs/{config}/runs', { params: { path: { app, config } } }),
      );
      c.print(
        render(c.format, r.items, () =>
          table(r.items, [
            { header: 'ID', get: (b) => b.id },
            { header: '#', get: (b) => b.number },
            { header: 'REF', get: (b) => b.ref },
            { header: 'STATE', get: (b) => b.state },
            { header: 'IMAGE', get: (b) => (b.image ? `${b.image.repository}:${b.image.tag}` : null) },
            { header: 'CREATED', get: (b) => b.createdAt },
          ]),
        ),
      );
    });
  buildsCmd
    .command('show <run>')
    .description('a run and its steps')
    .action(async (id: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      const run = await call(c.api.GET('/api/v1/builds/{run}', { params: { path: { run: id } } }));
      c.print(
        render(c.format, run, () =>
          [
            details([
              ['id', run.id],
              ['app/config', `${run.app}/${run.config}`],
              ['ref', run.ref],
              ['commit', run.commit],
              ['state', run.state],
              ['reason', run.reason],
            ]),
            '',
            table(run.steps, [
              { header: 'STEP', get: (s) => s.name },
              { header: 'STATE', get: (s) => s.state },
              { header: 'DURATION', get: (s) => duration(s.durationMs) },
            ]),
          ].join('\n'),
        ),
      );
    });
  buildsCmd
    .command('logs <run>')
    .description('a run’s log; -f follows it, printing each step with its duration as it finishes')
    .option('-f, --follow', 'follow until the run ends')
    .action(async (id: string, opts: { follow?: boolean }, cmd: Command) => {
      const c = ctx(cmd);
      if (!opts.follow) {
        const res = await c.api.raw(`/api/v1/builds/${encodeURIComponent(id)}/logs?follow=false`);
        io.stdout.write(await res.text());
        return;
      }
      await buildLogs(c, id);
    });
  buildsCmd
    .command('cancel <run>')
    .description('cancel a run')
    .action(async (id: string, _o, cmd: Command) => {
      const c = ctx(cmd);
      const r = await call(c.api.POST('/api/v1/builds/{run}/cancel', { params: { path: { run: id } } }));
      // Requested: an agent runs it and will mark it cancelled; otherwise it was waiting in a
      // queue and is cancelled now (a run that already ended is the API's 409).
      c.print(
        render(c.format, r, () =>
          r.requested ? `cancelling build ${id} (its agent stops it)` : `build ${id} ${r.build.state}`,
        ),
      );
    });

  // ---- completion ------------------------------------------------------------------------------------

  program
    .command('completion <shell>')
    .description('a completion script: source <(berth completion bash), or zsh')
    .action((shell: string) => {
      if (shell !== 'bash' && shell !== 'zsh') throw new UsageError(`completion is for bash or zsh (got "${shell}")`);
      io.stdout.write(completionScript(program, shell));
    });

  return program;

  async function buildLogs(c: Ctx, id: string): Promise<void> {
    const st = color();
    const printed = new Set<string>();
    let lastStep: string | undefined;
    // Each step's line is printed once, when the log moves past it (or the run ends), with the
    // duration the run records for it.
    const finishedSteps = async (only?: string) => {
      const run = await call(c.api.GET('/api/v1/builds/{run}', { params: { path: { run: id } } }));
      for (const s of run.steps) {
        if (only !== undefined && s.name !== only) continue;
        if (printed.has(s.name) || !['succeeded', 'failed', 'skipped', 'cancelled'].includes(s.state)) continue;
        printed.add(s.name);
        const mark = s.state === 'succeeded' ? st.green('✓') : s.state === 'failed' ? st.red('✗') : st.dim('-');
        io.stdout.write(
          `${mark} ${st.bold(s.name)} ${s.state} in ${duration(s.durationMs)}${s.error ? `: ${s.error}` : ''}\n`,
        );
      }
      return run;
    };
    const res = await c.api.raw(`/api/v1/builds/${encodeURIComponent(id)}/logs`, {
      headers: { accept: 'text/event-stream' },
    });
    // A stream that closes or breaks without its `end` event (the API restarted, a proxy cut it)
    // is no result: exit 1 and say how to follow on.
    const cut = () =>
      new Error(`the log of build ${id} ended before the run did: follow it again with berth builds logs ${id} -f`);
    const events = readSse(res);
    for (;;) {
      const next = await events.next().catch(() => {
        throw cut();
      });
      if (next.done) throw cut();
      const ev = next.value;
      if (ev.event === 'log') {
        const batch = JSON.parse(ev.data) as { step: string; lines?: { text?: string; line?: string }[] | string[] };
        if (batch.step !== lastStep) {
          if (lastStep) await finishedSteps(lastStep);
          lastStep = batch.step;
          io.stdout.write(`${st.bold(`== ${batch.step}`)}\n`);
        }
        for (const l of batch.lines ?? []) io.stdout.write(`${typeof l === 'string' ? l : (l.text ?? l.line ?? '')}\n`);
      } else if (ev.event === 'end') {
        const run = await finishedSteps();
        io.stdout.write(`build ${id} ${run.state}${run.reason ? `: ${run.reason}` : ''}\n`);
        if (run.state !== 'succeeded') process.exitCode = 1;
        return;
      }
    }
  }
}

type Status = {
  app: string;
  versions: {
    name: string;
    replicas: number;
    ready: number;
    available: number;
    cells: { cell: string; desired: number; ready: number; available: number; updated: number; restarts: number }[];
  }[];
};

/** Settled: every version has as many ready replicas as it wants, in cells that want them all. */
export function settled(status: Status): boolean {
  return status.versions.every(
    (v) =>
      v.ready === v.replicas &&
      v.cells.reduce((n, c) => n + c.desired, 0) === v.replicas &&
      v.cells.every((c) => c.ready === c.desired),
  );
}

export function statusTable(status: Status): string {
  type Row = {
    version: string;
    replicas: number;
    cell: string | null;
    desired: number;
    ready: number;
    available: number;
    updated: number;
    restarts: number;
  };
  const rows: Row[] = status.versions.flatMap((v): Row[] =>
    v.cells.length
      ? v.cells.map((c) => ({ version: v.name, replicas: v.replicas, ...c }))
      : [
          {
            version: v.name,
            replicas: v.replicas,
            cell: null,
            desired: 0,
            ready: 0,
            available: 0,
            updated: 0,
            restarts: 0,
          },
        ],
  );
  if (!rows.length) return `${status.app}: no versions yet (berth deploy ${status.app} --tag TAG)`;
  return table(rows, [
    { header: 'VERSION', get: (r) => r.version },
    { header: 'REPLICAS', get: (r) => r.replicas },
    { header: 'CELL', get: (r) => r.cell },
    { header: 'DESIRED', get: (r) => r.desired },
    { header: 'READY', get: (r) => r.ready },
    { header: 'AVAILABLE', get: (r) => r.available },
    { header: 'UPDATED', get: (r) => r.updated },
    { header: 'RESTARTS', get: (r) => r.restarts },
  ]);
}

type AppMetrics = {
  window: string;
  items: { version: string }[];
  requests: { version: string; total: number; '2xx': number; '3xx': number; '4xx': number; '5xx': number }[] | null;
  agents: { answered: number; missing: number };
};

/**
 * `top`'s second table: requests per version and status class within the window, as the
 * lb-agents counted them; a version with instances and no request shows 0.
 */
export function requestsTable(m: AppMetrics): string {
  const asked = m.agents.answered + m.agents.missing;
  if (asked === 0) return 'requests: no lb-agent serves a domain of this app';
  if (m.requests === null) return `requests: none of the ${asked} lb-agents answered`;
  const byVersion = new Map(m.requests.map((r) => [r.version, r]));
  for (const { version } of m.items) {
    if (!byVersion.has(version)) byVersion.set(version, { version, total: 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 });
  }
  const rows = [...byVersion.values()].sort((a, b) => a.version.localeCompare(b.version, 'en', { numeric: true }));
  const note = m.agents.missing ? ` (${m.agents.missing} of ${asked} lb-agents did not answer)` : '';
  const heading = `requests in the last ${m.window}${note}`;
  if (!rows.length) return `${heading}: none`;
  return [
    `${heading}:`,
    table(rows, [
      { header: 'VERSION', get: (r) => r.version },
      { header: 'REQUESTS', get: (r) => r.total },
      { header: '2XX', get: (r) => r['2xx'] },
      { header: '3XX', get: (r) => r['3xx'] },
      { header: '4XX', get: (r) => r['4xx'] },
      { header: '5XX', get: (r) => r['5xx'] },
    ]),
  ].join('\n');
}

function versionsTable(
  items: {
    name: string;
    imageTag: string;
    replicas: number;
    cpu: string;
    memory: string;
    createdAt: string;
    createdBy: string;
  }[],
): string {
  return table(items, [
    { header: 'VERSION', get: (v) => v.name },
    { header: 'TAG', get: (v) => v.imageTag },
    { header: 'REPLICAS', get: (v) => v.replicas },
    { header: 'CPU', get: (v) => v.cpu },
    { header: 'MEMORY', get: (v) => v.memory },
    { header: 'CREATED', get: (v) => v.createdAt },
    { header: 'BY', get: (v) => v.createdBy },
  ]);
}

export function parseEnvPairs(pairs: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const i = pair.indexOf('=');
    if (i <= 0) throw new UsageError(`--env takes KEY=VALUE (got "${pair}")`);
    env[pair.slice(0, i)] = pair.slice(i + 1);
  }
  return env;
}

async function allPages<T>(page: (cursor?: string) => Promise<{ items: T[]; next: string | null }>): Promise<T[]> {
  const items: T[] = [];
  let cursor: string | undefined;
  for (let i = 0; i < 100; i++) {
    const r = await page(cursor);
    items.push(...r.items);
    if (!r.next) break;
    cursor = r.next;
  }
  return items;
}

/**
 * The region of a new app when --region is not given: BERTH_REGION, else the only region (listing
 * regions is for admins), else the region of the caller's apps, else `local` (make up's region).
 */
async function defaultRegion(api: BerthClient, env: NodeJS.ProcessEnv): Promise<string> {
  if (env.BERTH_REGION) return env.BERTH_REGION;
  const { data } = await api.GET('/api/v1/regions');
  const names = data?.items.map((r: { name: string }) => r.name) ?? [];
  if (names.length === 1 && names[0]) return names[0];
  if (names.length > 1) throw new UsageError(`give --region: one of ${names.join(', ')}`);
  const mine = await call(api.GET('/api/v1/apps', { params: { query: { limit: 1 } } }));
  return mine.items[0]?.region ?? 'local';
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  let text = '';
  for await (const chunk of stream) text += chunk.toString();
  return text;
}
