// `npm run bench`: runs the C floor, the Python peer and the Node API on the same
// operations, interleaving whole rounds so all three see the same machine state,
// then prints one table and writes bench/results/latest.json.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpus, release, totalmem, tmpdir } from 'node:os';
import { mkdirSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runNodeOps } from './ops.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..');
const quick = process.argv.includes('--quick');
const sharedBench = process.env.GMEM_SHARED_BENCH || path.join(root, '..', 'shared', 'bench');
const roundsOf = quick ? 1 : 5;

function parseLines(text) {
  return text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
}

function compileC() {
  const out = path.join(tmpdir(), `kvm_baseline_${process.pid}`);
  execFileSync('cc', ['-O2', '-o', out, path.join(sharedBench, 'kvm_baseline.c')], { stdio: 'inherit' });
  return out;
}

function runPeer(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 24 });
  const lines = parseLines(r.stdout ?? '');
  const skip = lines.find((l) => l.skip);
  if (skip) throw new Error(`${cmd}: ${skip.skip}`);
  if (r.status !== 0) throw new Error(`${cmd} exited ${r.status}: ${r.stderr}`);
  return lines;
}

/** Per op, the median over rounds of each round's median. */
function combine(roundsList) {
  const byOp = new Map();
  for (const round of roundsList) for (const rec of round) {
    if (!byOp.has(rec.op)) byOp.set(rec.op, []);
    byOp.get(rec.op).push(rec);
  }
  const out = {};
  for (const [op, recs] of byOp) {
    const values = recs.map((r) => r.value).sort((a, b) => a - b);
    out[op] = { ...recs[0], value: values[values.length >> 1], min: Math.min(...recs.map((r) => r.min)), max: Math.max(...recs.map((r) => r.max)), rounds: recs.length };
  }
  return out;
}

// The C program's op names, and which Node op answers each.
const pairs = [
  ['check_extension', 'check_extension'],
  ['gmem_create_close', 'gmem_create_close'],
  ['slot_add_delete', 'slot_add_delete'],
  ['punch_hole_4k', 'punch_hole_4k'],
  ['fault_in_256m', 'fault_in_256m'],
  ['copy_256m', 'copy_256m'],
  ['vcpu_io_exit', 'vcpu_io_exit_sync', 'vcpu_io_exit (runSync)'],
  ['vcpu_io_exit', 'vcpu_io_exit', 'vcpu_io_exit (run)'],
];

function fmt(v) {
  if (v === undefined) return '-';
  return v >= 100 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3);
}

/** Time ratio Node/peer (>1 means Node is slower), whatever the unit. */
function ratio(node, peer, unit) {
  if (node === undefined || peer === undefined) return undefined;
  return unit === 'GB/s' ? peer / node : node / peer;
}

async function main() {
  const cBin = compileC();
  const cRounds = [];
  const pyRounds = [];
  const nodeRounds = [];
  const flag = quick ? ['--quick'] : [];
  for (let r = 0; r < roundsOf; r++) {
    process.stderr.write(`round ${r + 1}/${roundsOf}: C`);
    cRounds.push(runPeer(cBin, flag));
    process.stderr.write(', Python');
    pyRounds.push(runPeer('python3', [path.join(sharedBench, 'kvm_baseline.py'), ...flag]));
    process.stderr.write(', Node\n');
    nodeRounds.push(await runNodeOps({ quick }));
  }
  const c = combine(cRounds);
  const py = combine(pyRounds);
  const node = combine(nodeRounds);

  const rows = [];
  const json = [];
  for (const [base, nodeOp, label] of pairs) {
    const n = node[nodeOp];
    const unit = n.unit;
    const rc = ratio(n.value, c[base]?.value, unit);
    const rp = ratio(n.value, py[base]?.value, unit);
    rows.push([label ?? base, unit, fmt(c[base]?.value), fmt(py[base]?.value), fmt(n.value), fmt(rc), fmt(rp)]);
    json.push({ op: label ?? base, unit, c: c[base]?.value, python: py[base]?.value, node: n.value, nodeOverC: rc, nodeOverPython: rp, nodeMin: n.min, nodeMax: n.max });
  }
  for (const [op, n] of Object.entries(node)) {
    if (pairs.some((p) => p[1] === op)) continue;
    rows.push([op, n.unit, '-', '-', fmt(n.value), '-', '-']);
    json.push({ op, unit: n.unit, node: n.value, nodeMin: n.min, nodeMax: n.max, note: n.note });
  }
  const { renderTable } = await import('../dist/tools/table.js');
  const table = renderTable(['op', 'unit', 'C', 'Python', 'Node', 'Node/C', 'Node/Python'], rows);
  console.log(table);
  console.log('\nRatios compare time (Node/C > 1: Node is slower); for GB/s the ratio is C GB/s over Node GB/s.');

  const machine = {
    cpu: cpus()[0]?.model,
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    python: spawnSync('python3', ['--version'], { encoding: 'utf8' }).stdout.trim(),
    cc: spawnSync('cc', ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0],
  };
  const report = { date: new Date().toISOString(), quick, rounds: roundsOf, machine, results: json, table };
  mkdirSync(path.join(here, 'results'), { recursive: true });
  const file = path.join(here, 'results', quick ? 'quick.json' : 'latest.json');
  writeFileSync(file, JSON.stringify(report, null, 2) + '\n');
  console.log(`\nwritten ${path.relative(process.cwd(), file)}`);
}

if (!existsSync(path.join(root, 'dist', 'index.js'))) {
  console.error('bench: build first (npm install, or npm run build:ts)');
  process.exit(1);
}
main().catch((e) => {
  console.error(`bench: ${e.message}`);
  process.exitCode = 1;
});

