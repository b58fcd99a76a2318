/**
 * Quotas per user: how many apps they own, and the total cpu and memory of all replicas of their
 * apps' versions. A user without a quota of their own has the default one (DEFAULT_QUOTA_*), an
 * admin without one has none. Version create, scale, rollback, app create and transfer check them
 * and answer 403 with the numbers. A check and the write it allows are one transaction: the user's quota
 * guard key is compared and bumped, so two racing writes cannot both slip under the limit.
 */
import { ForbiddenError } from '@berth/shared/errors';
import { appSchema, parseCpuMillis, parseMemoryBytes, versionSchema } from '@berth/shared/model';
import type { Op } from '@berth/shared/store';
import { z } from 'zod';
import { userRecordSchema } from '../auth/records.ts';
import { type ApiContext, now } from './context.ts';
import { type QuotaRecord, quotaRecordSchema } from './schemas.ts';

export type Usage = { apps: number; cpuMillis: number; memoryBytes: number };
export type UsageDelta = Partial<Usage>;

const guardSchema = z.object({ bumpedAt: z.string() });

import { formatCpu, formatMemory } from '@berth/shared/model';

export { formatCpu, formatMemory };

/** cpu/memory of `replicas` replicas of a version. */
export function versionUsage(v: { replicas: number; cpu: string; memory: string }): Usage {
  return {
    apps: 0,
    cpuMillis: v.replicas * parseCpuMillis(v.cpu),
    memoryBytes: v.replicas * parseMemoryBytes(v.memory),
  };
}

function stripUndefined<T extends Record<string, unknown>>(o: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as {
    [K in keyof T]: Exclude<T[K], undefined>;
  };
}

export class Quotas {
  readonly #ctx: ApiContext;

  constructor(ctx: ApiContext) {
    this.#ctx = ctx;
  }

  async get(user: string): Promise<QuotaRecord | undefined> {
    return (await this.#ctx.store.get(this.#ctx.keys.quota(user), quotaRecordSchema))?.value;
  }

  /** The default quota that applies to `user` when they have none: none for an admin. */
  async defaultFor(user: string): Promise<QuotaRecord | undefined> {
    const d = this.#ctx.defaultQuota;
    if (!d || (d.maxApps === undefined && d.cpu === undefined && d.memory === undefined)) return undefined;
    const record = await this.#ctx.store.get(this.#ctx.keys.user(user), userRecordSchema);
    if (record?.value.admin) return undefined;
    return { user, ...stripUndefined(d), updatedAt: new Date(0).toISOString() };
  }

  async usage(user: string): Promise<Usage> {
    const { store, keys } = this.#ctx;
    const apps = (await store.list(keys.apps(), appSchema, { directChildrenOnly: true })).filter(
      (a) => a.value.owner === user,
    );
    const usage: Usage = { apps: apps.length, cpuMillis: 0, memoryBytes: 0 };
    for (const app of apps) {
      const u = await this.appUsage(app.value.name);
      usage.cpuMillis += u.cpuMillis;
      usage.memoryBytes += u.memoryBytes;
    }
    return usage;
  }

  /** cpu and memory of every replica of one app's versions. */
  async appUsage(app: string): Promise<Usage> {
    const usage: Usage = { apps: 1, cpuMillis: 0, memoryBytes: 0 };
    for (const v of await this.#ctx.store.list(this.#ctx.keys.versions(app), versionSchema)) {
      const u = versionUsage(v.value);
      usage.cpuMillis += u.cpuMillis;
      usage.memoryBytes += u.memoryBytes;
    }
    return usage;
  }

  /**
   * Checks that `delta` fits the user's quota and returns the guard op to put in the same
   * transaction as the write. Throws ForbiddenError (403) with the numbers when it does not fit.
   */
  async check(user: string, delta: UsageDelta): Promise<Op> {
    const { store, keys } = this.#ctx;
    const stored = await store.get(keys.quota(user), quotaRecordSchema);
    const grows = (delta.apps ?? 0) > 0 || (delta.cpuMillis ?? 0) > 0 || (delta.memoryBytes ?? 0) > 0;
    // When usage does not grow, or there is no quota at all (an admin without one), the write only
    // needs the quota to stay as it was read (absent: revision 0); it does not serialize on the guard.
    const unlimited: Op = { op: 'expect', key: keys.quota(user), modRevision: stored?.modRevision ?? 0 };
    if (!grows) return unlimited;
    const quota = stored?.value ?? (await this.defaultFor(user));
    if (!quota) return unlimited;
    const guard = await store.get(keys.quotaGuard(user), guardSchema);
    const guardOp: Op = guard
      ? { op: 'update', key: guard.key, value: { bumpedAt: now() }, modRevision: guard.modRevision }
      : { op: 'create', key: keys.quotaGuard(user), value: { bumpedAt: now() } };
    const usage = await this.usage(user);
    const over: string[] = [];
    const numbers: Record<string, unknown> = {};
    if (quota.maxApps !== undefined && (delta.apps ?? 0) > 0 && usage.apps + (delta.apps ?? 0) > quota.maxApps) {
      over.push(`apps: ${usage.apps + (delta.apps ?? 0)} would exceed the limit of ${quota.maxApps}`);
      numbers.apps = { limit: quota.maxApps, used: usage.apps, requested: delta.apps };
    }
    if (quota.cpu !== undefined && (delta.cpuMillis ?? 0) > 0) {
      const limit = parseCpuMillis(quota.cpu);
      const total = usage.cpuMillis + (delta.cpuMillis ?? 0);
      if (total > limit) {
        over.push(
          `cpu: ${formatCpu(total)} would exceed the limit of ${quota.cpu} (in use ${formatCpu(usage.cpuMillis)})`,
        );
        numbers.cpu = {
          limit: quota.cpu,
          used: formatCpu(usage.cpuMillis),
          requested: formatCpu(delta.cpuMillis ?? 0),
        };
      }
    }
    if (quota.memory !== undefined && (delta.memoryBytes ?? 0) > 0) {
      const limit = parseMemoryBytes(quota.memory);
      const total = usage.memoryBytes + (delta.memoryBytes ?? 0);
      if (total > limit) {
        over.push(
          `memory: ${formatMemory(total)} would exceed the limit of ${quota.memory} (in use ${formatMemory(usage.memoryBytes)})`,
        );
        numbers.memory = {
          limit: quota.memory,
          used: formatMemory(usage.memoryBytes),
          requested: formatMemory(delta.memoryBytes ?? 0),
        };
      }
    }
    if (over.length > 0) {
      const which = stored ? 'quota' : 'default quota';
      throw new ForbiddenError(`${which} of ${user} exceeded: ${over.join('; ')}`, { extensions: { quota: numbers } });
    }
    return guardOp;
  }
}
