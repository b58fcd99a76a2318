/**
 * Requests and status classes of an app per version within a window, from the lb-agents
 * (docs/instances.md, "Metrics"). The agents that count them are those of the LB groups the app
 * has domains in (its domain claims); each reports, in its status at `/slb/{group}/agents/{host}`,
 * where it answers `GET ?window=&app=` (`statsUrl`). Every agent is asked at once with a short
 * deadline; the answers are summed per version. An agent that does not answer in time, answers
 * badly, or reports no `statsUrl` (an older agent) is counted as missing.
 */
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import { domainClaimSchema, lbAgentStatusSchema } from '@berth/shared/model';
import type { Store } from '@berth/shared/store';
import { z } from 'zod';

export const STATUS_CLASSES = ['2xx', '3xx', '4xx', '5xx'] as const;

/** Requests of one version within the window, summed over the lb-agents that answered. */
export const versionRequestsSchema = z.object({
  version: z.string(),
  total: z.number().int(),
  '2xx': z.number().int(),
  '3xx': z.number().int(),
  '4xx': z.number().int(),
  '5xx': z.number().int(),
});
export type VersionRequests = z.output<typeof versionRequestsSchema>;

export type LbRequests = {
  agents: { answered: number; missing: number };
  /** Per version, summed over the agents that answered; null when none did. */
  requests: VersionRequests[] | null;
};

const countsSchema = z.object({
  total: z.number().int().min(0),
  '2xx': z.number().int().min(0),
  '3xx': z.number().int().min(0),
  '4xx': z.number().int().min(0),
  '5xx': z.number().int().min(0),
});
/** What an agent's `/stats/requests` answers (services/lb-agent/src/stats/request-window.ts). */
const agentAnswerSchema = z.object({
  apps: z.record(z.string(), z.record(z.string(), countsSchema)),
});

export type LbRequestCountsOptions = {
  store: Store;
  keys: BerthKeys;
  logger: Logger;
  /** Sent as `Authorization: Bearer` when the agents protect their counters (their METRICS_TOKEN). */
  token?: string | undefined;
  /** How long each agent has to answer. Default 2 s. */
  timeoutMs?: number;
};

export class LbRequestCounts {
  readonly #o: LbRequestCountsOptions;
  readonly #log: Logger;

  constructor(options: LbRequestCountsOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: 'lb-request-counts' });
  }

  async collect(app: string, filter: { version?: string | undefined; window: string }): Promise<LbRequests> {
    const { store, keys } = this.#o;
    const claims = await store.list(keys.domainClaims(), domainClaimSchema, { directChildrenOnly: true });
    const groups = [...new Set(claims.filter((c) => c.value.app === app).map((c) => c.value.group))].sort();
    const agents = (
      await Promise.all(
        groups.map((g) => store.list(keys.lbAgents(g), lbAgentStatusSchema, { directChildrenOnly: true })),
      )
    ).flat();
    const answers = await Promise.all(
      agents.map(async ({ value: agent }) => {
        if (!agent.statsUrl) return undefined;
        try {
          return await this.#ask(agent.statsUrl, app, filter.window);
        } catch (err) {
          this.#log.debug({ err, group: agent.group, host: agent.host }, "an lb-agent's request counts are missing");
          return undefined;
        }
      }),
    );
    const answered = answers.filter((a) => a !== undefined);
    const out: LbRequests = {
      agents: { answered: answered.length, missing: agents.length - answered.length },
      requests: null,
    };
    if (answered.length === 0) return out;
    const sums = new Map<string, VersionRequests>();
    for (const answer of answered) {
      for (const [version, counts] of Object.entries(answer.apps[app] ?? {})) {
        if (filter.version !== undefined && version !== filter.version) continue;
        let sum = sums.get(version);
        if (!sum) {
          sum = { version, total: 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 };
          sums.set(version, sum);
        }
        sum.total += counts.total;
        for (const c of STATUS_CLASSES) sum[c] += counts[c];
      }
    }
    out.requests = [...sums.values()].sort((a, b) => a.version.localeCompare(b.version, 'en', { numeric: true }));
    return out;
  }

  async #ask(statsUrl: string, app: string, window: string): Promise<z.output<typeof agentAnswerSchema>> {
    const url = new URL(statsUrl);
    url.searchParams.set('window', window);
    url.searchParams.set('app', app);
    const res = await fetch(url, {
      headers: { accept: 'application/json', ...(this.#o.token ? { authorization: `Bearer ${this.#o.token}` } : {}) },
      signal: AbortSignal.timeout(this.#o.timeoutMs ?? 2000),
      redirect: 'error',
    });
    if (!res.ok) throw new Error(`${url.origin}${url.pathname} answered ${res.status}`);
    return agentAnswerSchema.parse(await res.json());
  }
}
