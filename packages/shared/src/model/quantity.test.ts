import { describe, expect, it } from 'vitest';
import { cpuQuantitySchema, memoryQuantitySchema, parseCpuMillis, parseMemoryBytes } from './index.ts';
import { formatCpu, formatMemory } from './quantity.ts';

describe('formatCpu', () => {
  it('prints whole cores without a unit and the rest in millicores', () => {
    expect(formatCpu(2000)).toBe('2');
    expect(formatCpu(1500)).toBe('1500m');
    expect(formatCpu(250)).toBe('250m');
    expect(formatCpu(0)).toBe('0');
  });

  it('rounds fractions of a millicore, which a quantity cannot hold', () => {
    expect(formatCpu(249.6)).toBe('250m');
  });

  it('parses back to the same millicores', () => {
    for (const millis of [1, 250, 999, 1000, 1001, 1500, 64_000, 123_456]) {
      const text = formatCpu(millis);
      expect(cpuQuantitySchema.safeParse(text).success).toBe(true);
      expect(parseCpuMillis(text)).toBe(millis);
    }
  });
});

describe('formatMemory', () => {
  it('uses the largest binary unit that holds the bytes exactly', () => {
    expect(formatMemory(2 ** 30)).toBe('1Gi');
    expect(formatMemory(1.5 * 2 ** 30)).toBe('1536Mi');
    expect(formatMemory(512 * 2 ** 20)).toBe('512Mi');
    expect(formatMemory(3 * 2 ** 40)).toBe('3Ti');
    expect(formatMemory(16_302_488 * 1024)).toBe('16302488Ki');
    expect(formatMemory(1000)).toBe('1000');
    expect(formatMemory(0)).toBe('0');
  });

  it('parses back to the same bytes', () => {
    for (const bytes of [1, 1000, 1024, 1536 * 2 ** 20, 2 ** 30 + 2 ** 10, 5 * 2 ** 40, 128 * 2 ** 30 + 1]) {
      const text = formatMemory(bytes);
      expect(memoryQuantitySchema.safeParse(text).success).toBe(true);
      expect(parseMemoryBytes(text)).toBe(bytes);
    }
  });
});
