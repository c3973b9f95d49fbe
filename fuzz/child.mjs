// One seed, in its own process: `node fuzz/child.mjs '<json options>'`. Started by
// fuzz/index.mjs, which catches signals, aborts and hangs of this process.
//
// Writes the call trace to options.trace as it goes (each call before it runs, so a
// crash leaves the call that crashed as the last line) and the outcome as JSON to
// options.result. Exit status 0: the seed passed; 1: an invariant broke.
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { setImmediate as tick, setTimeout as sleep } from 'node:timers/promises';
import { Context, FuzzFailure, describeError, gm } from './model.mjs';
import { DROP_OP, OPS } from './ops.mjs';
import { Prng } from './prng.mjs';

const require = createRequire(import.meta.url);
const testing = require('../dist/testing/index.js');

const options = JSON.parse(process.argv[2] ?? '{}');
const seed = options.seed ?? 1;
const maxCalls = options.calls ?? 300;
const skip = new Set(options.skip ?? []);

const traceFd = options.trace ? openSync(options.trace, 'w') : -1;
const trace = {
  call(n, text) {
    if (traceFd >= 0) writeSync(traceFd, `#${n} ${text}\n`);
  },
  result(n, text) {
    if (traceFd >= 0) writeSync(traceFd, `   -> ${text}\n`);
  },
  note(text) {
    if (traceFd >= 0) writeSync(traceFd, `   (${text})\n`);
  },
};

// Listener errors go to notifier.onError, by default a process warning: collected, not printed.
const warnings = [];
process.emitWarning = (w) => {
  warnings.push(typeof w === 'string' ? w : w?.message);
  if (warnings.length > 50) warnings.shift();
};
const asyncFailures = [];
process.on('unhandledRejection', (e) => asyncFailures.push(`unhandled rejection: ${describeError(e)}`));
process.on('uncaughtException', (e) => {
  if (e instanceof FuzzFailure) asyncFailures.push(e.message);
  else asyncFailures.push(`uncaught exception: ${describeError(e)}`);
});

function finish(result) {
  if (traceFd >= 0) closeSync(traceFd);
  if (options.result) writeFileSync(options.result, JSON.stringify(result));
  else console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
}

// Warm up what the library opens once per process (capability caches, the first VM),
// so the leak check compares like with like.
{
  const kvm = gm.Kvm.open();
  const vm = kvm.createVm();
  vm.createVcpu(0);
  vm.close();
  kvm.close();
  gm.Memfd.create('warm', { size: 4096 }).close();
}
for (let i = 0; i < 3; i++) await tick();
const before = testing.resourceSnapshot();

const rng = new Prng(seed);
const ctx = new Context({ rng, trace, options: { crashAt: options.crashAt, crashSignal: options.crashSignal, hangAt: options.hangAt, hostileRate: options.hostileRate, forged: !skip.has('receiver') } });
ctx.dropped = 0;
// Each seed leans on a few areas: weights vary by seed, so seeds differ in kind, not only in order.
const ops = [...OPS, ...(options.gcDrop ? [DROP_OP] : [])]
  .filter(([, , , cat]) => !skip.has(cat))
  .map(([w, name, fn, cat]) => [w * rng.pick([1, 1, 2, 3]), [name, fn, cat]]);

async function teardown() {
  const m = ctx.model;
  for (const l of m.listeners) l.unregister();
  m.listeners = [];
  for (const k of m.kvms) {
    ctx.begin();
    const r = await ctx.call(`${k.label}.close`, [], () => k.obj.close(), { mutates: true });
    if (r.ok) m.markClosed(k);
  }
  for (const v of m.vms) if (!v.obj.closed) ctx.fail(`${v.label} still open after its Kvm closed`);
  for (const list of [m.files, m.efds]) {
    for (const e of list) {
      ctx.begin();
      const r = await ctx.call(`${e.label}.close`, [], () => e.obj.close(), { mutates: true });
      if (r.ok) m.markClosed(e);
    }
  }
  ctx.reconcile('teardown');
  for (const w of m.views) ctx.check(!w.obj.mapped && w.obj.buffer.length === 0, `${w.label} still mapped after its file closed`);
}

async function leaks() {
  let found = [];
  // Dropped objects are freed by the GC and their finalizers: give them time (a
  // loaded machine only makes this slower, never a false failure: 10 s before giving up).
  const until = Date.now() + (options.gcDrop ? 10_000 : 5_000);
  for (let i = 0; ; i++) {
    if (options.gcDrop) globalThis.gc?.();
    await tick();
    found = testing.resourceLeaks(before);
    if (found.length === 0 || Date.now() > until) break;
    if (i > 2) await sleep(5);
  }
  return found;
}

try {
  let idle = 0;
  while (ctx.calls < maxCalls) {
    const was = ctx.calls;
    const [name, fn] = rng.weighted(ops);
    ctx.current = name;
    await fn(ctx);
    if (asyncFailures.length) ctx.fail(asyncFailures.join('; '));
    idle = ctx.calls === was ? idle + 1 : 0;
    if (idle > 1000) ctx.fail('no operation could make a call (the generator is stuck)');
  }
  const calls = ctx.calls;
  trace.note('teardown');
  await teardown();
  for (let i = 0; i < 5; i++) await tick();
  const left = await leaks();
  if (left.length) ctx.fail(`resources left behind after closing everything${options.gcDrop ? ' and collecting what was dropped' : ''}: ${left.join('; ')}`);
  if (asyncFailures.length) ctx.fail(asyncFailures.join('; '));
  finish({ ok: true, seed, calls, teardownCalls: ctx.calls - calls, counts: ctx.counts, byOp: ctx.byOp, warnings: warnings.length, dropped: ctx.dropped });
} catch (e) {
  const failure = e instanceof FuzzFailure ? e.message : `fuzzer error: ${e?.stack ?? e}`;
  const cause = e?.cause?.stack ? String(e.cause.stack).split('\n').slice(0, 8).join('\n') : undefined;
  finish({ ok: false, seed, calls: ctx.calls, failure, cause, counts: ctx.counts, byOp: ctx.byOp, fuzzerBug: !(e instanceof FuzzFailure) });
}
