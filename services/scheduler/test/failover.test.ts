/**
 * Failover when a cell becomes unreachable: the scheduler reaches cell-b through a proxy the test
 * can take down, with a short grace and hold. A blink shorter than the grace moves nothing; a
 * scale-up during an outage lands only on the healthy cell; past the grace the replicas move to
 * cell-a with a minCells shortfall reported; when cell-b is back and has stayed back for the hold,
 * the replicas spread back without the app dropping below its ready count.
 */

import type { CuttableProxy } from '@berth/shared/kube/testing';
import { EventSubjects, NatsClient, readEvents } from '@berth/shared/nats';
import { regionCredentials, uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  appRecord,
  availableIn,
  cellBBehindProxy,
  deleteNamespaces,
  env,
  placement,
  putApp,
  sampleAvailable,
  scale,
  startScheduler,
  versionRecord,
  type World,
  waitAvailable,
  world,
} from './harness.ts';

// The grace leaves room for the informers' reconnect after a 2 s blink on a loaded machine (their
// backoff doubles from 0.5 s): a blink must end, as the scheduler sees it, well inside the grace.
const GRACE_MS = 10_000;
const BLINK_MS = 2000;
const HOLD_MS = 3000;

let w: World;
let proxy: CuttableProxy;
let scheduler: Awaited<ReturnType<typeof startScheduler>>;
let nats: NatsClient;
const app = `fail-${uniqueId(6)}`;

beforeAll(async () => {
  w = await world();
  const cut = await cellBBehindProxy();
  proxy = cut.proxy;
  scheduler = await startScheduler(w, {
    KUBECONFIG_DIR: cut.kubeconfigDir,
    FAILOVER_GRACE: `${GRACE_MS}ms`,
    RECOVERY_HOLD: `${HOLD_MS}ms`,
  });
  nats = await NatsClient.connect({
    servers: [env.NATS_URL ?? ''],
    name: 'failover-test',
    ...regionCredentials().nats,
  });
});

afterAll(async () => {
  await scheduler?.service.stop();
  await proxy?.close();
  await nats?.drain();
  await deleteNamespaces(app);
  await w?.close();
});

const health = (cell: string) => scheduler.service.controller.cellHealth(cell);

describe('failover of an unreachable cell', () => {
  it('a blink moves nothing; an outage past the grace moves replicas to the other cell; the return spreads them back without dropping below the ready count', {
    timeout: 240_000,
  }, async () => {
    await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 4 })]);
    await waitAvailable(app, 'v1', { 'cell-a': 2, 'cell-b': 2 });
    const first = await placement(w, app, 'v1');

    // A blink shorter than the grace: suspect, then ok again, and the placement untouched.
    proxy.takeDown();
    await waitFor(() => health('cell-b') === 'suspect', { timeoutMs: 10_000, message: 'cell-b suspect' });
    const downFor = Date.now();
    await new Promise((r) => setTimeout(r, BLINK_MS));
    proxy.up();
    await waitFor(() => health('cell-b') === 'ok', { timeoutMs: 15_000, message: 'cell-b ok again' });
    expect(Date.now() - downFor).toBeLessThan(GRACE_MS + 5000);
    await scheduler.service.controller.idle();
    const afterBlink = await placement(w, app, 'v1');
    expect(afterBlink?.cells).toEqual({ 'cell-a': 2, 'cell-b': 2 });
    expect(afterBlink?.generation).toBe(first?.generation);

    // From here on, the app must never have fewer than its 4 ready replicas.
    let lowest = Number.POSITIVE_INFINITY;
    let lowestAt = '';
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        // A failed read is no sample (it would count a running Deployment as none).
        const got = await sampleAvailable(app, ['v1']);
        if (got && got.total < lowest) {
          lowest = got.total;
          lowestAt = `${new Date().toISOString()} ${JSON.stringify(got.seen)} placement ${JSON.stringify((await placement(w, app, 'v1'))?.cells)}`;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    })();

    // An outage: while within the grace, a scale-up goes to the healthy cell only.
    proxy.takeDown();
    await waitFor(() => health('cell-b') === 'suspect', { timeoutMs: 10_000, message: 'cell-b suspect' });
    await scale(w, app, 'v1', 6);
    await waitFor(async () => (await placement(w, app, 'v1'))?.desired === 6, { message: 'scale-up placed' });
    const duringOutage = await placement(w, app, 'v1');
    if (health('cell-b') === 'suspect') expect(duringOutage?.cells).toEqual({ 'cell-a': 4, 'cell-b': 2 });

    // Past the grace: cell-b is out, everything runs in cell-a, and the shortfall is reported.
    await waitFor(() => health('cell-b') === 'out', { timeoutMs: GRACE_MS + 10_000, message: 'cell-b out' });
    await waitFor(async () => JSON.stringify((await placement(w, app, 'v1'))?.cells) === '{"cell-a":6}', {
      message: 'replicas placed in cell-a',
    });
    const shortfall = (await placement(w, app, 'v1'))?.conditions.find((c) => c.type === 'MinCellsShortfall');
    expect(shortfall).toMatchObject({ status: 'True', reason: 'TooFewActiveCells' });
    await waitFor(async () => (await availableIn(app, 'v1'))['cell-a'] === 6, {
      timeoutMs: 90_000,
      intervalMs: 250,
      message: '6 available in cell-a',
    });
    const feed = await readEvents(nats.js, new EventSubjects(w.subjectRoot), {
      filter: new EventSubjects(w.subjectRoot).resource(app),
    });
    expect(feed.map((e) => `${e.event.kind}.${e.event.action}`)).toContain('version.min-cells-shortfall');

    // Back: suspect for the hold (nothing moves), then the replicas spread back.
    proxy.up();
    await waitFor(() => health('cell-b') !== 'out', { timeoutMs: 20_000, message: 'cell-b seen again' });
    await waitFor(async () => JSON.stringify((await placement(w, app, 'v1'))?.cells) === '{"cell-a":3,"cell-b":3}', {
      timeoutMs: HOLD_MS + 20_000,
      message: 'replicas spread back',
    });
    await waitAvailable(app, 'v1', { 'cell-a': 3, 'cell-b': 3 });
    watching = false;
    await watcher;
    expect(lowest, `lowest sample: ${lowestAt}`).toBeGreaterThanOrEqual(4);
    const healed = (await placement(w, app, 'v1'))?.conditions.find((c) => c.type === 'MinCellsShortfall');
    expect(healed?.status).toBe('False');
  });
});
