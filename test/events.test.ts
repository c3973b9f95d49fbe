// What listeners hear, in which order, and how often: a slot is told once even where
// one guest_memfd is both of its backings.
import { expect } from 'vitest';
import { Memfd, type FileRangeEvent, type GpaRangeEvent, type MemoryFile, type NotifierEvent, type Vm } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';

const MiB = 1 << 20;
const G4 = 1n << 32n;
const test = kvmTest();
const inPlaceTest = kvmTest({ mmap: true, initShared: true });

/** Appends `who:phase:cause` for every callback of a file or VM notifier. */
function trace(log: string[], who: string, target: { notifier: { register(l: object): unknown } }): void {
  target.notifier.register({
    populate: (e: { cause: string }) => void log.push(`${who}:populate:${e.cause}`),
    invalidateStart: (e: { cause: string }) => void log.push(`${who}:start:${e.cause}`),
    invalidateEnd: (e: { cause: string }) => void log.push(`${who}:end:${e.cause}`),
  });
}

function inPlace(vm: Vm) {
  const gmem = vm.createGuestMemfd({ size: 4 * MiB, mmap: true, initShared: true });
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem } });
  expect(slot.userspace.file).toBe(gmem); // both backings
  return { gmem, slot };
}

inPlaceTest('a guest_memfd that is both backings of a slot: a punch names the slot once and the VM hears each phase once', async ({ vm }) => {
  const { gmem } = inPlace(vm);
  const files: FileRangeEvent<MemoryFile>[] = [];
  const vmEvents: GpaRangeEvent<Vm>[] = [];
  gmem.notifier.register({ invalidateStart: (e) => void files.push(e) });
  vm.notifier.register({ invalidateStart: (e) => void vmEvents.push(e), invalidateEnd: (e) => void vmEvents.push(e) });
  await gmem.punchHole(0, 8192);
  expect(files).toHaveLength(1);
  expect(files[0]!.ranges).toEqual([{ slot: 0, guestPhysAddr: 0n, size: 8192n }]);
  expect(vmEvents.map((e) => [e.guestPhysAddr, e.size])).toEqual([
    [0n, 8192n],
    [0n, 8192n],
  ]);
});

inPlaceTest('events() yields one notification per phase for such a slot, and replay tells each range once', async ({ vm }) => {
  const { gmem } = inPlace(vm);
  const it = vm.notifier.events();
  const next = it.next();
  await gmem.punchHole(0, 4096);
  const got: NotifierEvent<GpaRangeEvent<Vm>>[] = [(await next).value as NotifierEvent<GpaRangeEvent<Vm>>, (await it.next()).value as NotifierEvent<GpaRangeEvent<Vm>>];
  expect(got.map((g) => g.type)).toEqual(['invalidate-start', 'invalidate-end']);
  await it.return(undefined);
  const replayed: Array<[number, number]> = [];
  await gmem.notifier.register({ populate: (e) => void replayed.push([e.offset, e.length]) }, { replay: true });
  expect(replayed).toEqual([[0, 2 * MiB]]);
});

inPlaceTest('closing a file still bound names each slot once', ({ vm }) => {
  const { gmem } = inPlace(vm);
  expect(() => gmem.close()).toThrow(/is bound by slot 0 \(GPA 0x0\.\.0x200000\); remove the slot first/);
});

test('a punch notifies the file before the VM; a slot removal the VM before the files', async ({ vm }) => {
  using ram = Memfd.create('ordered', { size: 2 * MiB });
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: ram });
  const log: string[] = [];
  trace(log, 'file', ram);
  trace(log, 'vm', vm);
  await ram.punchHole(0, 4096);
  expect(log).toEqual(['file:start:punch-hole', 'vm:start:punch-hole', 'file:end:punch-hole', 'vm:end:punch-hole']);
  log.length = 0;
  await vm.removeMemorySlot(slot);
  expect(log).toEqual(['vm:start:slot-removed', 'file:start:slot-removed', 'vm:end:slot-removed', 'file:end:slot-removed']);
});

test('a move announces the new range (populate) before it invalidates the old one', async ({ vm }) => {
  using ram = Memfd.create('moved', { size: MiB });
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: ram });
  const log: string[] = [];
  vm.notifier.register({
    populate: (e) => void log.push(`populate ${e.guestPhysAddr.toString(16)}`),
    invalidateStart: (e) => void log.push(`start ${e.guestPhysAddr.toString(16)}`),
    invalidateEnd: (e) => void log.push(`end ${e.guestPhysAddr.toString(16)}`),
  });
  await vm.moveMemorySlot(slot, G4);
  expect(log).toEqual(['populate 100000000', 'start 0', 'end 0']);
});
