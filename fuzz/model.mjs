// The model the fuzzer checks the library against, and the checks made after every
// call: what a call may throw, that a failed call changed nothing observable, that
// closed objects say ERR_CLOSED, and that the real objects agree with the model.
import * as gm from '../dist/index.mjs';
import { OWN, fmt, hostileNumber, hostileObject, hostileString, setLabel } from './values.mjs';

export const LIBRARY_ERRORS = [
  gm.KvmError, gm.UnsupportedError, gm.ArgumentTypeError, gm.ArgumentRangeError, gm.StateError,
  gm.TimeoutError, gm.AbortError, gm.MsrError, gm.ConversionError, gm.LayoutError,
];

/** A broken invariant: ends the seed as a failure. */
export class FuzzFailure extends Error {
  constructor(message, cause) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'FuzzFailure';
  }
}

/**
 * What kind of throw `e` is: 'typed' (a library error with an ERR_* code), 'kernel'
 * (a KvmError carrying an errno name), 'own' (the fuzzer's own error passed through),
 * or 'untyped' (anything else: a plain TypeError from V8, an Error from Node...).
 */
export function classify(e) {
  if (e !== null && typeof e === 'object' && e[OWN] === true) return 'own';
  if (e instanceof gm.KvmError) return typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code) ? 'kernel' : 'untyped';
  if (e instanceof AggregateError && e.code === 'ERR_CLOSE_INCOMPLETE') return 'typed';
  if (LIBRARY_ERRORS.some((C) => e instanceof C) && typeof e.code === 'string' && (e.code.startsWith('ERR_') || e.code === 'ABORT_ERR')) return 'typed';
  return 'untyped';
}

export function describeError(e) {
  if (e === null || typeof e !== 'object') return `throw ${fmt(e)}`;
  const name = e.constructor?.name ?? 'Object';
  return `${name}${e.code !== undefined ? ` [${String(e.code)}]` : ''}: ${String(e.message).split('\n')[0].slice(0, 300)}`;
}

let nextId = 1;
/** A model entry: the real object, a label for traces, and what the model expects of it. */
export function entry(kind, obj, fields = {}) {
  const label = `${kind}${nextId++}`;
  if (obj !== null && (typeof obj === 'object' || typeof obj === 'function')) setLabel(obj, label);
  return { kind, label, obj, closed: false, ...fields };
}

/** Every live model object, by kind. Entries are removed when dropped (--gc-drop). */
export class Model {
  kvms = [];
  vms = [];
  files = []; // memfd and guest_memfd
  views = [];
  slots = [];
  vcpus = [];
  efds = [];
  listeners = []; // { owner: entry, unregister, kind, starts, ends }

  open(list) {
    return list.filter((e) => !e.closed);
  }

  /**
   * What can be seen of every object from outside, as one string: compared before and
   * after a failed call (which must change nothing).
   */
  observe() {
    const out = [];
    const get = (f) => {
      try {
        return fmt(f());
      } catch (e) {
        return `!${e?.code ?? e?.constructor?.name}`;
      }
    };
    for (const k of this.kvms) out.push(`${k.label}:${get(() => k.obj.closed)}`);
    for (const v of this.vms) {
      out.push(`${v.label}:${get(() => v.obj.closed)}`);
      if (!v.obj.closed) {
        out.push(get(() => v.obj.slots.map((s) => `${s.id}@${s.guestPhysAddr.toString(16)}+${s.size.toString(16)}`).join(',')));
        out.push(get(() => v.obj.guestMemfds.length), get(() => v.obj.vcpus.length), get(() => v.obj.notifier.size));
      }
    }
    for (const f of this.files) {
      out.push(`${f.label}:${get(() => f.obj.closed)}`);
      if (!f.obj.closed) {
        out.push(get(() => f.obj.size), get(() => f.obj.notifier.size));
        if (f.kind === 'memfd') out.push(get(() => f.obj.seals.join('|')));
      }
    }
    for (const w of this.views) out.push(`${w.label}:${get(() => w.obj.mapped)}:${get(() => w.obj.buffer.length)}:${get(() => w.obj.pinned)}`);
    for (const c of this.vcpus) out.push(`${c.label}:${get(() => c.obj.closed)}:${get(() => c.obj.running)}`);
    for (const e of this.efds) out.push(`${e.label}:${get(() => e.obj.closed)}`);
    return out.join(' ');
  }

  /**
   * Files disposed while slots used them close when the last such slot goes: after
   * slots went away, those must be closed now.
   */
  settleDisposed() {
    for (const f of this.files) {
      if (f.closed || !f.disposePending) continue;
      if (!this.slots.some((s) => !s.removed && s.files.includes(f))) this.markClosed(f);
    }
  }

  /** Marks `e` and everything it owns closed (the library's close cascades). */
  markClosed(e) {
    e.closed = true;
    if (e.kind === 'kvm') for (const v of this.vms) if (v.kvm === e) this.markClosed(v);
    if (e.kind === 'vm') {
      for (const f of this.files) if (f.vm === e) this.markClosed(f);
      for (const c of this.vcpus) if (c.vm === e) c.closed = true;
      for (const s of this.slots) if (s.vm === e) s.removed = true;
      this.settleDisposed();
    }
    if (e.kind === 'memfd' || e.kind === 'gmem') for (const w of this.views) if (w.file === e) w.closed = true;
  }

  /** Takes what the real objects say where the model cannot predict (after odd successes and races). */
  resync() {
    for (const list of [this.kvms, this.vms, this.files, this.vcpus, this.efds]) for (const e of list) e.closed = e.obj.closed;
    for (const w of this.views) w.closed = !w.obj.mapped;
    for (const s of this.slots) s.removed = s.obj.removed;
    for (const f of this.files) if (!f.closed) f.size = f.obj.size;
    this.settleDisposed();
  }

  /** Differences between the model and the real objects (empty: they agree). */
  disagreements() {
    const out = [];
    for (const list of [this.kvms, this.vms, this.files, this.vcpus, this.efds])
      for (const e of list) if (e.closed !== e.obj.closed) out.push(`${e.label}: model says closed=${e.closed}, object says ${e.obj.closed}`);
    for (const w of this.views) {
      if (w.closed === w.obj.mapped) out.push(`${w.label}: model says mapped=${!w.closed}, view says ${w.obj.mapped}`);
      if (!w.obj.mapped && w.obj.buffer.length !== 0) out.push(`${w.label}: unmapped view still has buffer.length ${w.obj.buffer.length}`);
      if (w.obj.mapped && w.obj.buffer.length !== w.length) out.push(`${w.label}: mapped view buffer.length ${w.obj.buffer.length}, expected ${w.length}`);
    }
    for (const s of this.slots) if (s.removed !== s.obj.removed) out.push(`${s.label}: model says removed=${s.removed}, slot says ${s.obj.removed}`);
    for (const v of this.vms) {
      if (v.obj.closed) continue;
      const real = new Set(v.obj.slots);
      for (const s of this.slots) if (s.vm === v && !s.removed && !real.has(s.obj)) out.push(`${s.label}: missing from ${v.label}.slots`);
      for (const s of v.obj.slots) if (!this.slots.some((m) => m.obj === s)) out.push(`${v.label}.slots has a slot the model never saw (${s.id})`);
    }
    for (const f of this.files) if (!f.closed && f.size !== undefined && f.obj.size !== f.size) out.push(`${f.label}: size ${f.obj.size}, model ${f.size}`);
    return out;
  }

  /**
   * Everything reachable from `start` through ownership and bindings: dropping it
   * (without close) must let the GC and the finalizers free all of it.
   */
  closure(start) {
    const set = new Set([start]);
    let grew = true;
    while (grew) {
      grew = false;
      const add = (e) => {
        if (e && !set.has(e)) {
          set.add(e);
          grew = true;
        }
      };
      for (const e of [...set]) {
        if (e.kind === 'kvm') for (const v of this.vms) if (v.kvm === e) add(v);
        if (e.kind === 'vm') {
          add(e.kvm);
          for (const f of this.files) if (f.vm === e) add(f);
          for (const s of this.slots) if (s.vm === e) add(s);
          for (const c of this.vcpus) if (c.vm === e) add(c);
        }
        if (e.kind === 'slot') {
          add(e.vm);
          for (const f of e.files) add(f);
          if (e.viewEntry) add(e.viewEntry);
        }
        if (e.kind === 'memfd' || e.kind === 'gmem') {
          if (e.vm) add(e.vm);
          for (const w of this.views) if (w.file === e) add(w);
          for (const s of this.slots) if (s.files.includes(e)) add(s);
        }
        if (e.kind === 'view') add(e.file);
        if (e.kind === 'vcpu') add(e.vm);
      }
    }
    return set;
  }

  drop(set) {
    for (const k of ['kvms', 'vms', 'files', 'views', 'slots', 'vcpus', 'efds']) this[k] = this[k].filter((e) => !set.has(e));
    this.listeners = this.listeners.filter((l) => !set.has(l.owner));
  }
}

/**
 * One seed's run: the PRNG, the model, the call trace, and `call()`, which runs one
 * public API call and checks what came of it.
 */
export class Context {
  constructor({ rng, trace, options }) {
    this.rng = rng;
    this.model = new Model();
    this.trace = trace;
    this.options = options;
    this.calls = 0;
    this.counts = { ok: 0, typed: 0, kernel: 0, own: 0 };
    this.byOp = {};
    this.hostileRate = options.hostileRate ?? 0.15;
    this.#bad = null;
  }

  #bad;

  fail(message, cause) {
    throw new FuzzFailure(message, cause);
  }

  check(ok, message) {
    if (!ok) this.fail(message);
  }

  // --- arguments: valid, or (at the seed's hostile rate) hostile, recording which ----

  #mark(cls) {
    if (cls === 'reject') this.#bad = 'reject';
    else if (this.#bad === null) this.#bad = cls;
  }

  /** Marks the current call as carrying an argument of class `cls` ('reject' or 'odd'). */
  mark(cls) {
    this.#mark(cls);
  }

  hostile() {
    return this.rng.chance(this.hostileRate);
  }

  /** `valid`, or a hostile number. `optional`: undefined is valid here too (never hostile). */
  num(valid, { small = false } = {}) {
    if (!this.hostile()) return valid;
    const [, v, cls] = hostileNumber(this.rng, { small });
    this.#mark(cls);
    return v;
  }

  /** `valid` as a number or as a bigint, at random (both are documented). */
  numOrBig(valid) {
    const v = this.rng.chance(0.3) ? BigInt(valid) : valid;
    return this.num(v);
  }

  str(valid) {
    if (!this.hostile()) return valid;
    const [, v, cls] = hostileString(this.rng);
    this.#mark(cls);
    return v;
  }

  obj(valid, classes = []) {
    if (!this.hostile()) return valid;
    // Forged objects (Object.create(X.prototype)) belong to the 'receiver' category.
    const [, v, cls] = hostileObject(this.rng, this.options.forged === false ? [] : classes);
    this.#mark(cls);
    return v;
  }

  /** Starts a new call's argument collection. */
  begin() {
    this.#bad = null;
  }

  /**
   * Runs `fn` (awaited if it returns a promise) as call `name(args)` and checks:
   * - a throw is a library error ('typed'), a kernel error, or the fuzzer's own;
   * - a call with a 'reject' argument throws a typed error (not success, not the kernel);
   * - a call on a closed `target` with valid arguments throws ERR_CLOSED;
   * - a failed call leaves every observable thing as it was (unless `mutates`).
   * Returns { ok, value } or { ok: false, error, kind }.
   */
  async call(name, args, fn, { target, mutates = false, allowUntypedOwn = false, closedMayAnswer = false } = {}) {
    const bad = this.#bad;
    this.#bad = null;
    const n = ++this.calls;
    const op = name.replace(/^[a-z]+\d+\./, '').replace(/\(.*$/, '');
    this.byOp[op] = (this.byOp[op] ?? 0) + 1;
    const closed = target?.closed === true;
    this.trace.call(n, `${name}(${args.map((a) => fmt(a)).join(', ')})${bad ? ` [${bad}]` : ''}${closed ? ' [closed]' : ''}`);
    if (this.options.crashAt === n) process.kill(process.pid, this.options.crashSignal ?? 'SIGSEGV');
    if (this.options.hangAt === n) for (;;);
    const before = this.model.observe();
    let result;
    try {
      let value = fn();
      if (value && typeof value.then === 'function') value = await value;
      result = { ok: true, value };
    } catch (error) {
      result = { ok: false, error, kind: classify(error) };
    }
    if (result.ok) {
      this.counts.ok++;
      this.trace.result(n, 'ok');
      if (bad === 'reject') this.fail(`#${n} ${name} accepted an argument it must refuse (it returned ${fmt(result.value)})`);
      if (closed && !bad && !closedMayAnswer) this.fail(`#${n} ${name} succeeded on closed ${target.label}`);
      return result;
    }
    const { error, kind } = result;
    this.trace.result(n, describeError(error));
    if (kind === 'untyped' && !allowUntypedOwn) this.fail(`#${n} ${name} threw an untyped error: ${describeError(error)}`, error);
    if (kind === 'kernel' && bad === 'reject')
      this.fail(`#${n} ${name} passed an argument it must refuse to the kernel: ${describeError(error)}`, error);
    if (closed && !bad && error?.code !== 'ERR_CLOSED') this.fail(`#${n} ${name} on closed ${target.label} threw ${describeError(error)}, not ERR_CLOSED`, error);
    this.counts[kind === 'untyped' ? 'own' : kind]++;
    if (!mutates) {
      const after = this.model.observe();
      if (after !== before) this.fail(`#${n} ${name} failed (${describeError(error)}) but changed state:\n  before: ${before}\n  after:  ${after}`);
    }
    return result;
  }

  /** After a call the model predicted: the model and the objects must agree. */
  reconcile(where) {
    const d = this.model.disagreements();
    if (d.length) this.fail(`after #${this.calls} ${where}: model and objects disagree:\n  ${d.join('\n  ')}`);
  }
}

export { gm };
