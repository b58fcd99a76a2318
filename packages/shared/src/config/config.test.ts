import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { envDuration, parseDuration } from './index.ts';

describe('parseDuration', () => {
  it('reads every unit into milliseconds', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration(' 7d ')).toBe(7 * 86_400_000);
  });

  it('answers undefined for what is not a duration', () => {
    for (const text of ['', '30', 's', '-1s', '1w', '1 s', 'ten s']) expect(parseDuration(text)).toBeUndefined();
  });
});

describe('envDuration', () => {
  const schema = z.object({ TIMEOUT: envDuration('30s') });

  it('takes the default when the variable is unset or empty', () => {
    expect(schema.parse({}).TIMEOUT).toBe(30_000);
    expect(schema.parse({ TIMEOUT: '' }).TIMEOUT).toBe(30_000);
  });

  it('names the expected form when the value is not a duration', () => {
    const r = schema.safeParse({ TIMEOUT: '30' });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.message).toBe('expected a duration like 500ms, 30s, 5m, 1h (got "30")');
  });
});
