/** What every route module needs: the store, keys, auth, events, writes. */
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import type { EventsComponent } from '@berth/shared/nats';
import type { Store } from '@berth/shared/store';
import type { AuthService } from '../auth/service.ts';
import type { Mutations } from '../http/mutation.ts';
import type { StreamLimits } from '../http/stream-limits.ts';

export type ApiContext = {
  store: Store;
  keys: BerthKeys;
  auth: AuthService;
  logger: Logger;
  region: string;
  /** Events: recorded with each change (outbox), read back for feeds. */
  events: EventsComponent;
  /** Every write goes through here (../http/mutation.ts). */
  mutations: Mutations;
  /** The quota of a non-admin user who has none of their own (DEFAULT_QUOTA_*; ./quotas.ts). */
  defaultQuota?: DefaultQuota;
  /** Long-lived streams per user (MAX_FOLLOWS_PER_USER, MAX_EXEC_PER_USER); left out: not limited. */
  streams?: StreamLimits;
};

/** Limits left out are not limited. */
export type DefaultQuota = { maxApps?: number | undefined; cpu?: string | undefined; memory?: string | undefined };

export function now(): string {
  return new Date().toISOString();
}
