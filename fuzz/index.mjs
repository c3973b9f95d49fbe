#!/usr/bin/env node
// `npm run fuzz`: model-checked random call sequences against the built package
// (dist/), one child process per seed so that signals, aborts and hangs are caught.
//
//   npm run fuzz -- --seed 17                 one seed (reproduce a failure)
//   npm run fuzz -- --seeds 1..200 --jobs 2   a range
//   npm run fuzz -- --time 600                seeds until the time is up
//   npm run fuzz -- --gc-drop --time 300      drop whole setups unclosed, force GC
//   npm run fuzz -- --ci                      fixed seeds, bounded (~60-90 s)
//
// Environment: GMEM_FUZZ_NODE_ARGS (extra node arguments for each child, split on
// spaces), GMEM_FUZZ_LD_PRELOAD (LD_PRELOAD for the children only, e.g. an ASan
// runtime), GMEM_ADDON_PATH (another build of the addon; also --addon). Everything
// else in the environment passes through to the children.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError, Option } from 'commander';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..');
const CATEGORIES = ['kvm', 'file', 'slot', 'notifier', 'vcpu', 'guest', 'eventfd', 'receiver', 'loader', 'race', 'gc'];

function int(name) {
  return (v) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a non-negative integer`);
    return n;
  };
}

function seedRange(v) {
  const m = /^(\d+)\.\.(\d+)$/.exec(v);
  if (!m || Number(m[2]) < Number(m[1])) throw new InvalidArgumentError('expected A..B with A <= B, e.g. 1..100');
  return [Number(m[1]), Number(m[2])];
}

function categories(v) {
  const list = v.split(',').map((s) => s.trim()).filter(Boolean);
  for (const c of list) if (!CATEGORIES.includes(c)) throw new InvalidArgumentError(`unknown category '${c}' (one of ${CATEGORIES.join(', ')})`);
  return list;
}

export function parseArgs(argv) {
  const program = new Command('fuzz')
    .description('Model-checked random call sequences against guest-memfd (the built dist/), one child process per seed.')
    .option('--seed <n>', 'run this one seed', int('--seed'))
    .option('--seeds <A..B>', 'run seeds A to B', seedRange)
    .option('--calls <n>', 'calls per seed', int('--calls'), 300)
    .option('--time <seconds>', 'run consecutive seeds until this much time has passed', int('--time'))
    .option('--gc-drop', 'also drop whole setups without closing them and force GC (children run with --expose-gc)')
    .option('--jobs <n>', 'seeds run at once', int('--jobs'), 1)
    .option('--ci', 'a bounded run of fixed seeds (normal and --gc-drop), with generous limits')
    .option('--timeout <seconds>', 'per-seed time limit: a child still running then is killed and reported as a hang', int('--timeout'), 60)
    .option('--addon <path>', 'load this build of the addon in the children (sets GMEM_ADDON_PATH)')
    .option('--skip <categories>', `leave out these kinds of calls (${CATEGORIES.join(', ')})`, categories, [])
    .option('--trace <n>', 'calls of the trace shown for a failure', int('--trace'), 40)
    .option('--hostile-rate <p>', 'share of arguments made hostile (0..1)', parseFloat, 0.15)
    .option('--json', 'print the summary as JSON too')
    .option('--quiet', 'print only failures and the summary')
    .addOption(new Option('--crash-at <k>', 'make the child kill itself with --crash-signal at call k (tests the runner)').argParser(int('--crash-at')).hideHelp())
    .addOption(new Option('--crash-signal <sig>').default('SIGSEGV').hideHelp())
    .addOption(new Option('--hang-at <k>', 'make the child hang at call k (tests the runner)').argParser(int('--hang-at')).hideHelp())
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  program.parse(argv, { from: 'user' });
  return program.opts();
}

/** The seeds to run, as a generator (endless with --time). */
function* seedsOf(o) {
  if (o.seed !== undefined) return yield o.seed;
  if (o.seeds) {
    for (let s = o.seeds[0]; s <= o.seeds[1]; s++) yield s;
    return;
  }
  // --time without a range: consecutive seeds from one chosen by the clock (printed, so a run can be repeated).
  let s = o.time !== undefined ? Math.floor(Date.now() / 1000) % 1_000_000 * 1000 : 1;
  const end = o.time !== undefined ? Infinity : 20;
  for (let i = 0; i < end; i++) yield s++;
}

function runChild(seed, o, dir) {
  const trace = path.join(dir, `seed-${seed}.trace`);
  const result = path.join(dir, `seed-${seed}.json`);
  const childOptions = {
    seed,
    calls: o.calls,
    gcDrop: !!o.gcDrop,
    skip: o.skip,
    trace,
    result,
    hostileRate: o.hostileRate,
    crashAt: o.crashAt,
    crashSignal: o.crashSignal,
    hangAt: o.hangAt,
  };
  const nodeArgs = (process.env.GMEM_FUZZ_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  if (o.gcDrop) nodeArgs.push('--expose-gc');
  const env = { ...process.env };
  if (o.addon) env.GMEM_ADDON_PATH = path.resolve(o.addon);
  if (process.env.GMEM_FUZZ_LD_PRELOAD) env.LD_PRELOAD = process.env.GMEM_FUZZ_LD_PRELOAD;
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...nodeArgs, path.join(here, 'child.mjs'), JSON.stringify(childOptions)], {
      cwd: root,
      env,
      detached: true, // its own process group: a hang is killed with everything it started
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    const keep = (d) => {
      output += d;
      if (output.length > 20000) output = output.slice(-10000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let hung = false;
    const timer = setTimeout(() => {
      hung = true;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }, o.timeout * 1000);
    running.add(child);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      const ms = Date.now() - started;
      let report;
      try {
        report = JSON.parse(readFileSync(result, 'utf8'));
      } catch {
        report = undefined;
      }
      const traceText = existsSync(trace) ? readFileSync(trace, 'utf8') : '';
      resolve({ seed, code, signal, hung, ms, report, trace: traceText, output });
    });
  });
}

const running = new Set();
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    for (const c of running) {
      try {
        process.kill(-c.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    process.exit(130);
  });
}

/** The last `n` calls of a trace (each call line with the result lines after it). */
function traceTail(text, n) {
  const lines = text.split('\n').filter(Boolean);
  let calls = 0;
  let i = lines.length;
  while (i > 0 && calls < n) if (lines[--i].startsWith('#')) calls++;
  return lines.slice(i);
}

function reproduce(o, r) {
  const parts = ['npm run fuzz --', `--seed ${r.seed}`];
  if (o.calls !== 300) parts.push(`--calls ${o.calls}`);
  if (o.gcDrop) parts.push('--gc-drop');
  if (o.skip.length) parts.push(`--skip ${o.skip.join(',')}`);
  if (o.hostileRate !== 0.15) parts.push(`--hostile-rate ${o.hostileRate}`);
  if (o.addon) parts.push(`--addon ${o.addon}`);
  return parts.join(' ');
}

/** What went wrong with a seed, or undefined when it passed. */
function verdict(r) {
  if (r.hung) return `hang: still running after the per-seed limit (killed its process group)`;
  if (r.signal) return `crash: killed by ${r.signal}${r.signal === 'SIGKILL' ? ' (not by the runner: the OOM killer? see dmesg)' : ''}`;
  if (r.report && !r.report.ok) return r.report.failure;
  if (r.code !== 0) return `exit status ${r.code} without a report`;
  if (!r.report) return 'no report';
  return undefined;
}

export async function main(argv = process.argv.slice(2), log = (s) => process.stdout.write(`${s}\n`)) {
  let o;
  try {
    o = parseArgs(argv);
  } catch (e) {
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
    return 2;
  }
  if (!existsSync(path.join(root, 'dist', 'index.mjs'))) {
    log('fuzz: dist/ is missing: run `npm run build:ts` (and the native build) first');
    return 2;
  }
  const plans = [];
  if (o.ci) {
    // Fixed seeds, generous limits: this can fail only on a real defect.
    o.timeout = Math.max(o.timeout, 60);
    plans.push({ ...o, seeds: [1, 120], seed: undefined, time: undefined, gcDrop: false, jobs: Math.max(o.jobs, 2) });
    plans.push({ ...o, seeds: [1001, 1040], seed: undefined, time: undefined, gcDrop: true, jobs: Math.max(o.jobs, 2) });
  } else plans.push(o);

  const dir = mkdtempSync(path.join(tmpdir(), 'gmem-fuzz-'));
  const started = Date.now();
  const totals = { seeds: 0, calls: 0, ok: 0, typed: 0, kernel: 0, own: 0, failures: 0, warnings: 0, dropped: 0 };
  const failures = [];
  const ranges = [];
  try {
    for (const plan of plans) {
      const seeds = seedsOf(plan);
      const deadline = plan.time !== undefined ? started + plan.time * 1000 : Infinity;
      const workers = [];
      for (let j = 0; j < Math.max(1, plan.jobs); j++) {
        workers.push((async () => {
          for (;;) {
            if (Date.now() >= deadline) return;
            const next = seeds.next();
            if (next.done) return;
            const r = await runChild(next.value, plan, dir);
            totals.seeds++;
            ranges.push(r.seed);
            const rep = r.report;
            if (rep) {
              // Per kind counts include the closing of everything at the end of the seed: so does the total.
              totals.calls += (rep.calls ?? 0) + (rep.teardownCalls ?? 0);
              for (const k of ['ok', 'typed', 'kernel', 'own']) totals[k] += rep.counts?.[k] ?? 0;
              totals.warnings += rep.warnings ?? 0;
              totals.dropped += rep.dropped ?? 0;
            }
            const why = verdict(r);
            if (why) {
              totals.failures++;
              failures.push({ seed: r.seed, why, plan });
              log(`FAIL seed ${r.seed}${plan.gcDrop ? ' (--gc-drop)' : ''}: ${why}`);
              if (rep?.cause) log(`  stack:\n    ${rep.cause.split('\n').join('\n    ')}`);
              log(`  last calls:`);
              for (const line of traceTail(r.trace, plan.trace)) log(`    ${line}`);
              const out = r.output.trim();
              if (out) log(`  child output:\n    ${out.split('\n').slice(-20).join('\n    ')}`);
              log(`  reproduce: ${reproduce(plan, r)}`);
            } else if (!o.quiet) {
              log(`ok   seed ${r.seed}${plan.gcDrop ? ' (--gc-drop)' : ''}: ${rep.calls} calls (${rep.counts.ok} ok, ${rep.counts.typed} typed errors, ${rep.counts.kernel} kernel errors${rep.dropped ? `, ${rep.dropped} setups dropped` : ''}) in ${(r.ms / 1000).toFixed(1)} s`);
            }
          }
        })());
      }
      await Promise.all(workers);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  const seedList = [...new Set(ranges)].sort((a, b) => a - b);
  const runs = [];
  for (const s of seedList) {
    const last = runs[runs.length - 1];
    if (last && s === last[1] + 1) last[1] = s;
    else runs.push([s, s]);
  }
  const seedText = runs.length > 4 ? `${runs.length} ranges` : runs.map(([a, b]) => (a === b ? `${a}` : `${a}..${b}`)).join(', ');
  log(
    `fuzz: ${totals.seeds} seeds${seedText ? ` (${seedText})` : ''}, ${totals.calls} calls (${totals.ok} ok, ${totals.typed} typed errors, ${totals.kernel} kernel errors, ${totals.own} fuzzer-thrown), ` +
      `${totals.failures} failures${failures.length ? ` (seeds ${failures.map((f) => f.seed).join(', ')})` : ''} in ${secs} s`,
  );
  if (o.json) log(JSON.stringify({ ...totals, seconds: Number(secs), failedSeeds: failures.map((f) => ({ seed: f.seed, gcDrop: !!f.plan.gcDrop, why: f.why })) }));
  return failures.length ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then((code) => process.exit(code));
}
