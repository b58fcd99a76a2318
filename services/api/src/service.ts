import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { UnauthorizedError } from '@berth/shared/errors';
import type { Logger } from '@berth/shared/logging';
import { EventSubjects, NatsComponent } from '@berth/shared/nats';
import { RedisComponent } from '@berth/shared/redis';
import { ServiceRuntime } from '@berth/shared/service';
import express from 'express';
import { LdapDirectory } from './auth/ldap.ts';
import { PasswordHasher } from './auth/passwords.ts';
import { LoginRateLimiter } from './auth/rate-limit.ts';
import { AuthService } from './auth/service.ts';
import { BuildDispatcher } from './builds/dispatcher.ts';
import { BuildLogs } from './builds/logs.ts';
import { BullMqBuildQueues } from './builds/queues.ts';
import { BuildRuns } from './builds/runs.ts';
import { WebhookSecrets } from './builds/webhook-secrets.ts';
import { ExecSessions } from './cells/exec.ts';
import { CellLogs } from './cells/logs.ts';
import { CellMetrics } from './cells/metrics.ts';
import { CellPods } from './cells/pods.ts';
import type { ApiConfig } from './env.ts';
import { Idempotency } from './http/idempotency.ts';
import { Mutations } from './http/mutation.ts';
import { buildOpenApi } from './http/openapi.ts';
import { type AnyRoute, mountRoutes } from './http/routes.ts';
import { StreamLimits } from './http/stream-limits.ts';
import { LbRequestCounts } from './lb/requests.ts';
import { TagPushes } from './registry/notifications.ts';
import { RegistryClient } from './registry/registry-client.ts';
import { parseSigningKey } from './registry/signing-key.ts';
import { RegistryTokenIssuer } from './registry/token-issuer.ts';
import { adminRoutes } from './resources/admin.ts';
import { appRoutes } from './resources/apps.ts';
import { authRoutes } from './resources/auth.ts';
import { buildConfigRoutes } from './resources/build-configs.ts';
import { buildHookRoutes } from './resources/build-hooks.ts';
import { buildRoutes } from './resources/builds.ts';
import type { ApiContext } from './resources/context.ts';
import { domainRoutes } from './resources/domains.ts';
import { eventRoutes } from './resources/events.ts';
import { imageGroupRoutes } from './resources/image-groups.ts';
import { imageRepoRoutes } from './resources/image-repos.ts';
import { instanceRoutes } from './resources/instances.ts';
import { lbGroupRoutes } from './resources/lb-groups.ts';
import { memberRoutes } from './resources/members.ts';
import { Quotas } from './resources/quotas.ts';
import { registryNotificationRoutes } from './resources/registry-notifications.ts';
import { registryTokenRoutes } from './resources/registry-token.ts';
import { secretRoutes } from './resources/secrets.ts';
import { trafficRoutes } from './resources/traffic.ts';
import { versionRoutes } from './resources/versions.ts';

export const API_BASE = '/api/v1';
export const API_VERSION = '1.0.0';

/**
 * The API: stateless. Validates requests, checks roles, writes desired state to etcd (multi-key
 * changes in one transaction) and publishes every change as an event.
 */
export class ApiService {
  readonly runtime: ServiceRuntime;
  readonly routes: AnyRoute[];

  private constructor(runtime: ServiceRuntime, routes: AnyRoute[]) {
    this.runtime = runtime;
    this.routes = routes;
  }

  static create(config: ApiConfig, logger: Logger): ApiService {
    const subjects = new EventSubjects(config.EVENT_SUBJECT_ROOT);
    const nats = new NatsComponent({
      servers: config.NATS_URL,
      token: config.NATS_TOKEN,
      user: config.NATS_USER,
      pass: config.NATS_PASSWORD,
      name: `api-${hostname()}`,
      logger,
    });
    const redis = new RedisComponent({
      url: config.REDIS_URL,
      username: config.REDIS_USERNAME,
      password: config.REDIS_PASSWORD,
      name: 'api',
    });
    let routes: AnyRoute[] = [];
    // Routes are mounted on a router the HTTP server takes now and the routes fill below.
    const router = express.Router();

    const runtime = new ServiceRuntime({
      name: 'api',
      config,
      logger,
      routes: (app) => {
        // The client address (req.ip, the login limit's key) comes from X-Forwarded-For only when
        // the peer is a configured proxy; by default from the socket, loopback included.
        app.set('trust proxy', config.TRUSTED_PROXIES);
        app.use(
          API_BASE,
          express.json({
            limit: config.BODY_LIMIT,
            type: ['application/json', 'application/*+json'],
            strict: true,
            // Webhook signatures are over the exact bytes (./resources/build-hooks.ts).
            verify: (req, _res, buf) => {
              (req as { rawBody?: Buffer }).rawBody = buf;
            },
          }),
        );
        app.get(`${API_BASE}/openapi.json`, (_req, res) => {
          res.json(buildOpenApi(routes, API_BASE, API_VERSION));
        });
        app.use(router);
      },
    });
    const store = runtime.store;
    runtime.add(nats);
    const events = runtime.addEvents(nats, subjects);
    const idempotency = new Idempotency(store, runtime.keys, runtime.etcd);
    const mutations = new Mutations(store, events, idempotency);
    const auth = new AuthService({
      store,
      etcd: runtime.etcd,
      mutations,
      keys: runtime.keys,
      logger,
      rateLimiter: new LoginRateLimiter(redis.client, {
        perUserPerMinute: config.LOGIN_RATE_LIMIT,
        perAddressPerMinute: config.LOGIN_RATE_LIMIT_PER_ADDRESS,
        accountFreeFailures: config.LOGIN_ACCOUNT_FAILURES,
        maxBackoffMs: config.LOGIN_BACKOFF_MAX,
        prefix: `berth${config.ETCD_PREFIX.replace(/\//g, ':')}`,
      }),
      ldap:
        config.LDAP_URL && config.LDAP_BIND_DN && config.LDAP_BIND_PASSWORD && config.LDAP_USER_BASE_DN
          ? new LdapDirectory({
              url: config.LDAP_URL,
              bindDn: config.LDAP_BIND_DN,
              bindPassword: config.LDAP_BIND_PASSWORD,
              userBaseDn: config.LDAP_USER_BASE_DN,
              userFilter: config.LDAP_USER_FILTER,
              emailAttribute: config.LDAP_EMAIL_ATTRIBUTE,
            })
          : undefined,
      sessionTtlMs: config.SESSION_TTL,
      hasher: new PasswordHasher({
        cost: { n: 2 ** config.PASSWORD_HASH_LOG_N, r: 8, p: 1 },
        ...(config.PASSWORD_HASH_CONCURRENCY > 0 ? { concurrency: config.PASSWORD_HASH_CONCURRENCY } : {}),
        queueLimit: config.PASSWORD_HASH_QUEUE,
      }),
      maxTokensPerUser: config.MAX_TOKENS_PER_USER,
    });
    const ctx: ApiContext = {
      store,
      keys: runtime.keys,
      auth,
      logger,
      region: config.BERTH_REGION,
      events,
      mutations,
      defaultQuota: {
        maxApps: config.DEFAULT_QUOTA_APPS,
        cpu: config.DEFAULT_QUOTA_CPU,
        memory: config.DEFAULT_QUOTA_MEMORY,
      },
      streams: new StreamLimits({
        limits: {
          follow: { max: config.MAX_FOLLOWS_PER_USER, setting: 'MAX_FOLLOWS_PER_USER' },
          exec: { max: config.MAX_EXEC_PER_USER, setting: 'MAX_EXEC_PER_USER' },
        },
      }),
    };
    const issuer = config.REGISTRY_TOKEN_KEY
      ? new RegistryTokenIssuer({
          key: parseSigningKey(config.REGISTRY_TOKEN_KEY),
          issuer: config.REGISTRY_TOKEN_ISSUER,
          service: config.REGISTRY_TOKEN_SERVICE,
          ttlMs: config.REGISTRY_TOKEN_TTL,
        })
      : undefined;
    const registry =
      issuer && config.REGISTRY_URL ? new RegistryClient({ url: config.REGISTRY_URL, issuer }) : undefined;
    // Builds (docs/builds.md): runs on the agents' BullMQ queues, placed by one elected dispatcher.
    const buildQueues = new BullMqBuildQueues({ redis: redis.client });
    const buildRuns = new BuildRuns({
      ctx,
      queues: buildQueues,
      nats,
      subjects,
      spillFactor: config.BUILD_SPILL_FACTOR,
    });
    const buildLogs = new BuildLogs({ nats, subjects, logger });
    const webhookSecrets = new WebhookSecrets({
      store,
      prefix: config.ETCD_PREFIX,
      key: config.BUILD_WEBHOOK_KEY,
    });
    const dispatcher = new BuildDispatcher({
      ctx,
      etcd: runtime.etcd,
      runs: buildRuns,
      quotas: new Quotas(ctx),
      agentLostAfterMs: config.BUILD_AGENT_LOST_AFTER,
    });
    // Instances, logs, exec and metrics read the cells (docs/instances.md).
    const pods = new CellPods({
      store,
      keys: runtime.keys,
      kubeconfigDir: resolve(config.KUBECONFIG_DIR),
      identity: config.CELL_IDENTITY ?? 'api',
      logger,
    });
    routes = [
      ...authRoutes(ctx),
      ...adminRoutes(ctx),
      ...appRoutes(ctx),
      ...versionRoutes(ctx),
      ...secretRoutes(ctx, config.BERTH_SECRETS_KEYS),
      ...memberRoutes(ctx),
      ...lbGroupRoutes(ctx),
      ...domainRoutes(ctx),
      ...trafficRoutes(ctx),
      ...eventRoutes(ctx),
      ...imageGroupRoutes(ctx, registry),
      ...buildConfigRoutes(ctx, webhookSecrets),
      ...buildRoutes(ctx, buildRuns, buildLogs),
      ...buildHookRoutes(ctx, buildRuns, webhookSecrets, runtime.etcd),
      ...instanceRoutes(
        ctx,
        pods,
        new CellLogs({ pods, logger }),
        new CellMetrics({ pods, logger }),
        new LbRequestCounts({ store, keys: runtime.keys, logger, token: config.LB_STATS_TOKEN }),
      ),
    ];
    // The registry: its token server, its repositories and tags when the API reaches it, and who
    // pushed each tag when it sends its notifications here.
    const tagPushes = new TagPushes({ store, keys: runtime.keys, events });
    if (issuer) routes.push(...registryTokenRoutes(ctx, issuer, config.REGISTRY_ROBOT_KEY));
    if (registry) routes.push(...imageRepoRoutes(ctx, registry, tagPushes));
    if (config.REGISTRY_NOTIFY_TOKEN) {
      routes.push(...registryNotificationRoutes(ctx, tagPushes, config.REGISTRY_NOTIFY_TOKEN));
    }
    // Exec is a WebSocket: its upgrade never reaches express (./cells/exec.ts).
    const execSessions = new ExecSessions({
      ctx,
      pods,
      logger,
      authenticate: async (req) => {
        const principal = await auth.authenticate(req as express.Request, { kind: 'user', scope: 'write' });
        if (!principal) throw new UnauthorizedError('sign in: send Authorization: Bearer <token>');
        return principal;
      },
    });
    runtime.http.onUpgrade(execSessions.upgrade);
    runtime.add({ name: 'exec-sessions', stop: () => execSessions.close() });
    mountRoutes(router, API_BASE, routes, (req, access) => auth.authenticate(req, access), idempotency);

    runtime.health.add('nats', nats.ready);
    runtime.health.add('redis', redis.ready);
    runtime.add(redis);
    runtime.add({ name: 'build-queues', stop: () => buildQueues.close() });
    runtime.addLeaderElection('build-dispatcher', {
      candidateId: `${hostname()}-${process.pid}-${config.HTTP_ADDR.port}`,
      onElected: () => dispatcher.start(),
      onDeposed: () => dispatcher.stop(),
    });
    runtime.add({ name: 'build-dispatcher', stop: () => dispatcher.stop() });
    if (config.BERTH_ADMIN_PASSWORD) {
      const password = config.BERTH_ADMIN_PASSWORD;
      runtime.add({ name: 'admin-bootstrap', start: () => auth.bootstrapAdmin(config.BERTH_ADMIN_USER, password) });
    }
    return new ApiService(runtime, routes);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
