// Child process of the benchmark: RSS of a process holding N slots and N views,
// above the same process's baseline (module loaded, VM open, after a collection).
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const gm = require('../dist/index.js');
const count = Number(process.argv[2] ?? 1000);
const gc = globalThis.gc ?? (() => {});

const kvm = gm.Kvm.open();
const vm = kvm.createVm();
const ram = gm.Memfd.create('rss', { size: count * 4096 });
gc();
const before = process.memoryUsage();
const views = [];
for (let i = 0; i < count; i++) {
  const v = ram.map(i * 4096, 4096);
  v.buffer[0] = 1;
  views.push(v);
  vm.addMemorySlot({ guestPhysAddr: BigInt(i) * 0x100000n, size: 4096, userspace: ram, userspaceOffset: i * 4096 });
}
gc();
const after = process.memoryUsage();
console.log(JSON.stringify({ count, rssBefore: before.rss, rssAfter: after.rss, heapBefore: before.heapUsed, heapAfter: after.heapUsed, slots: vm.slots.length, views: views.length }));
kvm.close();
ram.close();
