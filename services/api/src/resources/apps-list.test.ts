import { BerthKeys } from '@berth/shared/keys';
import { type KeyValue, MemoryBackend, type RangeOptions, Store } from '@berth/shared/store';
import { describe, expect, it } from 'vitest';
import { memberApps } from './apps.ts';

const keys = new BerthKeys('/berth');
const at = '2026-01-01T00:00:00.000Z';

/** A backend that records what it is asked for. */
class RecordingBackend extends MemoryBackend {
  readonly ranges: { prefix: string; keysOnly: boolean }[] = [];
  readonly gets: string[] = [];
  override range(prefix: string, options?: RangeOptions): Promise<KeyValue[]> {
    this.ranges.push({ prefix, keysOnly: options?.keysOnly === true });
    return super.range(prefix, options);
  }
  override get(key: string): Promise<KeyValue | undefined> {
    this.gets.push(key);
    return super.get(key);
  }
}

async function seed(store: Store, apps: number): Promise<void> {
  const ops = [];
  for (let i = 0; i < apps; i++) {
    const name = `app-${String(i).padStart(3, '0')}`;
    const owner = i % 10 === 0 ? 'dev' : 'other';
    ops.push(
      {
        op: 'put' as const,
        key: keys.app(name),
        value: {
          name,
          region: 'local',
          image: 'team/shop',
          healthCheck: { port: 8080 },
          ports: [{ name: 'http', port: 8080 }],
          owner,
          createdAt: at,
          updatedAt: at,
        },
      },
      {
        op: 'put' as const,
        key: keys.member(name, owner),
        value: { user: owner, role: 'Owner', addedAt: at, addedBy: owner },
      },
      { op: 'put' as const, key: keys.version(name, 'v1'), value: { big: 'x'.repeat(1000) } },
    );
  }
  // dev is also a Guest of one app someone else owns.
  ops.push({
    op: 'put' as const,
    key: keys.member('app-005', 'dev'),
    value: { user: 'dev', role: 'Guest', addedAt: at, addedBy: 'other' },
  });
  for (let i = 0; i < ops.length; i += 100) await store.commit(ops.slice(i, i + 100));
}

describe('listing apps for a member', () => {
  it("reads membership keys only, then just the page's apps", async () => {
    const backend = new RecordingBackend();
    const store = new Store(backend);
    await seed(store, 200);
    backend.ranges.length = 0;
    backend.gets.length = 0;

    const first = await memberApps(store, keys, 'dev', 5, undefined);
    expect(first.items.map((a) => [a.name, a.role])).toEqual([
      ['app-000', 'Owner'],
      ['app-005', 'Guest'],
      ['app-010', 'Owner'],
      ['app-020', 'Owner'],
      ['app-030', 'Owner'],
    ]);
    expect(first.next).toBe('app-030');
    // Every range is keys-only; the values read are those of the page's apps and memberships.
    expect(backend.ranges).toEqual([{ prefix: keys.apps(), keysOnly: true }]);
    expect(backend.gets.sort()).toEqual(
      first.items.flatMap((a) => [keys.app(a.name), keys.member(a.name, 'dev')]).sort(),
    );

    const rest = await memberApps(store, keys, 'dev', 100, first.next ?? undefined);
    expect(rest.items.map((a) => a.name)).toEqual(
      [
        '040',
        '050',
        '060',
        '070',
        '080',
        '090',
        '100',
        '110',
        '120',
        '130',
        '140',
        '150',
        '160',
        '170',
        '180',
        '190',
      ].map((n) => `app-${n}`),
    );
    expect(rest.next).toBeNull();
    expect(await memberApps(store, keys, 'nobody', 10, undefined)).toEqual({ items: [], next: null });
  });
});
