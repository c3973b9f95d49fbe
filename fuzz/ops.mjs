// The operations the fuzzer draws from: each picks its objects from the model,
// builds valid or hostile arguments, makes the call through ctx.call and then checks
// what the model predicts.
import { setTimeout as sleep } from 'node:timers/promises';
import { entry, gm } from './model.mjs';
import { OWN, fmt, hostileNumber, ownError, setLabel } from './values.mjs';

const PAGE = 4096;
const KiB64 = 0x10000;
const { Kvm, Memfd, GuestMemfd, MemoryFile, MemoryView, MemorySlot, Vm, Vcpu, Notifier, GuestMemory, EventFd, LapicState, DirtyBitmap, AttributeMap, guest } = gm;
const CLASSES = [Kvm, Vm, Memfd, GuestMemfd, MemoryView, MemorySlot, Vcpu, Notifier, GuestMemory, EventFd];

const LIMITS = { kvms: 2, vms: 4, files: 10, views: 14, vcpusPerVm: 3, efds: 3, listeners: 12 };

function pickOpen(ctx, list, filter = () => true) {
  const l = list.filter((e) => !e.closed && filter(e));
  return l.length ? ctx.rng.pick(l) : undefined;
}

/** An open object, or (sometimes) a closed one: calls on it must say ERR_CLOSED. */
function pickAny(ctx, list, filter = () => true) {
  const closed = list.filter((e) => e.closed && filter(e));
  if (closed.length && ctx.rng.chance(0.08)) return ctx.rng.pick(closed);
  return pickOpen(ctx, list, filter);
}

function pageMultiple(ctx, maxPages) {
  return ctx.rng.range(0, maxPages) * PAGE;
}

const files = (ctx) => ctx.model.files;

// --- Kvm and Vm ------------------------------------------------------------------

async function kvmOpen(ctx) {
  if (ctx.model.open(ctx.model.kvms).length >= LIMITS.kvms) return;
  ctx.begin();
  const args = ctx.rng.chance(0.9) ? [] : ['/dev/kvm'];
  if (args.length && ctx.rng.chance(0.6)) {
    // Paths the kernel refuses (a kernel error is the answer), and values that are no path at all.
    const [p, cls] = ctx.rng.pick([['/dev/null', 'odd'], ['/nonexistent/kvm', 'odd'], ['/dev/kvm/', 'odd'], ['/' + 'x'.repeat(5000), 'odd'], ['', 'odd'], ['/dev/kvm\0', 'reject'], [null, 'reject'], [42, 'reject'], [{}, 'reject']]);
    args[0] = p === '/dev/kvm\0' ? '/dev/kvm\0x' : p;
    ctx.mark(cls);
  }
  const r = await ctx.call('Kvm.open', args, () => Kvm.open(...args), { mutates: false });
  if (r.ok) {
    ctx.model.kvms.push(entry('kvm', r.value));
    ctx.check(typeof r.value.apiVersion === 'number' && r.value.apiVersion === 12, `Kvm.open: apiVersion ${r.value.apiVersion}`);
  }
}

async function kvmQuery(ctx) {
  const k = pickAny(ctx, ctx.model.kvms);
  if (!k) return;
  ctx.begin();
  switch (ctx.rng.int(4)) {
    case 0: {
      const cap = ctx.num(ctx.rng.pick([gm.Cap.GuestMemfd, gm.Cap.UserMemory2, gm.Cap.MemoryAttributes, 0, 1000]));
      const r = await ctx.call(`${k.label}.checkExtension`, [cap], () => k.obj.checkExtension(cap), { target: k });
      if (r.ok) ctx.check(typeof r.value === 'number', `checkExtension returned ${fmt(r.value)}`);
      return;
    }
    case 1:
      await ctx.call(`${k.label}.capabilities`, [], () => k.obj.capabilities(), { target: k });
      return;
    case 2:
      await ctx.call(`${k.label}.msrIndexList`, [], () => k.obj.msrIndexList(), { target: k });
      return;
    default: {
      const idx = ctx.rng.chance(0.8) ? [ctx.num(0x10a)] : ctx.obj([0x10a]);
      await ctx.call(`${k.label}.getMsrFeatures`, [idx], () => k.obj.getMsrFeatures(idx), { target: k });
    }
  }
}

async function createVm(ctx) {
  const k = pickAny(ctx, ctx.model.kvms);
  if (!k || ctx.model.open(ctx.model.vms).length >= LIMITS.vms) return;
  ctx.begin();
  let options = ctx.rng.pick([undefined, {}, { type: 'default' }]);
  if (ctx.hostile()) {
    const [o, cls] = ctx.rng.pick([[{ type: 'sw-protected' }, 'odd'], [{ type: 'snp' }, 'odd'], [{ type: 42 }, 'reject'], [{ type: 'nope' }, 'reject'], [null, 'reject'], ['default', 'reject'], [{ type: 'default\0' }, 'reject']]);
    options = o;
    ctx.mark(cls);
  }
  const r = await ctx.call(`${k.label}.createVm`, [options], () => k.obj.createVm(options), { target: k });
  if (r.ok) {
    ctx.model.vms.push(entry('vm', r.value, { kvm: k, populateVeto: 0 }));
    ctx.check(r.value.kvm === k.obj, 'vm.kvm is not the Kvm that created it');
  }
}

async function vmQuery(ctx) {
  const v = pickAny(ctx, ctx.model.vms);
  if (!v) return;
  ctx.begin();
  switch (ctx.rng.int(5)) {
    case 0: {
      const cap = ctx.num(ctx.rng.pick([gm.Cap.GuestMemfdFlags, gm.Cap.MemoryAttributes, gm.Cap.NrMemslots]));
      await ctx.call(`${v.label}.checkExtension`, [cap], () => v.obj.checkExtension(cap), { target: v });
      return;
    }
    case 1:
      await ctx.call(`${v.label}.capabilities`, [], () => v.obj.capabilities(), { target: v });
      return;
    case 2: {
      const gpa = ctx.numOrBig(ctx.rng.range(0, 40) * KiB64);
      // A lookup in the library's own table: on a closed VM it may answer (no slots) or say ERR_CLOSED.
      const r = await ctx.call(`${v.label}.slotAt`, [gpa], () => v.obj.slotAt(gpa), { target: v, closedMayAnswer: true });
      if (r.ok && v.closed) ctx.check(r.value === undefined, `${v.label}.slotAt on a closed VM found a slot`);
      if (r.ok && r.value !== undefined) ctx.check(ctx.model.slots.some((s) => s.obj === r.value && !s.removed), 'slotAt returned a slot the model does not know as live');
      return;
    }
    case 3: {
      const gpa = ctx.numOrBig(ctx.rng.range(0, 40) * KiB64);
      const a = ctx.num(ctx.rng.pick([0, gm.MemoryAttribute.Private]));
      await ctx.call(`${v.label}.setMemoryAttributes`, [gpa, KiB64, a], () => v.obj.setMemoryAttributes(gpa, KiB64, a), { target: v });
      return;
    }
    default: {
      const gpa = ctx.numOrBig(ctx.rng.range(0, 40) * KiB64);
      const to = ctx.str(ctx.rng.pick(['private', 'shared']));
      await ctx.call(`${v.label}.convert`, [gpa, KiB64, to], () => v.obj.convert(gpa, KiB64, to), { target: v });
    }
  }
}

async function rawRegion(ctx) {
  const v = pickAny(ctx, ctx.model.vms);
  if (!v) return;
  ctx.begin();
  // Always refused: a slot id above every slot the library uses, with an unaligned
  // GPA, size or address, or flags the kernel does not know.
  const region = {
    slot: 30000 + ctx.rng.int(100),
    flags: ctx.rng.pick([0, 1 << 20]),
    guestPhysAddr: ctx.rng.pick([1, 4095, 0x100000]),
    memorySize: ctx.rng.pick([PAGE, 1, 0]),
    userspaceAddr: ctx.rng.pick([1n, 0x1000n]),
  };
  if (region.flags === 0 && region.guestPhysAddr === 0x100000 && region.memorySize === PAGE) region.memorySize = 1;
  if (region.memorySize === 0) region.guestPhysAddr = 1;
  const keys = Object.keys(region);
  let replaced = false;
  if (ctx.hostile()) {
    const [, value, cls] = hostileNumber(ctx.rng);
    region[ctx.rng.pick(keys)] = value;
    ctx.mark(cls);
    replaced = true;
  }
  ctx.mark('odd');
  const r = await ctx.call(`${v.label}.setUserMemoryRegion2`, [region], () => v.obj.setUserMemoryRegion2(region), { target: v });
  // A replaced field can make the region valid (e.g. GPA 1 -> 0n): the kernel then has a
  // slot the library does not track; delete it again (size 0) so the model stays true.
  if (r.ok && replaced) {
    const del = { ...region, memorySize: 0 };
    const d = await ctx.call(`${v.label}.setUserMemoryRegion2`, [del], () => v.obj.setUserMemoryRegion2(del), { target: v });
    ctx.check(d.ok, `deleting raw slot ${fmt(region.slot)} failed`);
  } else ctx.check(!r.ok, `setUserMemoryRegion2 accepted an invalid region ${fmt(region)}`);
}

async function closeKvmOrVm(ctx) {
  const list = ctx.rng.chance(0.3) ? ctx.model.kvms : ctx.model.vms;
  const e = pickAny(ctx, list);
  if (!e) return;
  ctx.begin();
  const how = ctx.rng.pick(['close', 'dispose']);
  const r = await ctx.call(`${e.label}.${how}`, [], () => (how === 'close' ? e.obj.close() : e.obj[Symbol.dispose]()), { target: e.closed ? undefined : e, mutates: true });
  if (r.ok) {
    ctx.model.markClosed(e);
    ctx.reconcile(`${e.label}.${how}`);
  } else ctx.model.resync();
}

// --- files ---------------------------------------------------------------------------

async function memfdCreate(ctx) {
  if (ctx.model.open(files(ctx)).length >= LIMITS.files) return;
  ctx.begin();
  const name = ctx.str(ctx.rng.pick(['ram', 'guest', '', 'x'.repeat(249), 'ünïcode']));
  const size = ctx.numOrBig(pageMultiple(ctx, 64));
  const options = { size };
  if (ctx.rng.chance(0.5)) options.allowSealing = ctx.rng.chance(0.2) ? ctx.obj(true) : true;
  if (ctx.rng.chance(0.15)) options.shrinkable = true;
  if (ctx.rng.chance(0.05)) options.hugetlb = ctx.str('2MB'), ctx.mark('odd');
  if (ctx.rng.chance(0.05)) options.secret = true, ctx.mark('odd');
  if (ctx.rng.chance(0.05)) options.bogus = 1, ctx.mark('odd');
  const args = ctx.rng.chance(0.05) ? [name, ctx.obj(options)] : [name, options];
  const r = await ctx.call('Memfd.create', args, () => Memfd.create(...args));
  if (r.ok) {
    const f = r.value;
    ctx.model.files.push(entry('memfd', f, { size: f.size, sealable: !!options.allowSealing }));
    if (typeof size === 'number' || typeof size === 'bigint') {
      if (Number(size) % PAGE === 0 && !options.hugetlb && !options.secret) ctx.check(f.size === Number(size), `Memfd.create size ${fmt(size)} gave size ${f.size}`);
    }
  }
}

async function gmemCreate(ctx) {
  const v = pickAny(ctx, ctx.model.vms);
  if (!v || ctx.model.open(files(ctx)).length >= LIMITS.files) return;
  ctx.begin();
  const size = ctx.numOrBig(pageMultiple(ctx, 64) || PAGE);
  let r;
  if (ctx.rng.chance(0.8)) {
    const mmap = ctx.rng.chance(0.85);
    const options = { size, mmap, initShared: mmap && ctx.rng.chance(0.9) };
    if (ctx.rng.chance(0.05)) options.initShared = ctx.obj(true);
    r = await ctx.call(`${v.label}.createGuestMemfd`, [options], () => v.obj.createGuestMemfd(options), { target: v });
  } else {
    const flags = ctx.num(ctx.rng.pick([0, 1, 3, 4]));
    if (flags === 4) ctx.mark('odd');
    r = await ctx.call(`${v.label}.createGuestMemfdRaw`, [size, flags], () => v.obj.createGuestMemfdRaw(size, flags), { target: v });
  }
  if (r.ok) {
    const f = r.value;
    ctx.model.files.push(entry('gmem', f, { vm: v, size: f.size }));
    ctx.check(v.obj.guestMemfds.includes(f), `${v.label}.guestMemfds lacks the new guest_memfd`);
  }
}

/** A valid [offset, length] in the file, page aligned (length may be undefined: to the end). */
function rangeIn(ctx, f) {
  // At most the first 1 MiB: a file grown huge (sparse) must not be allocated or filled whole.
  const pages = Math.min(256, Math.max(0, Math.floor((f.size ?? 0) / PAGE)));
  const first = ctx.rng.range(0, Math.max(0, pages - 1));
  const n = ctx.rng.range(1, Math.max(1, pages - first));
  return [first * PAGE, n * PAGE];
}

async function fileMap(ctx) {
  const f = pickAny(ctx, files(ctx));
  if (!f || ctx.model.open(ctx.model.views).length >= LIMITS.views) return;
  ctx.begin();
  let [off, len] = rangeIn(ctx, f);
  const args = ctx.rng.chance(0.2) ? [] : ctx.rng.chance(0.2) ? [ctx.numOrBig(off)] : [ctx.numOrBig(off), ctx.numOrBig(len)];
  if (args.length === 0) [off, len] = [0, f.size];
  if (args.length === 1) len = f.size - off;
  if ((f.size ?? 0) === 0) ctx.mark('odd');
  const r = await ctx.call(`${f.label}.map`, args, () => f.obj.map(...args), { target: f });
  if (r.ok) {
    const view = r.value;
    const w = entry('view', view, { file: f, offset: view.offset, length: view.length });
    ctx.model.views.push(w);
    ctx.check(view.buffer.length === view.length, `${w.label}: buffer.length ${view.buffer.length} != length ${view.length}`);
    ctx.check(view.mapped === true, `${w.label}: a new view is not mapped`);
    const isNum = (x) => typeof x === 'number' || typeof x === 'bigint';
    if (args.length === 2 && isNum(args[0]) && isNum(args[1]))
      ctx.check(view.offset === Number(args[0]) && view.length === Number(args[1]), `${w.label}: map(${fmt(args[0])}, ${fmt(args[1])}) gave offset ${view.offset} length ${view.length}`);
  }
}

async function viewAccess(ctx) {
  const w = pickOpen(ctx, ctx.model.views);
  if (!w || w.length === 0) return;
  // Write through one view and read the same file range through every other view
  // that covers it: they map the same pages.
  const at = ctx.rng.int(w.length);
  const n = Math.min(ctx.rng.range(1, 64), w.length - at);
  const data = ctx.rng.bytes(n);
  ctx.begin();
  const r = await ctx.call(`${w.label}.buffer.set`, [`<${n} bytes>`, at], () => data.copy(w.obj.buffer, at), { target: w });
  if (!r.ok) return;
  const fileOff = w.offset + at;
  for (const o of ctx.model.views) {
    if (o === w || o.closed || o.file !== w.file) continue;
    if (fileOff < o.offset || fileOff + n > o.offset + o.length) continue;
    const got = o.obj.buffer.subarray(fileOff - o.offset, fileOff - o.offset + n);
    ctx.check(got.equals(data), `${o.label} does not see what ${w.label} wrote at file offset ${fileOff}`);
  }
}

async function viewUnmap(ctx) {
  const w = pickAny(ctx, ctx.model.views);
  if (!w) return;
  ctx.begin();
  const how = ctx.rng.pick(['unmap', 'dispose']);
  const r = await ctx.call(`${w.label}.${how}`, [], () => (how === 'unmap' ? w.obj.unmap() : w.obj[Symbol.dispose]()), { target: w.closed ? undefined : w });
  if (r.ok) {
    w.closed = true;
    ctx.check(w.obj.buffer.length === 0, `${w.label}: buffer.length ${w.obj.buffer.length} after ${how}`);
    ctx.reconcile(`${w.label}.${how}`);
  } else ctx.check(r.error?.code === 'ERR_IN_USE' && w.obj.pinned, `${w.label}.${how} refused: ${r.error?.code} (pinned=${w.obj.pinned})`);
}

async function viewQuery(ctx) {
  const w = pickAny(ctx, ctx.model.views);
  if (!w) return;
  ctx.begin();
  if (ctx.rng.chance(0.5)) {
    const off = ctx.numOrBig(0);
    await ctx.call(`${w.label}.getMemoryPolicy`, [off], () => w.obj.getMemoryPolicy(off), { target: w });
  } else {
    const off = ctx.numOrBig(0);
    const len = ctx.numOrBig(Math.min(w.length, 4 * PAGE));
    const r = await ctx.call(`${w.label}.pageNodes`, [off, len], () => w.obj.pageNodes(off, len), { target: w });
    if (r.ok) ctx.check(Array.isArray(r.value), 'pageNodes did not return an array');
  }
}

async function fileAllocate(ctx) {
  const f = pickAny(ctx, files(ctx));
  if (!f) return;
  ctx.begin();
  const [off, len] = rangeIn(ctx, f);
  // No huge lengths here: fallocate would really allocate them (and wake the OOM killer).
  const a = [ctx.numOrBig(off), ctx.num(len, { small: true })];
  if (!f.size) ctx.mark('odd');
  await ctx.call(`${f.label}.allocate`, a, () => f.obj.allocate(...a), { target: f });
}

async function filePunch(ctx) {
  const f = pickAny(ctx, files(ctx));
  if (!f) return;
  ctx.begin();
  const [off, len] = rangeIn(ctx, f);
  const many = ctx.rng.chance(0.2);
  const a = [ctx.numOrBig(off), ctx.numOrBig(len)];
  if (!f.size) ctx.mark('odd');
  // Fill what the views see of the range, so the punch is visible.
  for (const w of ctx.model.views) {
    if (w.closed || w.file !== f) continue;
    const s = Math.max(off, w.offset);
    const e = Math.min(off + len, w.offset + w.length);
    if (s < e) w.obj.buffer.fill(0xa5, s - w.offset, e - w.offset);
  }
  const r = many
    ? await ctx.call(`${f.label}.punchHoles`, [[a]], () => f.obj.punchHoles([a]), { target: f })
    : await ctx.call(`${f.label}.punchHole`, a, () => f.obj.punchHole(...a), { target: f });
  checkListenerPairs(ctx);
  // Hostile arguments that were accepted: the range is what was asked, not what was planned.
  if (!r.ok || a.some((x) => typeof x !== 'number' && typeof x !== 'bigint') || Number(a[0]) !== off || Number(a[1]) !== len) return;
  for (const w of ctx.model.views) {
    if (w.closed || w.file !== f) continue;
    const s = Math.max(off, w.offset);
    const e = Math.min(off + len, w.offset + w.length);
    if (s >= e) continue;
    const got = w.obj.buffer.subarray(s - w.offset, e - w.offset);
    ctx.check(got.every((b) => b === 0), `${w.label} still sees data in punched range ${fmt(off)}+${fmt(len)} of ${f.label}`);
  }
}

async function memfdTruncate(ctx) {
  const f = pickAny(ctx, files(ctx), (e) => e.kind === 'memfd');
  if (!f) return;
  ctx.begin();
  const target = ctx.numOrBig(pageMultiple(ctx, 80));
  const seals = f.closed ? [] : f.obj.seals;
  const old = f.size;
  const r = await ctx.call(`${f.label}.truncate`, [target], () => f.obj.truncate(target), { target: f });
  checkListenerPairs(ctx);
  if (r.ok) {
    const n = Number(target);
    if (typeof target === 'number' || typeof target === 'bigint') {
      ctx.check(f.obj.size === n, `${f.label}.truncate(${fmt(target)}) left size ${f.obj.size}`);
      if (n > old) ctx.check(!seals.includes('grow'), `${f.label} grew from ${old} to ${n} despite a grow seal`);
      if (n < old) {
        ctx.check(!seals.includes('shrink'), `${f.label} shrank from ${old} to ${n} despite a shrink seal`);
        for (const w of ctx.model.views)
          if (!w.closed && w.file === f) ctx.check(w.offset + w.length <= n, `${f.label} shrank to ${n} under live view ${w.label} (${w.offset}+${w.length})`);
      }
    }
    f.size = f.obj.size;
    ctx.check(f.obj.stat().size === f.size, `${f.label}: stat().size ${f.obj.stat().size} != size ${f.size}`);
  }
}

async function memfdSeal(ctx) {
  const f = pickAny(ctx, files(ctx), (e) => e.kind === 'memfd');
  if (!f) return;
  ctx.begin();
  const names = ['shrink', 'grow', 'seal', 'write', 'future-write', 'exec'];
  const list = [];
  const n = ctx.rng.range(1, 2);
  for (let i = 0; i < n; i++) list.push(ctx.str(ctx.rng.weighted([[6, 'shrink'], [6, 'grow'], [1, 'seal'], [1, 'write'], [1, 'future-write'], [1, 'exec']])));
  const arg = ctx.rng.chance(0.05) ? ctx.obj(list) : list;
  const before = f.closed ? [] : f.obj.seals;
  const r = await ctx.call(`${f.label}.seal`, [arg], () => f.obj.seal(arg), { target: f });
  if (r.ok && Array.isArray(arg)) {
    const now = f.obj.seals;
    for (const s of arg) if (typeof s === 'string' && names.includes(s)) ctx.check(now.includes(s), `${f.label}.seal(${fmt(arg)}) but seals are ${fmt(now)}`);
    for (const s of before) ctx.check(now.includes(s), `${f.label} lost seal ${s}`);
  }
}

async function fileStat(ctx) {
  const f = pickAny(ctx, files(ctx));
  if (!f) return;
  ctx.begin();
  const r = await ctx.call(`${f.label}.stat`, [], () => f.obj.stat(), { target: f });
  if (r.ok) ctx.check(r.value.size === f.obj.size, `${f.label}.stat().size ${r.value.size} != size ${f.obj.size}`);
}

async function fileClose(ctx) {
  const f = pickAny(ctx, files(ctx));
  if (!f) return;
  ctx.begin();
  const how = ctx.rng.pick(['close', 'closeAsync', 'dispose', 'asyncDispose']);
  const call = { close: () => f.obj.close(), closeAsync: () => f.obj.closeAsync(), dispose: () => f.obj[Symbol.dispose](), asyncDispose: () => f.obj[Symbol.asyncDispose]() }[how];
  const bound = boundSlots(ctx, f);
  const r = await ctx.call(`${f.label}.${how}`, [], call, { target: f.closed ? undefined : f });
  checkListenerPairs(ctx);
  if (r.ok) {
    if (bound.length && !f.closed) {
      // Dispose of a file a slot still uses: it closes when the slot goes.
      ctx.check(how.includes('ispose') ? !f.obj.closed : false, `${f.label}.${how} succeeded while slots ${bound.map((s) => s.label)} use it (closed=${f.obj.closed})`);
      f.disposePending = true;
      return;
    }
    ctx.model.markClosed(f);
    ctx.reconcile(`${f.label}.${how}`);
  } else ctx.check(r.error?.code === 'ERR_IN_USE' && bound.length > 0, `${f.label}.${how} refused (${r.error?.code}) with no slot using it`);
}

function boundSlots(ctx, f) {
  return ctx.model.slots.filter((s) => !s.removed && s.files.includes(f));
}

// --- memory slots ------------------------------------------------------------------

function slotOptions(ctx, v) {
  const gpa = ctx.rng.chance(0.3) ? 0 : ctx.rng.range(0, 40) * KiB64;
  const size = ctx.rng.pick([PAGE, KiB64, 2 * KiB64, 4 * KiB64]);
  const o = { guestPhysAddr: ctx.numOrBig(gpa), size: ctx.numOrBig(size) };
  const fileEntries = [];
  let viewEntry;
  const kind = ctx.rng.weighted([[3, 'anonymous'], [4, 'memfd'], [2, 'view'], [2, 'gmem-userspace'], [1, 'none']]);
  if (kind === 'anonymous') o.userspace = 'anonymous';
  else if (kind === 'memfd' || kind === 'gmem-userspace') {
    const f = pickAny(ctx, files(ctx), (e) => (kind === 'memfd' ? e.kind === 'memfd' : e.kind === 'gmem' && e.vm === v));
    if (f) {
      o.userspace = ctx.obj(f.obj, CLASSES);
      if (o.userspace === f.obj) fileEntries.push(f);
      if (ctx.rng.chance(0.3)) o.userspaceOffset = ctx.numOrBig(pageMultiple(ctx, 16));
    } else o.userspace = 'anonymous';
  } else if (kind === 'view') {
    const w = pickOpen(ctx, ctx.model.views);
    if (w) {
      o.userspace = w.obj;
      viewEntry = w;
      fileEntries.push(w.file);
    } else o.userspace = 'anonymous';
  }
  if (ctx.rng.chance(0.35)) {
    const g = pickAny(ctx, files(ctx), (e) => e.kind === 'gmem' && (e.vm === v || ctx.rng.chance(0.1)));
    if (g) {
      o.guestMemfd = { file: ctx.obj(g.obj, CLASSES), offset: ctx.numOrBig(pageMultiple(ctx, 16)) };
      if (o.guestMemfd.file === g.obj && !fileEntries.includes(g)) fileEntries.push(g);
    }
  }
  if (ctx.rng.chance(0.1)) o.readonly = true;
  if (ctx.rng.chance(0.15)) o.logDirtyPages = true;
  if (ctx.rng.chance(0.05)) o.slot = ctx.num(ctx.rng.range(0, 40));
  if (ctx.rng.chance(0.03)) o.addressSpace = ctx.num(ctx.rng.pick([0, 1])), ctx.mark('odd');
  return { o, fileEntries, viewEntry };
}

async function addSlot(ctx) {
  const v = pickAny(ctx, ctx.model.vms);
  if (!v) return;
  ctx.begin();
  const { o, fileEntries, viewEntry } = slotOptions(ctx, v);
  const async = ctx.rng.chance(0.3);
  const arg = ctx.rng.chance(0.03) ? ctx.obj(o) : o;
  const name = `${v.label}.${async ? 'addMemorySlotAsync' : 'addMemorySlot'}`;
  const r = await ctx.call(name, [arg], () => (async ? v.obj.addMemorySlotAsync(arg) : v.obj.addMemorySlot(arg)), { target: v });
  checkListenerPairs(ctx);
  if (r.ok) {
    const s = r.value;
    ctx.model.slots.push(entry('slot', s, { vm: v, files: fileEntries, viewEntry, removed: false }));
    ctx.check(v.obj.slots.includes(s), `${name}: the new slot is not in vm.slots`);
    if (typeof o.guestPhysAddr !== 'object') ctx.check(s.guestPhysAddr === BigInt(o.guestPhysAddr), `${name}: slot at ${s.guestPhysAddr}, asked ${o.guestPhysAddr}`);
    ctx.check(s.vm === v.obj, `${name}: slot.vm is not the VM`);
    if (viewEntry) ctx.check(viewEntry.obj.pinned, `${viewEntry.label} is a slot's memory but not pinned`);
    ctx.reconcile(name);
  }
}

async function removeSlot(ctx) {
  const v = pickAny(ctx, ctx.model.vms);
  if (!v) return;
  const mine = ctx.model.slots.filter((s) => s.vm === v);
  let s = mine.find((x) => !x.removed && ctx.rng.chance(0.7)) ?? ctx.rng.pick(ctx.model.slots.length ? ctx.model.slots : [undefined]);
  ctx.begin();
  let arg = s?.obj;
  if (!s || ctx.hostile()) {
    arg = ctx.rng.pick([null, {}, Object.create(MemorySlot.prototype), 7]);
    ctx.mark('reject');
    s = undefined;
  }
  const expectOk = s && s.vm === v && !s.removed && !v.closed;
  // Another VM's slot, or a removed one, is a bad argument (which may be reported before ERR_CLOSED).
  if (s && !(s.vm === v && !s.removed)) ctx.mark('odd');
  const move = ctx.rng.chance(0.3);
  const to = move ? ctx.numOrBig(ctx.rng.range(0, 40) * KiB64) : undefined;
  const name = `${v.label}.${move ? 'moveMemorySlot' : 'removeMemorySlot'}`;
  const args = move ? [arg, to] : [arg];
  const r = await ctx.call(name, args, () => (move ? v.obj.moveMemorySlot(arg, to) : v.obj.removeMemorySlot(arg)), { target: v });
  checkListenerPairs(ctx);
  if (r.ok) {
    ctx.check(!!s && s.vm === v && !s.removed, `${name} accepted slot ${s?.label ?? fmt(arg)} that is not a live slot of ${v.label}`);
    if (move) {
      ctx.check(r.value instanceof MemorySlot && r.value.guestPhysAddr === BigInt(to) && !r.value.removed, `${name} returned ${fmt(r.value)}`);
      if (r.value !== s.obj) {
        s.removed = true;
        ctx.model.slots.push(entry('slot', r.value, { vm: v, files: s.files, viewEntry: s.viewEntry, removed: false }));
      }
    } else s.removed = true;
    ctx.model.settleDisposed();
    ctx.reconcile(name);
  } else if (expectOk && !move) ctx.check(r.kind === 'own', `${name}(${s.label}) of a live slot failed: ${r.error?.code} ${r.error?.message}`);
}

async function guestMemory(ctx) {
  const v = pickAny(ctx, ctx.model.vms);
  if (!v) return;
  ctx.begin();
  const live = v.closed ? [] : v.obj.slots;
  const slot = live.length && ctx.rng.chance(0.85) ? ctx.rng.pick(live) : undefined;
  const base = slot ? Number(slot.guestPhysAddr) : ctx.rng.range(0, 40) * KiB64;
  const span = slot ? Number(slot.size) : KiB64;
  const at = base + ctx.rng.int(span);
  const n = ctx.rng.range(1, Math.min(256, base + span - at));
  const gpa = ctx.numOrBig(at);
  switch (ctx.rng.int(4)) {
    case 0: {
      const data = ctx.rng.bytes(n);
      const arg = ctx.rng.chance(0.05) ? ctx.obj(data) : data;
      const w = await ctx.call(`${v.label}.memory.write`, [gpa, arg], () => v.obj.memory.write(gpa, arg), { target: v });
      if (w.ok && arg === data && typeof gpa !== 'object') {
        const back = v.obj.memory.read(gpa, n);
        ctx.check(Buffer.from(back).equals(data), `${v.label}.memory.read after write at ${fmt(at)} gave different bytes`);
      }
      return;
    }
    case 1: {
      const len = ctx.numOrBig(n);
      const r = await ctx.call(`${v.label}.memory.read`, [gpa, len], () => v.obj.memory.read(gpa, len), { target: v });
      if (r.ok) ctx.check(r.value.length === Number(len), `memory.read gave ${r.value.length} bytes, asked ${fmt(len)}`);
      return;
    }
    case 2: {
      const target = ctx.rng.chance(0.9) ? Buffer.alloc(n) : ctx.obj(new Uint8Array(n));
      await ctx.call(`${v.label}.memory.readInto`, [gpa, target], () => v.obj.memory.readInto(gpa, target), { target: v });
      return;
    }
    default: {
      const len = ctx.numOrBig(n);
      await ctx.call(`${v.label}.memory.view`, [gpa, len], () => v.obj.memory.view(gpa, len), { target: v });
    }
  }
}

async function dirtyLog(ctx) {
  const s = ctx.rng.pick(ctx.model.slots.length ? ctx.model.slots : [undefined]);
  if (!s) return;
  ctx.begin();
  const target = s.vm.closed || s.removed ? undefined : s.vm;
  const r = await ctx.call(`${s.label}.getDirtyLog`, [], () => s.obj.getDirtyLog(), { target });
  if (r.ok) {
    ctx.check(s.obj.logDirtyPages, `${s.label}.getDirtyLog succeeded without logDirtyPages`);
    ctx.check(r.value.pages === Number(s.obj.size) / PAGE, `${s.label}: dirty bitmap of ${r.value.pages} pages for ${s.obj.size} bytes`);
    r.value.dirtyPages();
  }
}

// --- notifiers --------------------------------------------------------------------

function recordingListener(rec) {
  return {
    invalidateStart() { rec.starts++; },
    invalidateEnd() { rec.ends++; },
  };
}

/**
 * Every recording listener has heard as many ends as starts once a call is done
 * (starts are never left hanging, whatever the other listeners did).
 */
function checkListenerPairs(ctx) {
  for (const l of ctx.model.listeners)
    if (l.rec && l.rec.starts !== l.rec.ends) ctx.fail(`listener ${l.label} on ${l.owner.label} heard ${l.rec.starts} invalidateStart but ${l.rec.ends} invalidateEnd`);
}

async function registerListener(ctx) {
  const owner = ctx.rng.chance(0.6) ? pickAny(ctx, files(ctx)) : pickAny(ctx, ctx.model.vms);
  if (!owner || ctx.model.listeners.length >= LIMITS.listeners) return;
  ctx.begin();
  const kind = ctx.rng.pick(['record', 'throw', 'async', 'getter-bomb', 'veto', 'async-populate', 'onError-throws', 'onError-async', 'hostile']);
  let listener;
  const rec = { starts: 0, ends: 0 };
  let arm;
  switch (kind) {
    case 'record': listener = recordingListener(rec); break;
    case 'throw': listener = { invalidateStart() { throw ownError('invalidateStart'); }, invalidateEnd() { throw ownError('invalidateEnd'); } }; break;
    case 'async': listener = {
      async invalidateStart() { await sleep(1); },
      async invalidateEnd() { await sleep(0); throw ownError('async invalidateEnd'); },
      async populate() { await sleep(0); },
    }; break;
    case 'getter-bomb': {
      const state = { armed: false };
      arm = () => { state.armed = true; };
      listener = {
        get invalidateStart() { if (state.armed) throw ownError('getter'); return () => undefined; },
        get populate() { if (state.armed) throw ownError('getter'); return undefined; },
      };
      break;
    }
    case 'veto': {
      const state = { n: 0 };
      listener = { populate() { if (++state.n % 2 === 1) throw ownError('populate veto'); } };
      break;
    }
    case 'async-populate': listener = { async populate() { await sleep(0); } }; break;
    case 'hostile': {
      const [, value, cls] = ctx.rng.pick([
        ['null', null, 'reject'], ['42', 42, 'reject'], ['fn', () => 0, 'reject'],
        ['{ invalidateStart: 1 }', { invalidateStart: 1 }, 'reject'],
        ['{ populate: "x" }', { populate: 'x' }, 'reject'],
      ]);
      listener = value;
      ctx.mark(cls);
      break;
    }
    default: listener = recordingListener(rec);
  }
  const onError = kind === 'onError-throws' ? () => { throw ownError('onError'); } : kind === 'onError-async' ? async () => { await sleep(0); throw ownError('async onError'); } : undefined;
  const replay = ctx.rng.chance(0.2) ? { replay: true } : undefined;
  const notifier = owner.closed ? null : owner.obj.notifier;
  if (!notifier) return;
  const args = replay ? [listener, replay] : [listener];
  const r = await ctx.call(`${owner.label}.notifier.register`, args, () => notifier.register(...args));
  if (onError) notifier.onError = onError;
  if (r.ok) {
    const unregister = r.value;
    ctx.check(typeof unregister === 'function', 'register did not return an unregister function');
    arm?.();
    const label = `L${ctx.model.listeners.length + 1}`;
    setLabel(unregister, `${label}.unregister`);
    ctx.model.listeners.push({ label, owner, unregister, rec: kind === 'record' || kind === 'onError-throws' || kind === 'onError-async' ? rec : undefined });
  }
}

async function unregisterListener(ctx) {
  if (!ctx.model.listeners.length) return;
  const i = ctx.rng.int(ctx.model.listeners.length);
  const l = ctx.model.listeners[i];
  ctx.begin();
  await ctx.call(`${l.label}.unregister`, [], () => l.unregister());
  ctx.model.listeners.splice(i, 1);
  // Twice is harmless.
  if (ctx.rng.chance(0.3)) await ctx.call(`${l.label}.unregister`, [], () => l.unregister());
}

// --- vCPUs and guests ---------------------------------------------------------------

async function createVcpu(ctx) {
  const v = pickAny(ctx, ctx.model.vms);
  if (!v) return;
  const mine = ctx.model.vcpus.filter((c) => c.vm === v && !c.closed);
  if (mine.length >= LIMITS.vcpusPerVm) return;
  ctx.begin();
  const used = new Set(mine.map((c) => c.obj.id));
  let id = 0;
  while (used.has(id)) id++;
  if (ctx.rng.chance(0.1) && used.size) id = [...used][0], ctx.mark('odd');
  id = ctx.num(id);
  const r = await ctx.call(`${v.label}.createVcpu`, [id], () => v.obj.createVcpu(id), { target: v });
  if (r.ok) {
    ctx.model.vcpus.push(entry('vcpu', r.value, { vm: v }));
    ctx.check(v.obj.vcpus.includes(r.value), 'vm.vcpus lacks the new vCPU');
  }
}

async function vcpuState(ctx) {
  const c = pickAny(ctx, ctx.model.vcpus);
  if (!c) return;
  ctx.begin();
  switch (ctx.rng.int(7)) {
    case 0: await ctx.call(`${c.label}.getRegs`, [], () => c.obj.getRegs(), { target: c }); return;
    case 1: {
      const regs = { [ctx.rng.pick(['rax', 'rbx', 'rsp', 'rip', 'rflags'])]: ctx.num(ctx.rng.pick([0n, 2n, 0x1000n])) };
      await ctx.call(`${c.label}.setRegs`, [regs], () => c.obj.setRegs(regs), { target: c, mutates: true });
      return;
    }
    case 2: await ctx.call(`${c.label}.getSregs`, [], () => c.obj.getSregs(), { target: c }); return;
    case 3: {
      const st = ctx.str(ctx.rng.pick(['runnable', 'halted']));
      await ctx.call(`${c.label}.setMpState`, [st], () => c.obj.setMpState(st), { target: c, mutates: true });
      return;
    }
    case 4: await ctx.call(`${c.label}.getMpState`, [], () => c.obj.getMpState(), { target: c }); return;
    case 5: {
      const idx = [ctx.num(0x174)];
      await ctx.call(`${c.label}.getMsrs`, [idx], () => c.obj.getMsrs(idx), { target: c });
      return;
    }
    default: {
      const gpa = ctx.numOrBig(0);
      await ctx.call(`${c.label}.preFault`, [gpa, PAGE], () => c.obj.preFault(gpa, PAGE), { target: c });
    }
  }
}

/** A VM whose slots cover GPA 0x1000..0x8000 with writable memory, and one of its vCPUs. */
function guestTarget(ctx) {
  const ok = (v) => {
    if (v.closed) return false;
    for (const gpa of [0x1000, 0x4000, 0x5000, 0x7fff]) {
      const s = v.obj.slotAt(gpa);
      if (!s || s.readonly) return false;
    }
    return true;
  };
  const v = pickOpen(ctx, ctx.model.vms, ok);
  if (!v) return undefined;
  const c = pickOpen(ctx, ctx.model.vcpus, (e) => e.vm === v && !e.obj.running);
  return c ? { v, c } : undefined;
}

const EXPECTED_EXITS = new Set(['io', 'hlt']);

async function guestRun(ctx) {
  const t = guestTarget(ctx);
  if (!t) {
    // Make one: a VM, an anonymous slot at GPA 0, a vCPU.
    const v = pickOpen(ctx, ctx.model.vms);
    if (!v) return;
    if (!v.obj.slotAt(0) && !v.obj.slotAt(0x7fff)) {
      ctx.begin();
      const o = { guestPhysAddr: 0, size: KiB64, userspace: 'anonymous' };
      const r = await ctx.call(`${v.label}.addMemorySlot`, [o], () => v.obj.addMemorySlot(o), { target: v });
      checkListenerPairs(ctx);
      if (r.ok) ctx.model.slots.push(entry('slot', r.value, { vm: v, files: [], removed: false }));
    }
    if (!ctx.model.vcpus.some((c) => c.vm === v && !c.closed)) await createVcpu(ctx);
    return;
  }
  const { v, c } = t;
  const port = ctx.rng.pick([0x3f8, 0x80, 0xe9, 0x1234]);
  const kind = ctx.rng.weighted([[3, 'outLoop'], [3, 'hello'], [3, 'read'], [3, 'write'], [1, 'timeout'], [1, 'kick'], [1, 'abort']]);
  let program;
  ctx.begin();
  let expect = () => undefined;
  switch (kind) {
    case 'outLoop': program = guest.outLoop(port); break;
    case 'hello': {
      const msg = `hi ${ctx.rng.int(1000)}`;
      program = guest.hello(msg, port);
      expect = (out) => ctx.check(out === msg, `hello guest printed ${JSON.stringify(out)}, not ${JSON.stringify(msg)}`);
      break;
    }
    case 'read': {
      const n = ctx.rng.range(1, 32);
      const data = ctx.rng.bytes(n);
      v.obj.memory.write(0x4000, data);
      program = guest.readAndReport(0x4000, n, port);
      expect = (out) => ctx.check(out === data.toString('latin1'), `readAndReport guest reported bytes that differ from what memory.write put at 0x4000`);
      break;
    }
    case 'write': {
      const n = ctx.rng.range(1, 512);
      const value = ctx.rng.range(1, 255);
      program = guest.writePattern(0x5000, n, value, port);
      expect = () => {
        const got = v.obj.memory.read(0x5000, n);
        ctx.check(got.every((b) => b === value), `after the writePattern guest, memory.read(0x5000, ${n}) is not all ${value}`);
        checkViewsSee(ctx, v, 0x5000, got);
      };
      break;
    }
    default: program = guest.spin();
  }
  const load = await ctx.call(`loadRealMode`, [c.obj, program.name], () => gm.loadRealMode(c.obj, program), { target: c, mutates: true });
  if (!load.ok) return;
  if (kind === 'timeout') {
    const ms = ctx.rng.range(5, 30);
    const sync = ctx.rng.chance(0.5);
    const r = await ctx.call(`${c.label}.${sync ? 'runSync' : 'run'}`, [{ timeoutMs: ms }], () => (sync ? c.obj.runSync({ timeoutMs: ms }) : c.obj.run({ timeoutMs: ms })), { target: c, mutates: true });
    ctx.check(!r.ok && r.error?.code === 'ERR_TIMEOUT', `a spinning guest's ${sync ? 'runSync' : 'run'}({ timeoutMs: ${ms} }) gave ${r.ok ? fmt(r.value?.reason) : r.error?.code}`);
    ctx.check(!c.obj.running, `${c.label} still running after its timeout`);
    return;
  }
  if (kind === 'kick' || kind === 'abort') {
    const ac = new AbortController();
    const p = ctx.call(`${c.label}.run`, [kind === 'abort' ? { signal: '<AbortSignal>' } : {}], () => c.obj.run(kind === 'abort' ? { signal: ac.signal } : {}), { target: c, mutates: true });
    await sleep(ctx.rng.int(3));
    if (kind === 'kick') ctx.check(c.obj.kick() === true, `${c.label}.kick() of a running vCPU returned false`);
    else ac.abort(ownError('abort'));
    const r = await p;
    if (kind === 'kick') ctx.check(r.ok && r.value.reason === 'intr', `a kicked spinning guest gave ${r.ok ? r.value.reason : r.error?.code}, not 'intr'`);
    else ctx.check(!r.ok && r.error?.code === 'ABORT_ERR', `an aborted run gave ${r.ok ? r.value.reason : r.error?.code}`);
    return;
  }
  if (kind === 'outLoop') {
    const sync = ctx.rng.chance(0.5);
    const r = await ctx.call(`${c.label}.${sync ? 'runSync' : 'run'}`, [{ timeoutMs: 20000 }], () => (sync ? c.obj.runSync({ timeoutMs: 20000 }) : c.obj.run({ timeoutMs: 20000 })), { target: c, mutates: true });
    if (r.ok) ctx.check(r.value.reason === 'io' && r.value.port === port && r.value.direction === 'out', `outLoop guest exit ${r.value.reason} port ${r.value.port}`);
    else ctx.fail(`outLoop guest run failed: ${r.error?.code} ${r.error?.message}`);
    return;
  }
  let out = '';
  const sync = ctx.rng.chance(0.4);
  const handlers = {
    timeoutMs: 20000,
    sync,
    maxExits: 2000,
    io(e) {
      if (e.port !== port || e.direction !== 'out') throw ownError(`unexpected io exit on port ${e.port} ${e.direction}`);
      out += Buffer.from(e.data).toString('latin1');
    },
  };
  const r = await ctx.call(`${c.label}.runUntil`, [{ io: '<collect>', sync, timeoutMs: 20000, maxExits: 2000 }], () => c.obj.runUntil(handlers), { target: c, mutates: true });
  if (!r.ok) ctx.fail(`${kind} guest runUntil failed: ${r.error?.code ?? ''} ${r.error?.message}`);
  ctx.check(EXPECTED_EXITS.has(r.value.reason), `${kind} guest ended with exit ${r.value.reason}`);
  ctx.check(r.value.reason === 'hlt', `${kind} guest's runUntil stopped at ${r.value.reason}, not hlt`);
  if (kind === 'write') expect();
  else if (kind === 'hello') expect(out);
  else if (kind === 'read') expect(out);
}

/** Views of the file behind the slot at `gpa` see what the guest wrote there. */
function checkViewsSee(ctx, v, gpa, bytes) {
  const s = v.obj.slotAt(gpa);
  const u = s?.userspace;
  if (!u || !u.file) return;
  const fileOff = u.offset + (gpa - Number(s.guestPhysAddr));
  for (const w of ctx.model.views) {
    if (w.closed || w.file?.obj !== u.file) continue;
    if (fileOff < w.offset || fileOff + bytes.length > w.offset + w.length) continue;
    const got = w.obj.buffer.subarray(fileOff - w.offset, fileOff - w.offset + bytes.length);
    ctx.check(got.equals(bytes), `${w.label} does not see what the guest wrote at GPA ${fmt(gpa)}`);
  }
}

async function vcpuClose(ctx) {
  const c = pickAny(ctx, ctx.model.vcpus, (e) => !e.obj.running);
  if (!c) return;
  ctx.begin();
  const r = await ctx.call(`${c.label}.close`, [], () => c.obj.close(), { target: c.closed ? undefined : c, mutates: true });
  if (r.ok) {
    c.closed = true;
    ctx.reconcile(`${c.label}.close`);
  } else ctx.model.resync();
}

// --- eventfds -----------------------------------------------------------------------

async function eventfd(ctx) {
  const e = pickAny(ctx, ctx.model.efds);
  ctx.begin();
  if (!e || (ctx.rng.chance(0.2) && ctx.model.open(ctx.model.efds).length < LIMITS.efds)) {
    const o = ctx.rng.pick([undefined, { semaphore: true }, { nonBlocking: true }, { initial: 3 }]);
    const arg = ctx.rng.chance(0.1) ? ctx.obj(o) : o;
    const r = await ctx.call('EventFd.create', [arg], () => EventFd.create(arg));
    if (r.ok) ctx.model.efds.push(entry('efd', r.value));
    return;
  }
  switch (ctx.rng.int(4)) {
    case 0: {
      const n = ctx.num(ctx.rng.pick([1, 2n, 100]));
      await ctx.call(`${e.label}.write`, [n], () => e.obj.write(n), { target: e });
      return;
    }
    case 1:
      await ctx.call(`${e.label}.wait`, [{ timeoutMs: 1 }], () => e.obj.wait({ timeoutMs: 1 }), { target: e });
      return;
    case 2:
      if (!e.obj.nonBlocking) return;
      await ctx.call(`${e.label}.read`, [], () => e.obj.read(), { target: e });
      return;
    default: {
      const r = await ctx.call(`${e.label}.close`, [], () => e.obj.close(), { target: e.closed ? undefined : e });
      if (r.ok) e.closed = true;
    }
  }
}

// --- hostile receivers and free functions ------------------------------------------

/** Prototype methods and getters of every public class, called on the wrong `this`. */
const RECEIVER_TARGETS = [];
for (const C of [Kvm, Vm, Memfd, GuestMemfd, MemoryFile, MemoryView, MemorySlot, Vcpu, Notifier, GuestMemory, EventFd, AttributeMap, LapicState, DirtyBitmap]) {
  for (const [key, d] of Object.entries(Object.getOwnPropertyDescriptors(C.prototype)).concat(
    Object.getOwnPropertySymbols(C.prototype).map((s) => [s, Object.getOwnPropertyDescriptor(C.prototype, s)]),
  )) {
    if (key === 'constructor') continue;
    if (typeof d.value === 'function') RECEIVER_TARGETS.push({ C, key, kind: 'method', fn: d.value });
    else if (d.get) RECEIVER_TARGETS.push({ C, key, kind: 'getter', fn: d.get });
  }
}

async function wrongReceiver(ctx) {
  const t = ctx.rng.pick(RECEIVER_TARGETS);
  const real = [...ctx.model.kvms, ...ctx.model.vms, ...ctx.model.files, ...ctx.model.views, ...ctx.model.vcpus, ...ctx.model.efds]
    .map((e) => e.obj)
    .filter((o) => !(o instanceof t.C));
  const choices = [
    [`Object.create(${t.C.name}.prototype)`, () => Object.create(t.C.prototype)],
    ['{}', () => ({})],
    ['null', () => null],
    ['undefined', () => undefined],
    ['42', () => 42],
  ];
  if (real.length) choices.push(['<other class>', () => ctx.rng.pick(real)]);
  const [desc, make] = ctx.rng.pick(choices);
  const self = make();
  const args = [];
  for (let i = 0, n = ctx.rng.int(3); i < n; i++) args.push(ctx.rng.chance(0.5) ? 0 : PAGE);
  ctx.begin();
  ctx.mark('reject');
  const name = `${t.C.name}.prototype.${String(t.key)}${t.kind === 'getter' ? '[get]' : ''}.call`;
  const r = await ctx.call(name, [self ?? desc, ...args], () => t.fn.apply(self, args));
  void r;
}

async function freeFunctions(ctx) {
  ctx.begin();
  const [, v, cls] = hostileNumber(ctx.rng);
  ctx.mark(cls);
  const pick = ctx.rng.int(9);
  const cases = [
    ['loadRealMode', [v, guest.outLoop()], () => gm.loadRealMode(v, guest.outLoop())],
    ['loadRealMode', ['<vcpu?>', v], () => gm.loadRealMode(ctx.model.vcpus[0]?.obj ?? v, v)],
    ['decodeExit', [v, 0], () => gm.decodeExit(v, 0)],
    ['decodeExit', ['<4 bytes>', v], () => gm.decodeExit(Buffer.alloc(4), v)],
    ['new DirtyBitmap', [v, 1, PAGE], () => new DirtyBitmap(v, 1, PAGE)],
    ['new DirtyBitmap', [0n, v, PAGE], () => new DirtyBitmap(0n, v, PAGE)],
    ['guest.outLoop', [v], () => guest.outLoop(v)],
    ['guest.readAndReport', [v, 4], () => guest.readAndReport(v, 4)],
    ['capName', [v], () => gm.capName(v)],
  ];
  const [name, args, fn] = cases[pick];
  await ctx.call(name, args, fn);
}

// --- concurrent calls --------------------------------------------------------------

/** Two calls started together; whatever happens, errors are typed and the model resyncs. */
async function race(ctx) {
  const kind = ctx.rng.pick(['punch+close', 'truncate+map', 'remove+remove', 'run+vmclose', 'remove+close']);
  const tasks = [];
  const go = (name, fn) => tasks.push(ctx.call(name, [], fn, { mutates: true }));
  ctx.begin();
  switch (kind) {
    case 'punch+close': {
      const f = pickOpen(ctx, files(ctx));
      if (!f || !f.size) return;
      go(`${f.label}.punchHole`, () => f.obj.punchHole(0, f.size));
      go(`${f.label}.closeAsync`, () => f.obj.closeAsync());
      break;
    }
    case 'truncate+map': {
      const f = pickOpen(ctx, files(ctx), (e) => e.kind === 'memfd');
      if (!f || ctx.model.open(ctx.model.views).length >= LIMITS.views) return;
      go(`${f.label}.truncate`, () => f.obj.truncate(ctx.rng.pick([0, PAGE, 16 * PAGE])));
      go(`${f.label}.map`, () => {
        const view = f.obj.map();
        ctx.model.views.push(entry('view', view, { file: f, offset: view.offset, length: view.length }));
        return view;
      });
      break;
    }
    case 'remove+remove':
    case 'remove+close': {
      const s = ctx.model.slots.find((x) => !x.removed && !x.vm.closed);
      if (!s) return;
      go(`${s.vm.label}.removeMemorySlot`, () => s.vm.obj.removeMemorySlot(s.obj));
      if (kind === 'remove+remove') go(`${s.vm.label}.removeMemorySlot`, () => s.vm.obj.removeMemorySlot(s.obj));
      else go(`${s.vm.label}.close`, () => s.vm.obj.close());
      break;
    }
    default: {
      const t = guestTarget(ctx);
      if (!t) return;
      const r = await ctx.call('loadRealMode', [t.c.obj, 'spin'], () => gm.loadRealMode(t.c.obj, guest.spin()), { target: t.c, mutates: true });
      if (!r.ok) return;
      ctx.begin();
      go(`${t.c.label}.run`, () => t.c.obj.run({ timeoutMs: 30000 }));
      go(`${t.v.label}.close`, () => t.v.obj.close());
    }
  }
  const results = await Promise.all(tasks);
  checkListenerPairs(ctx);
  void results;
  ctx.model.resync();
  ctx.reconcile(`race ${kind}`);
}

// --- dropping references (--gc-drop) -----------------------------------------------

async function drop(ctx) {
  const roots = [...ctx.model.kvms, ...ctx.model.files.filter((f) => f.kind === 'memfd')];
  if (!roots.length) return;
  const root = ctx.rng.pick(roots);
  const set = ctx.model.closure(root);
  // A vCPU running on its thread keeps its VM alive: drop only what is idle.
  for (const e of set) if (e.kind === 'vcpu' && e.obj.running) return;
  ctx.trace.note(`drop ${[...set].map((e) => e.label).join(' ')} (no close)`);
  ctx.model.drop(set);
  ctx.dropped++;
  if (ctx.rng.chance(0.5)) globalThis.gc?.();
}

/** [weight, name, fn, category] */
export const OPS = [
  [3, 'kvmOpen', kvmOpen, 'kvm'],
  [3, 'kvmQuery', kvmQuery, 'kvm'],
  [5, 'createVm', createVm, 'kvm'],
  [4, 'vmQuery', vmQuery, 'kvm'],
  [2, 'rawRegion', rawRegion, 'kvm'],
  [2, 'close', closeKvmOrVm, 'kvm'],
  [6, 'memfdCreate', memfdCreate, 'file'],
  [5, 'gmemCreate', gmemCreate, 'file'],
  [7, 'map', fileMap, 'file'],
  [5, 'viewAccess', viewAccess, 'file'],
  [3, 'unmap', viewUnmap, 'file'],
  [1, 'viewQuery', viewQuery, 'file'],
  [3, 'allocate', fileAllocate, 'file'],
  [4, 'punch', filePunch, 'file'],
  [4, 'truncate', memfdTruncate, 'file'],
  [3, 'seal', memfdSeal, 'file'],
  [1, 'stat', fileStat, 'file'],
  [3, 'fileClose', fileClose, 'file'],
  [8, 'addSlot', addSlot, 'slot'],
  [4, 'removeSlot', removeSlot, 'slot'],
  [4, 'guestMemory', guestMemory, 'slot'],
  [1, 'dirtyLog', dirtyLog, 'slot'],
  [4, 'register', registerListener, 'notifier'],
  [1, 'unregister', unregisterListener, 'notifier'],
  [3, 'createVcpu', createVcpu, 'vcpu'],
  [3, 'vcpuState', vcpuState, 'vcpu'],
  [8, 'guestRun', guestRun, 'guest'],
  [1, 'vcpuClose', vcpuClose, 'vcpu'],
  [2, 'eventfd', eventfd, 'eventfd'],
  [3, 'wrongReceiver', wrongReceiver, 'receiver'],
  [2, 'freeFunctions', freeFunctions, 'loader'],
  [2, 'race', race, 'race'],
];

export const DROP_OP = [4, 'drop', drop, 'gc'];
