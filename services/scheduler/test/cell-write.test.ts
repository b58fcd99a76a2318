/**
 * The scheduler's direct server-side apply (src/apply/keep-alive.ts) against a real cell: objects
 * land with Berth's field manager, and an error answer carries the API server's status and message.
 */

import { FIELD_MANAGER } from '@berth/shared/model';
import { uniqueId } from '@berth/shared/testing';
import { afterAll, describe, expect, it } from 'vitest';
import { CellWriteClient, CellWriteError } from '../src/apply/keep-alive.ts';
import { cells } from './harness.ts';

const cell = cells['cell-b'];
const namespace = `apply-${uniqueId(6)}`;
const client = new CellWriteClient(cell?.kubeConfig ?? (undefined as never));

afterAll(async () => {
  await cell?.core.deleteNamespace({ name: namespace }).catch(() => undefined);
  client.close();
});

describe('server-side apply on kept-alive connections', () => {
  it('applies a Namespace, a Service and a Deployment as Berth, and applies again without a change', async () => {
    await client.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } }, FIELD_MANAGER);
    await client.apply(
      {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'shop', namespace },
        spec: { selector: { app: 'shop' }, ports: [{ port: 8080 }] },
      } as never,
      FIELD_MANAGER,
    );
    const deployment = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'shop-v1', namespace },
      spec: {
        replicas: 1,
        selector: { matchLabels: { app: 'shop' } },
        template: {
          metadata: { labels: { app: 'shop' } },
          spec: { containers: [{ name: 'app', image: 'registry.local/shop:v1' }] },
        },
      },
    };
    await client.apply(deployment as never, FIELD_MANAGER);
    const read = await cell?.apps.readNamespacedDeployment({ name: 'shop-v1', namespace });
    expect(read?.spec?.replicas).toBe(1);
    expect(read?.metadata?.managedFields?.map((f) => [f.manager, f.operation])).toContainEqual([
      FIELD_MANAGER,
      'Apply',
    ]);
    const generation = read?.metadata?.generation;
    await client.apply(deployment as never, FIELD_MANAGER);
    expect((await cell?.apps.readNamespacedDeployment({ name: 'shop-v1', namespace }))?.metadata?.generation).toBe(
      generation,
    );
    const svc = await cell?.core.readNamespacedService({ name: 'shop', namespace });
    expect(svc?.spec?.ports?.[0]?.port).toBe(8080);
  });

  it('an object the API server refuses fails with its status and message', async () => {
    const bad = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'shop-bad', namespace },
      spec: { replicas: -1, selector: { matchLabels: { app: 'x' } }, template: { metadata: { labels: { app: 'y' } } } },
    };
    const err = await client.apply(bad as never, FIELD_MANAGER).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CellWriteError);
    expect((err as CellWriteError).statusCode).toBe(422);
    expect((err as Error).message).toMatch(/shop-bad.*422.*replicas/s);
  });
});
