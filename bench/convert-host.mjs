// The library's own cost of a conversion, on a host whose KVM cannot convert (no
// KVM_MEMORY_ATTRIBUTE_PRIVATE): a profiling aid, not a benchmark row and not a test.
// Everything real except the one call the host lacks: KVM_SET_MEMORY_ATTRIBUTES is
// replaced by a function that accepts every range, and the VM's answer for
// KVM_CAP_MEMORY_ATTRIBUTES is 8. The punches of the stale copies are real.
//
//   node bench/convert-host.mjs [PAIRS]
//
// Prints, per pair (to private and back), the same punches issued straight through
// the addon, vm.convert of 4 KiB, and vm.convertMany of 1,000 ranges of 4 KiB; the
// difference is the library's JavaScript. `node --cpu-prof bench/convert-host.mjs`
// shows where it goes.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const gm = require('../dist/index.js');
const { native } = require('../dist/native.js');

const pairs = Number(process.argv[2] ?? 20000);
const GiB = 1 << 30;
const PUNCH = 3; // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

native.setMemoryAttributesMany = (_fd, triples) => triples.length / 3;
const kvm = gm.Kvm.open();
const vm = kvm.createVm();
const cap = vm.cap.bind(vm);
Object.defineProperty(vm, 'cap', { value: (c) => (c === gm.Cap.MemoryAttributes ? 8 : cap(c)) });
const shared = gm.Memfd.create('shared', { size: GiB });
const priv = vm.createGuestMemfd({ size: GiB });
vm.addMemorySlot({ guestPhysAddr: 0, size: GiB, userspace: shared, guestMemfd: { file: priv, offset: 0 } });
const toPrivate = Array.from({ length: 1000 }, (_, k) => ({ guestPhysAddr: k * 8192, size: 4096, to: 'private' }));
const toShared = toPrivate.map((r) => ({ ...r, to: 'shared' }));

async function time(name, fn, n) {
  for (let i = 0; i < Math.ceil(n / 4); i++) await fn();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  console.log(`${name.padEnd(46)} ${(Number(process.hrtime.bigint() - t0) / n / 1000).toFixed(2).padStart(9)} us per pair`);
}
const punches = (fd, count) => {
  for (let k = 0; k < count; k++) native.fallocate(fd, PUNCH, k * 8192, 4096);
};

await time('4 KiB: the two punches, raw', () => (punches(shared.fd, 1), punches(priv.fd, 1)), pairs);
await time('4 KiB: vm.convert to private and back', async () => {
  await vm.convert(0, 4096, 'private');
  await vm.convert(0, 4096, 'shared');
}, pairs);
const batches = Math.max(10, Math.ceil(pairs / 200));
await time('1,000 x 4 KiB: the 2,000 punches, raw', () => (punches(shared.fd, 1000), punches(priv.fd, 1000)), batches);
await time('1,000 x 4 KiB: vm.convertMany and back', async () => {
  await vm.convertMany(toPrivate);
  await vm.convertMany(toShared);
}, batches);
vm.close();
kvm.close();
