// The Node side of the benchmark: the operations of ../shared/bench/kvm_baseline.c
// done through the public API, plus the library's own hot paths. Prints nothing;
// returns one record per op: { op, unit, value, min, max, reps }.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const gm = require('../dist/index.js');
const { AttributeMap } = require('../dist/events/attribute-map.js');
const { invalidate } = require('../dist/events/notifier.js');

const MiB = 1 << 20;
const now = () => Number(process.hrtime.bigint()) / 1e9;

function summarize(op, unit, values) {
  const v = [...values].sort((a, b) => a - b);
  return { op, unit, value: v[v.length >> 1], min: v[0], max: v[v.length - 1], reps: v.length };
}

/** Times `body(iters)` in `reps` rounds; returns us/op (or the unit `per` makes). */
async function rounds(reps, iters, body) {
  const out = [];
  for (let r = 0; r < reps; r++) {
    const t0 = now();
    await body(iters);
    out.push(((now() - t0) / iters) * 1e6);
  }
  return out;
}

export async function runNodeOps({ quick }) {
  const reps = quick ? 3 : 7;
  const kvm = gm.Kvm.open();
  try {
    return await runOn(kvm, { quick, reps });
  } finally {
    kvm.close();
  }
}

async function runOn(kvm, { quick, reps }) {
  const results = [];
  const vm = kvm.createVm();

  // check_extension: the public, validated call.
  results.push(
    summarize('check_extension', 'us/op', await rounds(reps, quick ? 20000 : 200000, (n) => {
      for (let i = 0; i < n; i++) vm.checkExtension(gm.Cap.GuestMemfd);
    })),
  );

  // gmem_create_close: 16 GiB, MMAP|INIT_SHARED, through the flag-checking API.
  results.push(
    summarize('gmem_create_close', 'us/op', await rounds(reps, quick ? 500 : 5000, (n) => {
      for (let i = 0; i < n; i++) vm.createGuestMemfd({ size: 16 * 1024 * MiB, mmap: true, initShared: true }).close();
    })),
  );

  const big = 256 * MiB;
  const gmem = vm.createGuestMemfd({ size: big, mmap: true, initShared: true });
  const view = gmem.map();
  const mem = view.buffer;
  // slot_add_delete: a 2 MiB guest_memfd slot at 4 GiB over an existing view, added
  // and removed with every check and the bookkeeping (as the C program reuses its mapping).
  const slotView = gmem.map(0, 2 * MiB);
  results.push(
    summarize('slot_add_delete', 'us/pair', await rounds(reps, quick ? 500 : 3000, async (n) => {
      for (let i = 0; i < n; i++) {
        const slot = vm.addMemorySlot({ guestPhysAddr: 1n << 32n, size: 2 * MiB, userspace: slotView, guestMemfd: { file: gmem, offset: 0 } });
        await vm.removeMemorySlot(slot);
      }
    })),
  );
  slotView.unmap();

  results.push(
    summarize('punch_hole_4k', 'us/op', await rounds(reps, quick ? 2000 : 20000, async (n) => {
      for (let i = 0; i < n; i++) {
        const off = (i % 256) * 4096;
        mem[off] = 1;
        await gmem.punchHole(off, 4096);
      }
    })),
  );

  // The batch form: 256 punches per native call.
  const batch = Array.from({ length: 256 }, (_, i) => [i * 4096, 4096]);
  results.push(
    summarize('punch_hole_4k_batch256', 'us/op', (await rounds(reps, quick ? 20 : 200, async (n) => {
      for (let i = 0; i < n; i++) {
        for (let p = 0; p < 256; p++) mem[p * 4096] = 1;
        await gmem.punchHoles(batch);
      }
    })).map((v) => v / 256)),
  );

  // Invalidation dispatch: the same punch with 1 and 8 listeners (start + end each).
  for (const listeners of [1, 8]) {
    const offs = [];
    for (let l = 0; l < listeners; l++) offs.push(gmem.notifier.register({ invalidateStart() {}, invalidateEnd() {} }));
    results.push(
      summarize(`punch_hole_4k_${listeners}_listener${listeners > 1 ? 's' : ''}`, 'us/op', await rounds(reps, quick ? 2000 : 20000, async (n) => {
        for (let i = 0; i < n; i++) {
          const off = (i % 256) * 4096;
          mem[off] = 1;
          await gmem.punchHole(off, 4096);
        }
      })),
    );
    results.push(
      summarize(`invalidate_dispatch_${listeners}`, 'us/op', await rounds(reps, quick ? 20000 : 200000, async (n) => {
        const delivery = [[gmem.notifier, { file: gmem, offset: 0, length: 4096, cause: 'punch-hole', ranges: [] }]];
        for (let i = 0; i < n; i++) await invalidate(delivery, () => undefined);
      })),
    );
    offs.forEach((off) => off());
  }

  const faults = [];
  for (let r = 0; r < reps; r++) {
    await gmem.punchHole(0, big);
    const t0 = now();
    for (let off = 0; off < big; off += 4096) mem[off] = 1;
    faults.push(big / (now() - t0) / 1e9);
  }
  results.push(summarize('fault_in_256m', 'GB/s', faults));

  const src = Buffer.alloc(big, 7);
  const copies = [];
  for (let r = 0; r < reps; r++) {
    const t0 = now();
    mem.set(src);
    copies.push(big / (now() - t0) / 1e9);
  }
  results.push(summarize('copy_256m', 'GB/s', copies));

  // vm.memory through a slot.
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
  for (const [label, size, iters] of [['4k', 4096, quick ? 20000 : 200000], ['1m', MiB, quick ? 200 : 2000]]) {
    const data = Buffer.alloc(size, 3);
    results.push(summarize(`memory_write_${label}`, 'us/op', await rounds(reps, iters, (n) => { for (let i = 0; i < n; i++) vm.memory.write(0x1000, data); })));
    results.push(summarize(`memory_read_${label}`, 'us/op', await rounds(reps, iters, (n) => { for (let i = 0; i < n; i++) vm.memory.read(0x1000, size); })));
  }

  // vcpu_io_exit: the real-mode OUT loop of the C program, synchronous and async.
  const vcpu = vm.createVcpu(0);
  gm.loadRealMode(vcpu, gm.guest.outLoop(0x3f8));
  results.push(
    summarize('vcpu_io_exit_sync', 'us/exit', await rounds(reps, quick ? 2000 : 20000, (n) => {
      for (let i = 0; i < n; i++) if (vcpu.runSync().reason !== 'io') throw new Error('unexpected exit');
    })),
  );
  results.push(
    summarize('vcpu_io_exit', 'us/exit', await rounds(reps, quick ? 2000 : 20000, async (n) => {
      for (let i = 0; i < n; i++) if ((await vcpu.run()).reason !== 'io') throw new Error('unexpected exit');
    })),
  );
  vcpu.close();
  await vm.removeMemorySlot(slot);
  view.unmap();
  gmem.close();

  // Conversion bookkeeping at scale: an attribute map of 1,000,000 alternating
  // 4 KiB ranges, then random updates on it.
  vm.close();
  results.push(...attributeMapScale(quick));
  results.push(await residentCost(quick));
  return results;
}

function attributeMapScale(quick) {
  const n = quick ? 200_000 : 1_000_000;
  global.gc?.();
  const heap0 = process.memoryUsage().heapUsed;
  const map = new AttributeMap();
  const t0 = now();
  for (let i = 0; i < n; i++) map.set(BigInt(i * 2) * 4096n, 4096n, 8n);
  const build = ((now() - t0) / n) * 1e6;
  global.gc?.();
  const perEntry = (process.memoryUsage().heapUsed - heap0) / map.count;
  const updates = quick ? 20_000 : 200_000;
  let seed = 1;
  const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % (n * 2));
  const t1 = now();
  for (let i = 0; i < updates; i++) {
    const page = rand();
    map.set(BigInt(page) * 4096n, 4096n, i & 1 ? 8n : 0n);
  }
  const update = ((now() - t1) / updates) * 1e6;
  return [
    { op: 'attr_map_build_1m', unit: 'us/op', value: build, min: build, max: build, reps: 1, note: `${n} ranges` },
    { op: 'attr_map_update_1m', unit: 'us/op', value: update, min: update, max: update, reps: 1, note: `${updates} random updates` },
    { op: 'attr_map_bytes_per_range', unit: 'B', value: perEntry, min: perEntry, max: perEntry, reps: 1, note: global.gc ? 'after gc' : 'no --expose-gc' },
  ];
}

/** RSS of a process holding 1,000 slots and 1,000 views, above its own baseline. */
async function residentCost(quick) {
  const count = quick ? 200 : 1000;
  const { spawnSync } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const script = fileURLToPath(new URL('./rss.mjs', import.meta.url));
  const r = spawnSync(process.execPath, ['--expose-gc', script, String(count)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`rss child failed: ${r.stderr}`);
  const m = JSON.parse(r.stdout);
  const delta = (m.rssAfter - m.rssBefore) / MiB;
  return { op: `rss_${count}_slots_${count}_views`, unit: 'MiB', value: delta, min: delta, max: delta, reps: 1, note: `heap +${((m.heapAfter - m.heapBefore) / MiB).toFixed(1)} MiB` };
}
