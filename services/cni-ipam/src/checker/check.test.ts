import { describe, expect, it } from 'vitest';
import { type CheckReport, type Leak, LeakTracker } from './check.ts';

const leak = (ip: string, handle = `net.${ip}.eth0`): Leak => ({
  ip,
  block: '198.18.0.0/28',
  pool: '198.18.0.0/16',
  node: 'n1',
  handle,
  network: 'net',
  containerId: ip,
  ifName: 'eth0',
  namespace: 'ns',
  pod: 'p',
  allocatedAt: '2026-01-01T00:00:00Z',
  reason: 'pod ns/p does not exist',
});

const report = (at: string, leaked: Leak[]): CheckReport => ({
  cell: 'cell-a',
  checkedAt: at,
  allocations: leaked.length,
  pods: 0,
  leaked,
  unknown: [],
  duplicates: [],
});

describe('automatic release (Calico’s lesson)', () => {
  it('confirms a leak only when two checks a grace apart both saw it, with the same holder', () => {
    const t = new LeakTracker(10 * 60_000);
    expect(t.observe(report('2026-01-01T00:00:00Z', [leak('198.18.0.2')]))).toEqual([]);
    expect(t.observe(report('2026-01-01T00:05:00Z', [leak('198.18.0.2')]))).toEqual([]); // too soon
    expect(t.observe(report('2026-01-01T00:10:00Z', [leak('198.18.0.2')])).map((l) => l.ip)).toEqual(['198.18.0.2']);
  });

  it('starts over when a leak disappears in between, or the address changed hands', () => {
    const t = new LeakTracker(60_000);
    t.observe(report('2026-01-01T00:00:00Z', [leak('198.18.0.3')]));
    t.observe(report('2026-01-01T00:00:30Z', [])); // seen fine once: forget
    expect(t.observe(report('2026-01-01T00:02:00Z', [leak('198.18.0.3')]))).toEqual([]);
    t.observe(report('2026-01-01T00:03:00Z', [leak('198.18.0.3', 'net.other.eth0')])); // a new holder
    expect(t.observe(report('2026-01-01T00:03:30Z', [leak('198.18.0.3', 'net.other.eth0')]))).toEqual([]);
  });
});
