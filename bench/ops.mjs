// The Node side of the benchmark: the ops of bench/ref/kvm_ref.c done through the
// public API, on the same layout, plus the library's own hot paths. Each op is
// `run(n)`: n iterations of the timed work (a promise for the async ones), with
// optional `prep()` before every batch (untimed), and `enter()` / `leave()` around
// the op's whole measurement (listeners that only that op wants).
//
// The layout, as in the references:
//   big    256 MiB guest_memfd (MMAP | INIT_SHARED) mapped whole, and its first
//          2 MiB mapped again for slot_add_delete;
//   guest  2 MiB guest_memfd (MMAP | INIT_SHARED) as slot 0 at GPA 0, holding
//          guest.outLoop(0x3f8) at GPA 0x1000; vm.memory rows use GPA 0x100000;
//   vCPU 0 loaded with loadRealMode (CS base 0 / selector 0, RIP 0x1000, RFLAGS 2).
// and, where KVM offers a sw-protected VM with KVM_MEMORY_ATTRIBUTE_PRIVATE, the
// convert_* layout: such a VM with one 1 GiB slot at GPA 0, a memfd as its shared
// memory and a guest_memfd as its private memory.
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const gm = require('../dist/index.js');
const { AttributeMap } = require('../dist/events/attribute-map.js');
const { invalidate } = require('../dist/events/notifier.js');
const { native } = require('../dist/native.js');

const MiB = 1 << 20;
const BIG = 256 * MiB;
const MEMORY_GPA = 0x100000;
const CONV_SIZE = 1024 * MiB;
const CONV_BATCH = 1000;

/** Opens the VM and its layout; returns { ops, close }. */
export function openNodeOps() {
  const kvm = gm.Kvm.open();
  try {
    return build(kvm);
  } catch (e) {
    kvm.close();
    throw e;
  }
}

/**
 * The convert_* layout, or { skip } saying why this KVM cannot have it. Nobody
 * listens, so a conversion is the attribute ioctl and the punch of the stale copy.
 */
function conversionLayout(kvm) {
  let cvm;
  try {
    cvm = kvm.createVm({ type: 'sw-protected' });
  } catch (e) {
    if (e instanceof gm.UnsupportedError) return { skip: `no sw-protected VM here (${e.message})` };
    throw e;
  }
  const attrs = BigInt(cvm.checkExtension(gm.Cap.MemoryAttributes));
  if ((attrs & BigInt(gm.MemoryAttribute.Private)) === 0n || cvm.checkExtension(gm.Cap.GuestMemfd) <= 0) {
    cvm.close();
    return { skip: `sw-protected VMs here lack guest_memfd or KVM_MEMORY_ATTRIBUTE_PRIVATE (KVM_CAP_MEMORY_ATTRIBUTES=${attrs})` };
  }
  const shared = gm.Memfd.create('shared', { size: CONV_SIZE });
  const priv = cvm.createGuestMemfd({ size: CONV_SIZE });
  const slot = cvm.addMemorySlot({ guestPhysAddr: 0, size: CONV_SIZE, userspace: shared, guestMemfd: { file: priv, offset: 0 } });
  const ranges = (to) => Array.from({ length: CONV_BATCH }, (_, k) => ({ guestPhysAddr: k * 8192, size: 4096, to }));
  const toPrivate = ranges('private');
  const toShared = ranges('shared');
  const pairLoop = (size) => async (n) => {
    for (let i = 0; i < n; i++) {
      await cvm.convert(0, size, 'private');
      await cvm.convert(0, size, 'shared');
    }
  };
  return {
    ops: {
      // 4 KiB at GPA 0 to private and back: vm.convert twice.
      convert_4k: { run: pairLoop(4096) },
      // The whole 1 GiB slot to private and back.
      convert_1g: { run: pairLoop(CONV_SIZE) },
      // 1,000 ranges of 4 KiB (every other page) to private and back: vm.convertMany twice.
      convert_batch_1000: {
        async run(n) {
          for (let i = 0; i < n; i++) {
            await cvm.convertMany(toPrivate);
            await cvm.convertMany(toShared);
          }
        },
      },
    },
    async close() {
      await cvm.removeMemorySlot(slot);
      priv.close();
      shared.close();
      cvm.close();
    },
  };
}

function build(kvm) {
  const conversion = conversionLayout(kvm);
  const vm = kvm.createVm();
  const big = vm.createGuestMemfd({ size: BIG, mmap: true, initShared: true });
  const bigView = big.map();
  const mem = bigView.buffer;
  const slotView = big.map(0, 2 * MiB);
  const src = Buffer.alloc(BIG, 7);

  const guestFile = vm.createGuestMemfd({ size: 2 * MiB, mmap: true, initShared: true });
  const guestSlot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: guestFile, offset: 0 } });
  const vcpu = vm.createVcpu(0);
  gm.loadRealMode(vcpu, gm.guest.outLoop(0x3f8));

  const punchLoop = async (n) => {
    for (let i = 0; i < n; i++) {
      const off = (i % 256) * 4096;
      mem[off] = 1;
      await big.punchHole(off, 4096);
    }
  };
  const listenerOp = (count) => {
    let offs = [];
    return {
      enter() {
        for (let l = 0; l < count; l++) offs.push(big.notifier.register({ invalidateStart() {}, invalidateEnd() {} }));
      },
      leave() {
        offs.forEach((off) => off());
        offs = [];
      },
    };
  };
  const batch256 = Array.from({ length: 256 }, (_, i) => [i * 4096, 4096]);
  const delivery = [[big.notifier, { file: big, offset: 0, length: 4096, cause: 'punch-hole', ranges: [] }]];
  const data4k = Buffer.alloc(4096, 3);
  const data1m = Buffer.alloc(MiB, 3);
  const into4k = Buffer.alloc(4096);
  const into1m = Buffer.alloc(MiB);

  const ops = {
    // The validated public call: KVM_CHECK_EXTENSION(KVM_CAP_GUEST_MEMFD) on the VM fd.
    check_extension: {
      run(n) {
        for (let i = 0; i < n; i++) vm.checkExtension(gm.Cap.GuestMemfd);
      },
    },
    // 16 GiB, MMAP | INIT_SHARED, through the flag-checking API; the library makes
    // the fd close-on-exec.
    gmem_create_close: {
      run(n) {
        for (let i = 0; i < n; i++) vm.createGuestMemfd({ size: 16 * 1024 * MiB, mmap: true, initShared: true }).close();
      },
    },
    // A 2 MiB guest_memfd slot at 4 GiB over an existing view, added and removed with
    // every check and the bookkeeping.
    slot_add_delete: {
      async run(n) {
        for (let i = 0; i < n; i++) {
          const slot = vm.addMemorySlot({ guestPhysAddr: 1n << 32n, size: 2 * MiB, userspace: slotView, guestMemfd: { file: big, offset: 0 } });
          await vm.removeMemorySlot(slot);
        }
      },
    },
    // The same two ioctls straight through the addon's binding, none of the library's
    // checks or bookkeeping: what the kernel costs in this process.
    slot_add_delete_raw: {
      run(n) {
        const addr = slotView.address;
        for (let i = 0; i < n; i++) {
          native.setUserMemoryRegion2(vm.fd, 1, gm.SlotFlag.GuestMemfd, 1n << 32n, 2 * MiB, addr, 0, big.fd);
          native.setUserMemoryRegion2(vm.fd, 1, 0, 1n << 32n, 0, 0, 0, 0);
        }
      },
    },
    // Touch one of 256 pages (a fault), then punch it.
    punch_hole_4k: { run: punchLoop },
    fault_in_256m: {
      bytes: BIG,
      prep() {
        return big.punchHole(0, BIG);
      },
      run(n) {
        for (let i = 0; i < n; i++) for (let off = 0; off < BIG; off += 4096) mem[off] = 1;
      },
    },
    copy_256m: {
      bytes: BIG,
      run(n) {
        for (let i = 0; i < n; i++) mem.set(src);
      },
    },
    vcpu_io_exit_sync: {
      run(n) {
        for (let i = 0; i < n; i++) if (vcpu.runSync().reason !== 'io') throw new Error('unexpected exit');
      },
    },
    vcpu_io_exit_run: {
      async run(n) {
        for (let i = 0; i < n; i++) if ((await vcpu.run()).reason !== 'io') throw new Error('unexpected exit');
      },
    },

    // The library's own paths (no reference).
    // The batch form: 256 punches per native call; iterations are punches.
    punch_hole_4k_batch256: {
      async run(n) {
        for (let i = 0; i < n; i++) {
          for (let p = 0; p < 256; p++) mem[p * 4096] = 1;
          await big.punchHoles(batch256);
        }
      },
    },
    punch_hole_4k_1_listener: { ...listenerOp(1), run: punchLoop },
    punch_hole_4k_8_listeners: { ...listenerOp(8), run: punchLoop },
    // The bare two-phase dispatch of one 4 KiB invalidation.
    invalidate_dispatch_1: {
      ...listenerOp(1),
      async run(n) {
        for (let i = 0; i < n; i++) await invalidate(delivery, () => undefined);
      },
    },
    invalidate_dispatch_8: {
      ...listenerOp(8),
      async run(n) {
        for (let i = 0; i < n; i++) await invalidate(delivery, () => undefined);
      },
    },
    // vm.memory through slot 0 (guest_memfd-backed).
    memory_write_4k: {
      run(n) {
        for (let i = 0; i < n; i++) vm.memory.write(MEMORY_GPA, data4k);
      },
    },
    memory_read_4k: {
      run(n) {
        for (let i = 0; i < n; i++) vm.memory.read(MEMORY_GPA, 4096);
      },
    },
    memory_write_1m: {
      run(n) {
        for (let i = 0; i < n; i++) vm.memory.write(MEMORY_GPA, data1m);
      },
    },
    memory_read_1m: {
      run(n) {
        for (let i = 0; i < n; i++) vm.memory.read(MEMORY_GPA, MiB);
      },
    },
    // The same reads into a buffer the caller keeps: no allocation, no fresh pages.
    memory_readinto_4k: {
      run(n) {
        for (let i = 0; i < n; i++) vm.memory.readInto(MEMORY_GPA, into4k);
      },
    },
    memory_readinto_1m: {
      run(n) {
        for (let i = 0; i < n; i++) vm.memory.readInto(MEMORY_GPA, into1m);
      },
    },
    ...conversion.ops,
  };

  async function close() {
    await conversion.close?.();
    vcpu.close();
    await vm.removeMemorySlot(guestSlot);
    guestFile.close();
    slotView.unmap();
    bigView.unmap();
    big.close();
    vm.close();
    kvm.close();
  }
  return { ops, close, skipped: conversion.skip };
}

/** Times one batch of `op` in this process: wall (hrtime) and process CPU (getrusage). */
export async function timeNodeBatch(op, iters) {
  if (op.prep) await op.prep();
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const r = op.run(iters);
  if (r) await r;
  const t1 = process.hrtime.bigint();
  const c = process.cpuUsage(c0);
  return { iters, ns: Number(t1 - t0), user_ns: c.user * 1000, sys_ns: c.system * 1000, bytes: (op.bytes ?? 0) * iters };
}

/**
 * Conversion bookkeeping at scale: an attribute map of 1,000,000 alternating 4 KiB
 * ranges (build), random updates on it, and its heap per range. One-shot figures.
 */
export function attributeMapScale(quick) {
  const n = quick ? 200_000 : 1_000_000;
  const now = () => Number(process.hrtime.bigint());
  global.gc?.();
  const heap0 = process.memoryUsage().heapUsed;
  const map = new AttributeMap();
  const t0 = now();
  for (let i = 0; i < n; i++) map.set(BigInt(i * 2) * 4096n, 4096n, 8n);
  const build = (now() - t0) / n / 1000;
  global.gc?.();
  const perEntry = (process.memoryUsage().heapUsed - heap0) / map.count;
  const updates = quick ? 20_000 : 200_000;
  let seed = 1;
  const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % (n * 2));
  const t1 = now();
  for (let i = 0; i < updates; i++) map.set(BigInt(rand()) * 4096n, 4096n, i & 1 ? 8n : 0n);
  const update = (now() - t1) / updates / 1000;
  return [
    { id: 'attr_map_build_1m', unit: 'us/op', value: build, note: `${n} ranges` },
    { id: 'attr_map_update_1m', unit: 'us/op', value: update, note: `${updates} random updates` },
    { id: 'attr_map_bytes_per_range', unit: 'B', value: perEntry, note: global.gc ? 'after gc' : 'no --expose-gc' },
  ];
}

/** RSS of a process holding N slots and N views, above its own baseline (a child process). */
export function residentCost(quick) {
  const count = quick ? 200 : 1000;
  const script = fileURLToPath(new URL('./rss.mjs', import.meta.url));
  const r = spawnSync(process.execPath, ['--expose-gc', script, String(count)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`rss child failed: ${r.stderr}`);
  const m = JSON.parse(r.stdout);
  const delta = (m.rssAfter - m.rssBefore) / MiB;
  return { id: `rss_${count}_slots_${count}_views`, unit: 'MiB', value: delta, note: `heap +${((m.heapAfter - m.heapBefore) / MiB).toFixed(1)} MiB` };
}
