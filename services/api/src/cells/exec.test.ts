import { describe, expect, it } from 'vitest';
import { EXEC_PATH, exitCodeOf } from './exec.ts';

describe('exitCodeOf', () => {
  it('reads 0 from success and the code from NonZeroExitCode', () => {
    expect(exitCodeOf({ status: 'Success' })).toBe(0);
    expect(
      exitCodeOf({
        status: 'Failure',
        reason: 'NonZeroExitCode',
        details: { causes: [{ reason: 'ExitCode', message: '42' }] },
      }),
    ).toBe(42);
  });

  it('is null when the command never ran', () => {
    expect(exitCodeOf({ status: 'Failure', reason: 'InternalError', message: 'executable file not found' })).toBe(null);
  });
});

describe('EXEC_PATH', () => {
  it('matches the exec route only', () => {
    expect(EXEC_PATH.exec('/api/v1/apps/shop/instances/shop-v1-abc-12345/exec')?.slice(1)).toEqual([
      'shop',
      'shop-v1-abc-12345',
    ]);
    expect(EXEC_PATH.test('/api/v1/apps/shop/instances')).toBe(false);
    expect(EXEC_PATH.test('/api/v1/apps/shop/instances/../exec')).toBe(false);
  });
});
