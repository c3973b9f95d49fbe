// The fuzzer (`npm run fuzz`, fuzz/): a few seeds through the real runner, and the
// runner's own failure reporting (a child that crashes or hangs must be reported with
// its seed, the signal and the calls that led there).
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { kvmUnavailable, titleWithReason } from '../lib/testing/index';
import { runNode, type ChildResult } from './helpers';
import { runs, slowdown } from './runs';

// Inside an emulated test kernel everything is about ten times slower: fewer calls,
// one seed at a time, and a per-seed limit to match.
const CALLS = runs(300);
const LIMITS = ['--timeout', String(60 * slowdown), '--jobs', slowdown > 1 ? '1' : '2'];

const root = path.join(__dirname, '..');
const noKvm = kvmUnavailable();

function fuzz(args: string[], timeoutMs = 120_000): Promise<ChildResult> {
  return runNode([path.join(root, 'fuzz', 'index.mjs'), ...args], timeoutMs);
}

function summary(out: string): Record<string, unknown> {
  return JSON.parse(out.trim().split('\n').pop()!);
}

describe.skipIf(!!noKvm)(titleWithReason('npm run fuzz', noKvm), () => {
  test('seeds run clean: every call ok or a typed error, nothing left behind', async () => {
    const r = await fuzz(['--seeds', '1..3', '--calls', String(CALLS), ...LIMITS, '--json']);
    expect(r.out).not.toMatch(/FAIL/);
    expect(r.code).toBe(0);
    const s = summary(r.out);
    expect(s).toMatchObject({ seeds: 3, failures: 0 });
    expect(s['calls']).toBeGreaterThanOrEqual(3 * CALLS);
    expect(s['ok']).toBeGreaterThan(0);
    expect(s['typed']).toBeGreaterThan(0);
  });

  test('--gc-drop: setups dropped without close are freed by the GC and finalizers', async () => {
    const r = await fuzz(['--seeds', '5..6', '--calls', String(runs(200)), '--gc-drop', ...LIMITS, '--json']);
    expect(r.out).not.toMatch(/FAIL/);
    expect(r.code).toBe(0);
    const s = summary(r.out);
    expect(s).toMatchObject({ seeds: 2, failures: 0 });
    expect(s['dropped']).toBeGreaterThan(0);
  });

  test('a child killed by SIGSEGV is a failure naming the seed, the signal, the last calls and how to reproduce', async () => {
    const r = await fuzz(['--seed', '7', '--calls', '100', '--crash-at', '40', '--trace', '5']);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/FAIL seed 7: crash: killed by SIGSEGV/);
    expect(r.out).toMatch(/^ {4}#40 /m); // the call it died in is the last one shown
    expect(r.out).not.toMatch(/^ {4}#41 /m);
    expect(r.out).toMatch(/reproduce: npm run fuzz -- --seed 7 --calls 100/);
    expect(r.out).toMatch(/1 seeds \(7\), .* 1 failures \(seeds 7\)/);
  });

  test('a child that hangs is killed at the per-seed limit and reported as a hang', async () => {
    const r = await fuzz(['--seed', '8', '--calls', '100', '--hang-at', '10', '--timeout', String(5 * slowdown)]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/FAIL seed 8: hang: still running after the per-seed limit/);
    expect(r.out).toMatch(/^ {4}#10 /m);
  });

  test('bad options are refused', async () => {
    const r = await fuzz(['--seeds', '5..1']);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/A\.\.B/);
  });
});
