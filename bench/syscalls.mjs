// `npm run bench -- --syscalls`: the system calls each side makes per operation,
// counted with `strace -f -c` over a run of N and a run of 2N iterations of the op
// alone (kvm_ref --once, kvm_ref.py --once, bench/once.mjs), so set-up and start-up
// cancel out. A check that the three sides do the same kernel work.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pySource } from './refs.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Calls per syscall name from `strace -c` output. */
export function parseStraceSummary(text) {
  const calls = {};
  for (const line of text.split('\n')) {
    const t = line.trim().split(/\s+/);
    // % time, seconds, usecs/call, calls, [errors,] syscall
    if ((t.length === 5 || t.length === 6) && /^[\d.]+$/.test(t[0]) && /^\d+$/.test(t[3]) && t[t.length - 1] !== 'total')
      calls[t[t.length - 1]] = Number(t[3]);
  }
  return calls;
}

function strace(cmd, args) {
  const dir = mkdtempSync(path.join(tmpdir(), 'gmem-strace-'));
  const out = path.join(dir, 'summary');
  try {
    const r = spawnSync('strace', ['-f', '-qq', '-c', '-o', out, '--', cmd, ...args], { encoding: 'utf8', maxBuffer: 1 << 24 });
    if (r.error) throw new Error(`strace: ${r.error.message}`);
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr || r.stdout}`);
    return parseStraceSummary(readFileSync(out, 'utf8'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Syscalls per iteration of `args(n)`: the difference between 2N and N, over N. */
function perOp(cmd, args, n) {
  const a = strace(cmd, args(n));
  const b = strace(cmd, args(2 * n));
  const out = {};
  for (const name of new Set([...Object.keys(a), ...Object.keys(b)])) {
    const d = ((b[name] ?? 0) - (a[name] ?? 0)) / n;
    if (Math.abs(d) >= 0.3) out[name] = d;
  }
  return out;
}

/**
 * For each row with references: syscalls per op of C, Python and Node.
 * Returns [{ id, c, python, node }] with { syscall: calls per op } each.
 */
export function countSyscalls(rows, { cBin, sides, iters }) {
  const probe = spawnSync('strace', ['-V'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) throw new Error('--syscalls needs strace');
  const out = [];
  for (const row of rows) {
    const n = iters ?? (row.iters[1] >= 100 ? 200 : 4);
    process.stderr.write(`  ${row.id}: ${n} and ${2 * n} iterations per side\n`);
    const r = { id: row.id, label: row.label ?? row.id, iters: n };
    if (sides.includes('c')) r.c = perOp(cBin, (k) => ['--once', row.ref, String(k)], n);
    if (sides.includes('python')) r.python = perOp(process.env.PYTHON || 'python3', (k) => [pySource, '--once', row.ref, String(k)], n);
    if (sides.includes('node')) r.node = perOp(process.execPath, (k) => [path.join(here, 'once.mjs'), row.node ?? row.id, String(k)], n);
    out.push(r);
  }
  return out;
}

/** Table rows: one per (op, syscall). */
export function syscallTableRows(counts) {
  const rows = [];
  // '-': side not measured; 0: measured, no such call.
  const f = (side, name) => (side === undefined ? '-' : (side[name] ?? 0).toFixed(2));
  for (const r of counts) {
    const names = [...new Set([r.c, r.python, r.node].flatMap((x) => Object.keys(x ?? {})))].sort();
    if (names.length === 0) rows.push([r.label, '(none)', '-', '-', '-']);
    names.forEach((name, i) => rows.push([i === 0 ? r.label : '', name, f(r.c, name), f(r.python, name), f(r.node, name)]));
  }
  return rows;
}
