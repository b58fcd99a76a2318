import { createLogger } from '@berth/shared/logging';
import { describe, expect, it } from 'vitest';
import type { LuaStats } from '../nginx/control-client.ts';
import { parseWindow, RequestWindow } from './request-window.ts';

/** Lua's counters for app `shop`, version `v1`, as GET /stats answers them. */
function lua(ok: number, errors: number): LuaStats {
  return {
    apps: {
      shop: {
        v1: {
          requests: ok + errors,
          status: { '2xx': ok, '3xx': 0, '4xx': 0, '5xx': errors },
          upstreamLatencySum: 0,
          upstreamLatencyCount: 0,
        },
      },
    },
    free: {},
  };
}

function fixture() {
  const state = { now: 1_000_000, boot: 'a', stats: lua(0, 0) };
  const window = new RequestWindow({
    read: async () => ({ boot: state.boot, stats: state.stats }),
    logger: createLogger({ service: 'test', level: 'silent' }),
    keepMs: 60_000,
    now: () => state.now,
  });
  return { state, window };
}

describe('RequestWindow', () => {
  it('counts the requests since the snapshot at the start of the window', async () => {
    const { state, window } = fixture();
    state.stats = lua(100, 0);
    await window.snapshot();
    state.now += 10_000;
    state.stats = lua(130, 5);
    await window.snapshot();
    state.now += 10_000;
    state.stats = lua(150, 7);
    const last10s = await window.requests(10_000);
    expect(last10s.apps.shop?.v1).toEqual({ total: 22, '2xx': 20, '3xx': 0, '4xx': 0, '5xx': 2 });
    expect(last10s.from).toBe(new Date(1_010_000).toISOString());
    const last20s = await window.requests(20_000);
    expect(last20s.apps.shop?.v1?.total).toBe(57);
  });

  it('counts since nginx started when the window is longer than the snapshots kept', async () => {
    const { state, window } = fixture();
    state.stats = lua(100, 0);
    await window.snapshot();
    state.now += 10_000;
    const answer = await window.requests(3_600_000);
    expect(answer.from).toBeNull();
    expect(answer.apps.shop?.v1?.total).toBe(100);
  });

  it('keeps counting across an nginx restart (counters that went down, or a new boot id)', async () => {
    const { state, window } = fixture();
    state.stats = lua(100, 0);
    await window.snapshot();
    state.now += 10_000;
    state.stats = lua(3, 0); // restarted: down
    await window.snapshot();
    state.now += 10_000;
    state.boot = 'b';
    state.stats = lua(8, 0); // restarted again: up, but a new boot id
    expect((await window.requests(20_000)).apps.shop?.v1?.total).toBe(11);
  });

  it('forgets snapshots older than it keeps, and narrows to one app', async () => {
    const { state, window } = fixture();
    for (let i = 1; i <= 10; i++) {
      state.stats = lua(i * 10, 0);
      await window.snapshot();
      state.now += 10_000;
    }
    // Only the last 60 s of snapshots are kept: a 5 min window reaches past them, so it counts
    // since nginx started; a 30 s one starts at a snapshot still kept.
    const answer = await window.requests(300_000, 'shop');
    expect(answer.from).toBeNull();
    expect(answer.apps.shop?.v1?.total).toBe(100);
    expect((await window.requests(30_000)).apps.shop?.v1?.total).toBe(20);
    expect((await window.requests(300_000, 'other')).apps).toEqual({});
  });

  it('parses windows', () => {
    expect(parseWindow('15m')).toBe(900_000);
    expect(parseWindow('30s')).toBe(30_000);
    expect(parseWindow('2h')).toBe(7_200_000);
    expect(parseWindow('15')).toBeUndefined();
    expect(parseWindow('1d')).toBeUndefined();
  });
});
