/** The apply plan's decisions on plain data: spread, safe switches, what is left alone. */
import { type App, deploymentName, LABELS, type Version } from '@berth/shared/model';
import { robotKeySchema } from '@berth/shared/registry';
import type { V1Deployment, V1Secret } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import type { AppSecretSet } from '../apply/app-secrets.ts';
import { appSecretFor } from '../apply/manifests.ts';
import { CellPullCredentials } from '../apply/pull-secret.ts';
import { type CellView, planApp, type Target } from './app-plan.ts';

const app = {
  name: 'shop',
  region: 'r1',
  image: 'team/shop',
  minCells: 2,
  ports: [],
  owner: 'alice',
} as unknown as App;
function version(name: string, replicas: number): Version {
  return {
    app: 'shop',
    name,
    number: Number(name.slice(1)),
    imageTag: name,
    replicas,
    cpu: '100m',
    memory: '64Mi',
    env: {},
    ports: [{ name: 'http', port: 8080 }],
    healthCheck: { path: '/healthz', port: 8080 },
    command: [],
  } as unknown as Version;
}

/** A Deployment as the informer shows it: `available` of `replicas` up, observed. */
function running(v: string, replicas: number, available = replicas): V1Deployment {
  return {
    metadata: { name: deploymentName('shop', v), namespace: 'shop', generation: 1, labels: { [LABELS.version]: v } },
    spec: { replicas } as V1Deployment['spec'],
    status: { availableReplicas: available, observedGeneration: 1 },
  };
}

function cell(name: string, deployments: V1Deployment[] = [], secrets: V1Secret[] = []): CellView {
  return {
    name,
    deployments: {
      get: (n) => deployments.find((d) => d.metadata?.name === n),
      list: () => deployments,
    },
    namespaces: { get: () => undefined },
    services: { get: () => undefined },
    secrets: { get: (n, ns) => secrets.find((s) => s.metadata?.name === n && s.metadata?.namespace === ns) },
    networkPolicies: { get: () => undefined },
    lbSources: () => lbSources,
  };
}
const lbSources = ['198.18.0.1/32'];

const manifests = { registry: 'registry.local', preStopDelaySeconds: 5 };
const plan = (
  targets: Target[],
  cells: CellView[],
  options: { unplaced?: string[]; writable?: string[]; manifests?: typeof manifests; secrets?: AppSecretSet } = {},
) =>
  planApp({
    app,
    targets,
    unplaced: new Set(options.unplaced ?? []),
    cells,
    writable: new Set(options.writable ?? cells.map((c) => c.name)),
    manifests: options.manifests ?? manifests,
    secrets: options.secrets,
  });
const replicasIn = (p: ReturnType<typeof plan>, c: string) =>
  Object.fromEntries(
    (p.cells.find((x) => x.cell === c)?.deployments ?? []).map((d) => [
      d.desired.metadata?.name,
      (d.desired as V1Deployment).spec?.replicas,
    ]),
  );

describe('the apply plan', () => {
  it('spreads a new version as placed, Namespace and Service first in every cell', () => {
    const p = plan(
      [{ version: version('v1', 4), cells: { 'cell-a': 2, 'cell-b': 2 } }],
      [cell('cell-a'), cell('cell-b')],
    );
    expect(p.cells.map((c) => c.cell)).toEqual(['cell-a', 'cell-b']);
    for (const c of p.cells)
      expect(c.first.map((i) => i.desired.kind)).toEqual(['Namespace', 'NetworkPolicy', 'NetworkPolicy', 'Service']);
    expect(replicasIn(p, 'cell-a')).toEqual({ [deploymentName('shop', 'v1')]: 2 });
    expect(replicasIn(p, 'cell-b')).toEqual({ [deploymentName('shop', 'v1')]: 2 });
  });

  it('a rollback brings the target up first and takes the other down only once the target is available', () => {
    const targets: Target[] = [
      { version: version('v1', 2), cells: { 'cell-a': 2 } },
      { version: version('v2', 0), cells: {} },
    ];
    // v2 runs 2; v1 comes back, not available yet: v2 stays as it is.
    const coming = plan(targets, [cell('cell-a', [running('v2', 2), running('v1', 2, 0)])]);
    expect(coming.settled).toBe(false);
    expect(replicasIn(coming, 'cell-a')).toEqual({
      [deploymentName('shop', 'v1')]: 2,
      [deploymentName('shop', 'v2')]: 2,
    });
    expect(coming.cells[0]?.delete).toEqual([]);
    // v1 available: v2 goes.
    const done = plan(targets, [cell('cell-a', [running('v2', 2), running('v1', 2)])]);
    expect(done.settled).toBe(true);
    expect(done.cells[0]?.delete.map((d) => d.metadata?.name)).toEqual([deploymentName('shop', 'v2')]);
  });

  it('scales down in a cell only once what comes up elsewhere is available', () => {
    const targets: Target[] = [{ version: version('v1', 4), cells: { 'cell-a': 4, 'cell-b': 0 } }];
    const moving = plan(targets, [cell('cell-a', [running('v1', 4, 2)]), cell('cell-b', [running('v1', 2)])]);
    expect(replicasIn(moving, 'cell-b')).toEqual({ [deploymentName('shop', 'v1')]: 2 });
    const moved = plan(targets, [cell('cell-a', [running('v1', 4)]), cell('cell-b', [running('v1', 2)])]);
    expect(replicasIn(moved, 'cell-b')).toEqual({});
    expect(moved.cells.find((c) => c.cell === 'cell-b')?.delete).toHaveLength(1);
  });

  it('leaves a version the placer has not placed yet as it runs; a deleted version goes at once', () => {
    const targets: Target[] = [{ version: version('v1', 2), cells: { 'cell-a': 2 } }];
    const cells = [cell('cell-a', [running('v1', 2, 0), running('v2', 3), running('v0', 1)])];
    const p = plan(targets, cells, { unplaced: ['v2'] });
    expect(p.cells[0]?.delete.map((d) => d.metadata?.name)).toEqual([deploymentName('shop', 'v0')]);
  });

  it('writes nothing to a cell it may not write (unreachable, suspect), which still counts for settling', () => {
    const targets: Target[] = [{ version: version('v1', 4), cells: { 'cell-a': 2, 'cell-b': 2 } }];
    const p = plan(targets, [cell('cell-a', [running('v1', 2)]), cell('cell-b', [running('v1', 2, 1)])], {
      writable: ['cell-a'],
    });
    expect(p.cells.map((c) => c.cell)).toEqual(['cell-a']);
    expect(p.settled).toBe(false);
  });

  it('plans nothing for a cell that runs none of the app and is given none of it', () => {
    const p = plan([{ version: version('v1', 2), cells: { 'cell-a': 2 } }], [cell('cell-a'), cell('cell-b')]);
    expect(p.cells.map((c) => c.cell)).toEqual(['cell-a']);
  });

  it('with the cells key, applies the pull Secret after the Namespace and before the Deployments', () => {
    const pulling = {
      ...manifests,
      pull: new CellPullCredentials({
        cellsKey: robotKeySchema.parse('5a'.repeat(32)),
        region: 'r1',
        registry: 'registry.local',
      }),
    };
    const inCell: V1Secret = { metadata: { name: 'berth-registry', namespace: 'shop' } };
    const p = plan(
      [{ version: version('v1', 2), cells: { 'cell-a': 1, 'cell-b': 1 } }],
      [cell('cell-a', [], [inCell]), cell('cell-b')],
      { manifests: pulling },
    );
    for (const c of p.cells) {
      expect(c.first.map((i) => i.desired.kind)).toEqual([
        'Namespace',
        'Secret',
        'NetworkPolicy',
        'NetworkPolicy',
        'Service',
      ]);
      expect(c.first[1]?.desired.metadata).toMatchObject({ name: 'berth-registry', namespace: 'shop' });
      const dep = c.deployments[0]?.desired as V1Deployment;
      expect(dep.spec?.template.spec?.imagePullSecrets).toEqual([{ name: 'berth-registry' }]);
    }
    // The informer's copy is what the writer compares with.
    expect(p.cells[0]?.first[1]?.current).toBe(inCell);
    expect(p.cells[1]?.first[1]?.current).toBeUndefined();
  });
});

describe("the app's secrets", () => {
  const set = (data: Record<string, string>, fingerprints: Record<string, string>, failed: string[] = []) =>
    ({ data, fingerprints, failed, errors: {}, since: new Date(0).toISOString() }) as AppSecretSet;
  const b64 = (v: string) => Buffer.from(v).toString('base64');
  const firstDeployment = (p: ReturnType<typeof plan>) => p.cells[0]?.deployments[0]?.desired as V1Deployment;
  const refsOf = (p: ReturnType<typeof plan>) => firstDeployment(p).spec?.template.spec?.containers[0]?.env ?? [];
  const target = [{ version: version('v1', 1), cells: { 'cell-a': 1 } }];

  it('go into a Secret after the Namespace and before the Deployments, which reference each one', () => {
    const p = plan(target, [cell('cell-a')], {
      secrets: set({ DB_URL: b64('postgres://x') }, { DB_URL: 'a'.repeat(16) }),
    });
    const first = p.cells[0]?.first ?? [];
    expect(first.map((i) => i.desired.kind)).toEqual([
      'Namespace',
      'Secret',
      'NetworkPolicy',
      'NetworkPolicy',
      'Service',
    ]);
    expect(first[1]?.desired).toMatchObject({ type: 'Opaque', data: { DB_URL: b64('postgres://x') } });
    expect(refsOf(p)).toEqual([
      { name: 'DB_URL', valueFrom: { secretKeyRef: { name: 'berth-app-secrets', key: 'DB_URL' } } },
    ]);
  });

  it('that do not all open leave the cell its Secret, and the pods reference what it holds', () => {
    const before = set({ DB_URL: b64('old') }, { DB_URL: 'a'.repeat(16) });
    const inCell = appSecretFor(app, before);
    const broken = set({ API_KEY: b64('k') }, { DB_URL: 'b'.repeat(16), API_KEY: 'c'.repeat(16) }, ['DB_URL']);
    const p = plan(target, [cell('cell-a', [], [inCell])], { secrets: broken });
    expect(p.cells[0]?.first.map((i) => i.desired.kind)).not.toContain('Secret');
    expect(refsOf(p).map((e) => e.name)).toEqual(['DB_URL']);
    // The same pod template as with the set that put the Secret there: nothing rolls.
    const ok = plan(target, [cell('cell-a')], { secrets: before });
    const annotation = (q: ReturnType<typeof plan>) => firstDeployment(q).spec?.template.metadata?.annotations;
    expect(annotation(p)).toEqual(annotation(ok));
  });

  it('all deleted empty the Secret the cell has, and the pods reference none', () => {
    const inCell = appSecretFor(app, set({ DB_URL: b64('old') }, { DB_URL: 'a'.repeat(16) }));
    const p = plan(target, [cell('cell-a', [], [inCell])]);
    expect(p.cells[0]?.first[1]?.desired).toMatchObject({ kind: 'Secret', data: {} });
    expect(refsOf(p)).toEqual([]);
    // No Secret in the cell and none wanted: none written.
    expect(plan(target, [cell('cell-a')]).cells[0]?.first.map((i) => i.desired.kind)).not.toContain('Secret');
  });
});
