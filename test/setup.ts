// Per test file: fast-check's default number of cases follows runs() (fewer inside
// an emulated test kernel).
import fc from 'fast-check';
import { runs } from './runs';

fc.configureGlobal({ numRuns: runs(100) });

// Under `npm run test:asan` (scripts/test-asan.mjs): the addon this process runs must be
// the sanitizer build; after the file, LeakSanitizer checks for blocks nothing points to
// any more (vitest ends its workers with SIGTERM, which skips the check at exit). The
// runner reads the reports and counts those allocated from the addon.
if (process.env['GMEM_ASAN']) {
  const { readFileSync } = await import('node:fs');
  const { afterAll } = await import('vitest');
  const { native } = await import('../lib/native');
  const maps = readFileSync('/proc/self/maps', 'utf8');
  const want = process.env['GMEM_ADDON_PATH'];
  if (!want || !maps.includes(want) || !/\/libasan\.so/.test(maps) || !native.sanitizerLeakCheck) {
    throw new Error(`GMEM_ASAN is set but this process did not load the sanitizer addon (${want}) with libasan`);
  }
  afterAll(() => {
    native.sanitizerLeakCheck!();
  });
}
