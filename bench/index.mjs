// `npm run bench` (see bench/README.md): the Node API against its C and Python
// references on the same ops, in many short alternating batches within one run,
// then one table on stdout and bench/results/latest.json.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { attributeMapScale, openNodeOps, residentCost, timeNodeBatch } from './ops.mjs';
import { cflags, compileC, SkipError, startC, startPython, startSpinner, toolVersions } from './refs.mjs';
import { ratioFigures, sideFigures } from './stats.mjs';
import { countSyscalls, syscallTableRows } from './syscalls.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..');

// Every measured row. `unit`: how the table shows it; `ref`: the references' op name (C and Python); `node`: the
// Node op (default: the id). `iters`: iterations per batch [full, quick];
// `batches`: timed batches per side [full, quick]; `warmup`: untimed batches per side
// first [full, quick] (default 1). `busy`: measured while a pinned
// CPU-bound process occupies another core. `pair`: a Node op measured alternately
// with this one and reported against it.
const ROWS = [
  { id: 'check_extension', unit: 'us/op', ref: 'check_extension', iters: [20000, 10000] },
  { id: 'gmem_create_close', unit: 'us/op', ref: 'gmem_create_close', iters: [1000, 500] },
  { id: 'slot_add_delete', unit: 'us/pair', ref: 'slot_add_delete', pair: ['slot_add_delete_raw'], iters: [100, 100], batches: [241, 9] },
  { id: 'punch_hole_4k', unit: 'us/op', ref: 'punch_hole_4k', iters: [2000, 1000] },
  { id: 'fault_in_256m', unit: 'GB/s', ref: 'fault_in_256m', iters: [1, 1], batches: [7, 3] },
  { id: 'copy_256m', unit: 'GB/s', ref: 'copy_256m', iters: [1, 1], batches: [15, 5] },
  { id: 'vcpu_io_exit_sync', label: 'vcpu_io_exit (runSync)', unit: 'us/exit', ref: 'vcpu_io_exit', iters: [2000, 1000] },
  { id: 'vcpu_io_exit_run', label: 'vcpu_io_exit (run)', unit: 'us/exit', ref: 'vcpu_io_exit', iters: [2000, 1000] },
  { id: 'vcpu_io_exit_sync_busy', label: 'vcpu_io_exit (runSync, busy)', unit: 'us/exit', node: 'vcpu_io_exit_sync', ref: 'vcpu_io_exit', busy: true, iters: [2000, 1000], batches: [21, 5] },
  { id: 'vcpu_io_exit_run_busy', label: 'vcpu_io_exit (run, busy)', unit: 'us/exit', node: 'vcpu_io_exit_run', ref: 'vcpu_io_exit', busy: true, iters: [2000, 1000], batches: [21, 5] },
  { id: 'punch_hole_4k_batch256', unit: 'us/op', iters: [20, 10], per: 256 },
  { id: 'punch_hole_4k_1_listener', unit: 'us/op', iters: [2000, 1000] },
  { id: 'invalidate_dispatch_1', unit: 'us/op', iters: [20000, 10000] },
  { id: 'punch_hole_4k_8_listeners', unit: 'us/op', iters: [2000, 1000] },
  { id: 'invalidate_dispatch_8', unit: 'us/op', iters: [20000, 10000] },
  { id: 'memory_write_4k', unit: 'us/op', pair: ['memory_read_4k', 'memory_readinto_4k'], iters: [20000, 10000] },
  { id: 'memory_write_1m', unit: 'us/op', pair: ['memory_read_1m', 'memory_readinto_1m'], iters: [200, 100] },
  // Conversion (to private and back), where KVM offers a sw-protected VM with
  // KVM_MEMORY_ATTRIBUTE_PRIVATE: inside the test kernels (npm run bench:kernel).
  // Under emulation V8 takes thousands of calls to settle, hence the long warm-ups.
  { id: 'convert_4k', unit: 'us/pair', ref: 'convert_4k', conversion: true, iters: [200, 50], batches: [21, 5], warmup: [20, 2] },
  { id: 'convert_1g', unit: 'ms/pair', ref: 'convert_1g', conversion: true, iters: [1, 1], batches: [11, 3], warmup: [3, 1] },
  { id: 'convert_batch_1000', unit: 'ms/pair', ref: 'convert_batch_1000', conversion: true, iters: [1, 1], batches: [11, 3], warmup: [10, 1] },
];
const ONE_SHOT = ['attr_map', 'rss'];
/** The ops measured alternately with a row's own and compared with it. */
const pairsOf = (row) => (row.pair === undefined ? [] : Array.isArray(row.pair) ? row.pair : [row.pair]);
const DEFAULT_BATCHES = { ref: [61, 5], node: [41, 5] };

// Targets, as Node/C (or Node/Python, or against a paired op) on the median of the
// per-batch ratios.
const TARGETS = [
  { row: 'punch_hole_4k', against: 'c', limit: 1.1 },
  { row: 'gmem_create_close', against: 'c', limit: 1.1 },
  { row: 'vcpu_io_exit_sync', against: 'c', limit: 1.1 },
  { row: 'check_extension', against: 'c', limit: 1.3 },
  { row: 'vcpu_io_exit_run', against: 'c', limit: 1.25 },
  { row: 'vcpu_io_exit_run_busy', against: 'c', limit: 2 },
  { row: 'fault_in_256m', against: 'c', limit: 1.05 },
  { row: 'copy_256m', against: 'c', limit: 1.05 },
  { row: 'slot_add_delete', against: 'c', spread: true },
  { row: 'memory_read_1m', against: 'pair', limit: 1.2 },
  { row: 'memory_read_4k', against: 'pair' },
  { row: 'memory_readinto_1m', against: 'pair', limit: 1.2 },
  { row: 'memory_readinto_4k', against: 'pair' },
  { python: true, limit: 1 },
  { row: 'rss_1000_slots_1000_views', value: true, limit: 50 },
];

const USAGE = `usage: npm run bench -- [options]
  --quick            short run (5 batches per side), writes bench/results/quick.json
  --op A[,B...]      only these rows (ids as in --list); the run is partial
  --busy             only the vcpu_io_exit rows, idle and with the other core busy
  --sides S[,S...]   only these sides: c, node, python (partial)
  --batches N        timed batches per side (partial)
  --iters N          iterations per batch (partial)
  --out FILE         write the JSON here (partial runs write nothing otherwise)
  --syscalls         count each side's system calls per op (strace) instead of timing
  --list             list the row ids
  --compare F...     compare the Node/C ratios of result files (e.g. three runs)`;

function parseArgs(argv) {
  const o = { quick: false, ops: undefined, sides: ['c', 'node', 'python'], partial: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value\n${USAGE}`);
      return argv[++i];
    };
    if (a === '--quick') o.quick = true;
    else if (a === '--op') (o.ops = value().split(',')), (o.partial = true);
    else if (a === '--busy') (o.ops = ROWS.filter((r) => r.ref === 'vcpu_io_exit').map((r) => r.id)), (o.partial = true);
    else if (a === '--sides') (o.sides = value().split(',')), (o.partial = true);
    else if (a === '--batches') (o.batches = positive(a, value())), (o.partial = true);
    else if (a === '--iters') (o.iters = positive(a, value())), (o.partial = true);
    else if (a === '--out') o.out = value();
    else if (a === '--list') o.list = true;
    else if (a === '--syscalls') o.syscalls = true;
    else if (a === '--compare') (o.compare = argv.slice(i + 1)), (i = argv.length);
    else if (a === '--help' || a === '-h') o.help = true;
    else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  for (const s of o.sides) if (!['c', 'node', 'python'].includes(s)) throw new Error(`--sides: unknown side ${s}`);
  if (o.ops) {
    const known = new Set([...ROWS.flatMap((r) => [r.id, ...pairsOf(r)]), ...ONE_SHOT]);
    for (const op of o.ops) if (!known.has(op)) throw new Error(`--op: unknown row ${op} (see --list)`);
  }
  return o;
}

function positive(flag, s) {
  const n = Number(s);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${flag}: expected a positive integer, got ${s}`);
  return n;
}

const fmt = (v) => (v === undefined || Number.isNaN(v) ? '-' : v >= 100 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3));
const fmtRatio = (v) => (v === undefined ? '-' : v.toFixed(2));
const spread = (r) => (r ? `${fmtRatio(r.p10)}–${fmtRatio(r.p90)}` : '-');

/**
 * Runs `sides` (each { name, batch(iters) -> sample }) alternately: `warmup` untimed
 * batches each (default one), then `batches` rounds, the order rotating every round so no
 * side always follows the same one. Returns the samples by side name.
 */
async function alternate(sides, iters, batches, progress, warmup = 1) {
  const samples = Object.fromEntries(sides.map((s) => [s.name, []]));
  for (const s of sides) for (let w = 0; w < warmup; w++) await s.batch(iters);
  for (let b = 0; b < batches; b++) {
    for (let k = 0; k < sides.length; k++) {
      const s = sides[(b + k) % sides.length];
      samples[s.name].push(await s.batch(iters));
    }
    progress?.(b + 1, batches);
  }
  return samples;
}

async function measureRow(row, ctx) {
  const { opts, node, c, python } = ctx;
  const q = opts.quick ? 1 : 0;
  const iters = opts.iters ?? row.iters[q];
  const batches = opts.batches ?? (row.batches ?? (row.ref ? DEFAULT_BATCHES.ref : DEFAULT_BATCHES.node))[q];
  const per = row.per ?? 1;
  const nodeOp = node?.ops[row.node ?? row.id];
  const pairOps = pairsOf(row).map((name) => ({ name, op: node?.ops[name] })).filter((p) => p.op);
  const unit = row.unit;

  const label = row.label ?? row.id;
  if (row.conversion && node && !nodeOp) {
    // The kernel lacks what the row needs: say so in the table, measure nothing.
    process.stderr.write(`  ${label}: skipped: ${node.skipped}\n`);
    return [{ id: row.id, label, unit, ref: row.ref, sides: {}, ratios: {}, skipped: node.skipped, note: 'skipped: needs a sw-protected VM (npm run bench:kernel)' }];
  }
  const sides = [];
  if (row.ref && c?.ops.includes(row.ref)) sides.push({ name: 'c', batch: (n) => c.batch(row.ref, n) });
  if (nodeOp) sides.push({ name: 'node', batch: (n) => timeNodeBatch(nodeOp, n) });
  if (row.ref && python?.ops.includes(row.ref)) sides.push({ name: 'python', batch: (n) => python.batch(row.ref, n) });
  for (const p of pairOps) sides.push({ name: `pair:${p.name}`, batch: (n) => timeNodeBatch(p.op, n) });
  if (sides.length === 0) return [];

  const t0 = Date.now();
  const tick = process.stderr.isTTY ? (b, n) => process.stderr.write(`\r  ${label}: batch ${b}/${n}`) : undefined;
  nodeOp?.enter?.();
  for (const p of pairOps) p.op.enter?.();
  let samples;
  try {
    samples = await alternate(sides, iters, batches, tick, row.warmup?.[q] ?? 1);
  } finally {
    nodeOp?.leave?.();
    for (const p of pairOps) p.op.leave?.();
  }
  process.stderr.write(`${tick ? '\r' : ''}  ${label}: ${batches} batches × ${iters} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);

  const figures = (name) => (samples[name] ? sideFigures(samples[name], unit, per) : undefined);
  const ratio = (a, b) => (samples[a] && samples[b] ? ratioFigures(samples[a], samples[b], per) : undefined);
  const base = { unit, iters, batches, warmup: row.warmup?.[q] ?? 1, per, busy: !!row.busy };
  if (pairOps.length) {
    // This row's op and its pairs: a row each, the pairs' against this one.
    return [
      { ...base, id: row.id, label, ref: row.ref, sides: { c: figures('c'), node: figures('node'), python: figures('python') }, ratios: { c: ratio('node', 'c'), python: ratio('node', 'python') } },
      ...pairOps.map((p) => ({ ...base, id: p.name, label: p.name, sides: { node: figures(`pair:${p.name}`) }, ratios: { pair: ratio(`pair:${p.name}`, 'node') }, pairedWith: row.id })),
    ];
  }
  return [{ ...base, id: row.id, label, ref: row.ref, sides: { c: figures('c'), node: figures('node'), python: figures('python') }, ratios: { c: ratio('node', 'c'), python: ratio('node', 'python') } }];
}

function renderResults(results, renderTable) {
  const rows = results.map((r) => {
    const s = r.sides ?? {};
    const rc = r.ratios?.c;
    const rp = r.ratios?.python;
    const value = r.value !== undefined ? r.value : s.node?.median;
    return [r.label ?? r.id, r.unit, fmt(s.c?.median), fmt(s.python?.median), fmt(value), fmtRatio(rc?.median), spread(rc), fmtRatio(rc?.bestOverBest), fmtRatio(rc?.cpu), fmtRatio(rp?.median), r.ratios?.pair ? `${fmtRatio(r.ratios.pair.median)} × ${r.pairedWith}` : r.note ?? ''];
  });
  return renderTable(['op', 'unit', 'C', 'Python', 'Node', 'Node/C', 'p10–p90', 'best/best', 'cpu N/C', 'Node/Py', 'note'], rows);
}

function evaluateTargets(results) {
  const byId = new Map(results.map((r) => [r.id, r]));
  const out = [];
  for (const t of TARGETS) {
    if (t.python) {
      const rows = results.filter((r) => r.ratios?.python);
      if (!rows.length) continue;
      const slower = rows.filter((r) => r.ratios.python.median > t.limit);
      out.push({ target: 'every op at least as fast as Python', figure: slower.length ? slower.map((r) => `${r.label} ${fmtRatio(r.ratios.python.median)}`).join(', ') : `worst ${fmtRatio(Math.max(...rows.map((r) => r.ratios.python.median)))}`, met: slower.length === 0 });
      continue;
    }
    const r = byId.get(t.row);
    if (!r) continue;
    if (t.value) {
      out.push({ target: `${t.row} ≤ ${t.limit} ${r.unit}`, figure: fmt(r.value), met: r.value <= t.limit });
      continue;
    }
    const ratio = r.ratios?.[t.against];
    if (!ratio) continue;
    const vs = t.against === 'pair' ? `× ${r.pairedWith}` : '× C';
    const fig = `${fmtRatio(ratio.median)} (p10–p90 ${spread(ratio)}, best/best ${fmtRatio(ratio.bestOverBest)})`;
    if (t.spread) out.push({ target: `${t.row}: Node/C with its spread, repeatable across runs (--compare)`, figure: fig, met: undefined });
    else if (t.limit === undefined) out.push({ target: `${t.row} against ${r.pairedWith}`, figure: fig, met: undefined });
    else {
      let figure = fig;
      if (t.row === 'vcpu_io_exit_run_busy' && byId.get('vcpu_io_exit_run')?.ratios?.c) figure += `; idle ${fmtRatio(byId.get('vcpu_io_exit_run').ratios.c.median)}`;
      out.push({ target: `${t.row} ≤ ${t.limit} ${vs}`, figure, met: ratio.median <= t.limit });
    }
  }
  return out;
}

function machineInfo(opts) {
  let commit;
  try {
    commit = execFileSync('git', ['-C', root, 'describe', '--always', '--dirty'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    commit = undefined;
  }
  return {
    cpu: cpus()[0]?.model,
    cores: availableParallelism(),
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    ...toolVersions(),
    cflags: cflags.join(' '),
    commit,
    loadavgAtStart: opts.loadavgAtStart,
  };
}

/** JSON with floats at 5 significant digits and arrays of numbers on one line. */
function toJson(value) {
  const text = JSON.stringify(value, (_k, v) => (typeof v === 'number' && !Number.isInteger(v) ? Number(v.toPrecision(5)) : v), 1);
  return text.replace(/\[\n[\d.eE+\-,\s]+\]/g, (a) => a.replace(/\s+/g, '')) + '\n';
}

async function run(opts) {
  const { renderTable } = await import('../dist/tools/table.js');
  const selected = (id) => !opts.ops || opts.ops.includes(id);
  const rows = ROWS.filter((r) => selected(r.id) || pairsOf(r).some(selected));
  const needC = opts.sides.includes('c') && rows.some((r) => r.ref);
  const needPython = opts.sides.includes('python') && rows.some((r) => r.ref);
  const needNode = opts.sides.includes('node');
  const busyRows = rows.filter((r) => r.busy);
  opts.loadavgAtStart = loadavg();

  const compiled = needC || busyRows.length ? compileC() : undefined;
  const ctx = { opts };
  const results = [];
  let busyShare;
  try {
    [ctx.c, ctx.python, ctx.node] = await Promise.all([
      needC ? startC(compiled.bin) : undefined,
      needPython
        ? startPython().catch((e) => {
            if (e instanceof SkipError) throw e;
            process.stderr.write(`bench: no Python side: ${e.message}\n`);
            return undefined;
          })
        : undefined,
      needNode ? openNodeOps() : undefined,
    ]);
    process.stderr.write(`bench: ${opts.partial ? 'partial' : opts.quick ? 'quick' : 'full'} run, sides ${['c', 'node', 'python'].filter((s) => ctx[s]).join(', ')}\n`);
    for (const row of rows.filter((r) => !r.busy && r.ref)) results.push(...(await measureRow(row, ctx)));
    if (busyRows.length) {
      const cores = availableParallelism();
      if (cores < 2) process.stderr.write('  busy rows skipped: one CPU only\n');
      else {
        const spinner = await startSpinner(compiled.bin, cores - 1);
        process.stderr.write(`  CPU ${cores - 1} busy (pid ${spinner.pid})\n`);
        try {
          for (const row of busyRows) results.push(...(await measureRow(row, ctx)));
        } finally {
          busyShare = await spinner.stop();
        }
        for (const r of results) if (r.busy) r.note = `CPU ${cores - 1} busy (${busyShare === undefined ? '?' : Math.round(busyShare * 100)}%)`;
      }
    }
    for (const row of rows.filter((r) => !r.busy && !r.ref)) results.push(...(await measureRow(row, ctx)));
    if (needNode && selected('attr_map')) results.push(...attributeMapScale(opts.quick));
    if (needNode && selected('rss')) results.push(residentCost(opts.quick));
  } finally {
    await Promise.all([ctx.c?.close(), ctx.python?.close(), ctx.node?.close()]);
    compiled?.dispose();
  }

  const table = renderResults(results, renderTable);
  console.log(table);
  console.log('\nC, Python, Node: median of the per-batch figures. Node/C: median of the per-batch time ratios (each Node batch');
  console.log('against the C batch run next to it; above 1 Node is slower; for GB/s it is C GB/s over Node GB/s), with its');
  console.log('p10–p90 spread; best/best: best Node batch over best C batch; cpu N/C: the same ratio on user+system CPU time.');
  const targets = evaluateTargets(results);
  if (targets.length) {
    console.log('');
    console.log(renderTable(['target', 'figure', 'met'], targets.map((t) => [t.target, t.figure, t.met === undefined ? '-' : t.met ? 'yes' : 'NO'])));
  }

  const machine = machineInfo(opts);
  machine.loadavgAtEnd = loadavg();
  console.log(`\n${machine.cpu}, ${machine.cores} CPUs, ${machine.kernel}, Node ${machine.node}, ${machine.python}, load average at start ${machine.loadavgAtStart.map((l) => l.toFixed(2)).join(' ')}`);
  const report = {
    date: new Date().toISOString(),
    quick: opts.quick,
    partial: opts.partial,
    method: { warmupBatches: 'per row (1 unless the row says)', order: 'rotating per batch', sides: opts.sides, busyCpuShare: busyShare },
    machine,
    results,
    targets,
    table,
  };
  const file = opts.out ? path.resolve(opts.out) : opts.partial ? undefined : path.join(here, 'results', opts.quick ? 'quick.json' : 'latest.json');
  if (file) {
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, toJson(report));
    console.log(`written ${path.relative(process.cwd(), file)}`);
  }
}

/** Node/C ratios of several result files side by side, and how far their medians lie apart. */
async function compare(files) {
  const { renderTable } = await import('../dist/tools/table.js');
  if (files.length < 2) throw new Error('--compare needs two or more result files');
  const reports = files.map((f) => JSON.parse(readFileSync(f, 'utf8')));
  const ids = [...new Set(reports.flatMap((r) => (r.results ?? []).filter((x) => x.ratios?.c).map((x) => x.id)))];
  const rows = ids.map((id) => {
    const found = reports.map((r) => r.results.find((x) => x.id === id)?.ratios?.c);
    const medians = found.filter(Boolean).map((f) => f.median);
    const apart = medians.length > 1 ? Math.max(...medians) / Math.min(...medians) - 1 : undefined;
    const cpus = found.filter((f) => f?.cpu !== undefined).map((f) => f.cpu);
    const cpuApart = cpus.length > 1 ? Math.max(...cpus) / Math.min(...cpus) - 1 : undefined;
    const pct = (v) => (v === undefined ? '-' : `${(v * 100).toFixed(1)}%`);
    return [id, ...found.map((f) => (f ? `${fmtRatio(f.median)} (${spread(f)}) cpu ${fmtRatio(f.cpu)}` : '-')), pct(apart), pct(cpuApart)];
  });
  console.log(renderTable(['op: Node/C (p10–p90) cpu N/C', ...files.map((f, i) => `${i + 1}: ${path.basename(f)}`), 'max/min − 1', 'cpu max/min − 1'], rows));
  reports.forEach((r, i) => console.log(`${i + 1}: ${files[i]}: ${r.date}, load average at start ${r.machine?.loadavgAtStart?.map((l) => l.toFixed(2)).join(' ') ?? '?'}`));
}

async function syscalls(opts) {
  const { renderTable } = await import('../dist/tools/table.js');
  const rows = ROWS.filter((r) => r.ref && !r.busy && (!opts.ops || opts.ops.includes(r.id)));
  const compiled = compileC();
  let counts;
  try {
    counts = countSyscalls(rows, { cBin: compiled.bin, sides: opts.sides, iters: opts.iters });
  } finally {
    compiled.dispose();
  }
  console.log(renderTable(['op', 'syscall', 'C', 'Python', 'Node'], syscallTableRows(counts)));
  console.log('\nCalls per operation (strace -f -c; a run of 2N iterations minus a run of N, over N); page faults are not calls.');
  if (opts.out) {
    writeFileSync(path.resolve(opts.out), toJson({ date: new Date().toISOString(), syscalls: counts }));
    console.log(`written ${opts.out}`);
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.help) return console.log(USAGE);
  if (opts.list) {
    for (const r of ROWS) console.log(`${r.id}${pairsOf(r).length ? ` (with ${pairsOf(r).join(', ')})` : ''}${r.ref ? `  [C/Python: ${r.ref}]` : ''}`);
    for (const id of ONE_SHOT) console.log(id);
    return;
  }
  if (opts.compare) return compare(opts.compare);
  if (!existsSync(path.join(root, 'dist', 'index.js'))) throw new Error('build first (npm install, or npm run build:ts)');
  if (opts.syscalls) return syscalls(opts);
  await run(opts);
}

main().catch((e) => {
  console.error(`bench: ${e.message}`);
  process.exitCode = e instanceof SkipError ? 2 : 1;
});
