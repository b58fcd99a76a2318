/**
 * Discovery against the real cells of the local region (cell-a and cell-b, a kubelet each).
 * A real scheduler (its own test harness: a unique etcd prefix and region) puts real Deployments,
 * Services and so EndpointSlices in the cells; discovery runs under the same prefix and region.
 */
import { Writable } from 'node:stream';
import { parseEnv } from '@berth/shared/config';
import { createLogger } from '@berth/shared/logging';
import { type DomainClaim, type Upstreams, upstreamsSchema } from '@berth/shared/model';
import { regionAuthEnv } from '@berth/shared/testing';
import { env, KUBECONFIG_DIR, type World } from '../../scheduler/test/harness.ts';
import { discoveryEnv } from '../src/env.ts';
import { DiscoveryService } from '../src/service.ts';

export {
  appRecord,
  CELLS,
  cellBBehindProxy,
  cells,
  deleteNamespaces,
  env,
  KUBECONFIG_DIR,
  putApp,
  scale,
  startScheduler,
  versionRecord,
  type World,
  world,
} from '../../scheduler/test/harness.ts';

export async function startDiscovery(
  w: World,
  extra: Record<string, string> = {},
): Promise<{ service: DiscoveryService; logs: () => string }> {
  let logs = '';
  const logger = createLogger({
    service: 'discovery',
    level: 'info',
    destination: new Writable({
      write(chunk, _e, done) {
        logs = (logs + chunk).slice(-50_000);
        done();
      },
    }),
  });
  const config = parseEnv(discoveryEnv, {
    HTTP_ADDR: '127.0.0.1:0',
    ETCD_ENDPOINTS: env.ETCD_ENDPOINTS,
    ...regionAuthEnv(env, ['etcd']),
    ETCD_PREFIX: w.prefix,
    BERTH_REGION: w.region,
    KUBECONFIG_DIR,
    LEADER_TTL_SECONDS: '3',
    ...extra,
  });
  const service = DiscoveryService.create(config, logger);
  await service.start();
  return { service, logs: () => logs };
}

/** Binds a domain of `app` in `group` the way the API records it (the claim is what discovery reads). */
export async function claim(w: World, domain: string, app: string, group: string): Promise<void> {
  const value: DomainClaim = { domain, app, group };
  await w.etcd.put(w.keys.domainClaim(domain)).value(JSON.stringify(value));
}

export async function unclaim(w: World, domain: string): Promise<void> {
  await w.etcd.delete().key(w.keys.domainClaim(domain));
}

export async function upstreams(w: World, group: string, app: string): Promise<Upstreams | undefined> {
  const raw = await w.etcd.get(w.keys.slbUpstream(group, app)).string();
  return raw ? upstreamsSchema.parse(JSON.parse(raw)) : undefined;
}

/** Endpoint addresses per cell of one version (cells with none left out), sorted. */
export function addressesOf(up: Upstreams | undefined, version: string): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [cell, eps] of Object.entries(up?.versions[version] ?? {})) {
    out[cell] = eps.map((e) => e.address).sort();
  }
  return out;
}

/** How many endpoints per cell one version has. */
export function countsOf(up: Upstreams | undefined, version: string): Record<string, number> {
  return Object.fromEntries(Object.entries(addressesOf(up, version)).map(([c, a]) => [c, a.length]));
}
