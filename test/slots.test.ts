// Memory slots over KVM_SET_USER_MEMORY_REGION2 on the real kernel.
import { expect } from 'vitest';
import { Cap, GuestMemfd, KvmError, Memfd, MemorySlot, StateError, Vm } from '../lib/index';
import { native } from '../lib/native';
import { kvmTest } from '../lib/testing/vitest.mjs';
import { codeOf, gmemOf as sizedGmem, openFds } from './helpers';
import { runs } from './runs';

/** Create/close cycles of the leak tests (fewer inside an emulated kernel). */
const CYCLES = runs(1000);

const MiB = 1 << 20;
const G4 = 1n << 32n;

function kernelCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvmError);
    expect((e as KvmError).ioctl).toBe('KVM_SET_USER_MEMORY_REGION2');
    return (e as KvmError).code;
  }
  return undefined;
}

const test = kvmTest({ guestMemfd: true });
const mappableTest = kvmTest({ mmap: true, initShared: true });

// Host memory for raw regions (the kernel only needs a valid userspace address):
// made once, before any test, so per-test leak checks do not count it.
const scratch = Memfd.create('scratch', { size: 8 * MiB });
const scratchView = scratch.map();

/** A guest_memfd of 8 MiB, mappable and initially shared where the VM offers it. */
const gmemOf = (vm: Vm): GuestMemfd => sizedGmem(vm, 8 * MiB);

/** The raw region for a guest_memfd slot, for checking what the kernel says. */
const rawOf = (gmem: GuestMemfd) => (over: Partial<Parameters<Vm['setUserMemoryRegion2']>[0]> = {}) => ({
  slot: 10,
  flags: 4,
  guestPhysAddr: G4,
  memorySize: 2 * MiB,
  userspaceAddr: scratchView.address,
  guestMemfd: gmem,
  guestMemfdOffset: 0,
  ...over,
});

test('a guest_memfd slot binds and is listed', ({ vm }) => {
  const gmem = gmemOf(vm);
  const slot = vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
  expect(slot).toBeInstanceOf(MemorySlot);
  expect(slot.id).toBe(0);
  expect(slot.flags & 4).toBe(4);
  expect(vm.slots).toEqual([slot]);
  expect(vm.slotAt(G4 + 4096n)).toBe(slot);
  expect(vm.slotAt(G4 - 1n)).toBeUndefined();
});

test('guest_memfd slots at offsets 0 and N bind side by side', ({ vm }) => {
  const gmem = gmemOf(vm);
  const a = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
  const b = vm.addMemorySlot({ guestPhysAddr: G4, size: 4 * MiB, guestMemfd: { file: gmem, offset: 4 * MiB } });
  expect(a.guestMemfd?.offset).toBe(0);
  expect(b.guestMemfd?.offset).toBe(4 * MiB);
  expect(vm.slots.map((s) => s.id)).toEqual([0, 1]);
});

test('a memfd-backed slot with guest_memfd private memory binds', ({ vm }) => {
  const gmem = vm.createGuestMemfd({ size: 2 * MiB });
  using ram = Memfd.create('ram', { size: 2 * MiB });
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: ram, guestMemfd: { file: gmem } });
  expect(slot.userspace.kind).toBe('memfd');
  expect(slot.userspace.file).toBe(ram);
});

const mmapTest = kvmTest({ mmap: true });

mmapTest('a guest_memfd made with mmap but without initShared backs no slot (KVM would map the guest from pages private to it)', ({ vm }) => {
  const gmem = vm.createGuestMemfd({ size: 2 * MiB, mmap: true });
  using ram = Memfd.create('ram', { size: 2 * MiB });
  for (const userspace of [undefined, ram, gmem, 'anonymous'] as const)
    expect(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem }, ...(userspace ? { userspace } : {}) })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringMatching(/with mmap but without initShared/) }),
    );
  expect(vm.slots).toHaveLength(0);
});

mappableTest('a slot over a guest_memfd made with mmap takes no other userspace memory: KVM maps the guest from the guest_memfd itself', ({ vm }) => {
  const gmem = vm.createGuestMemfd({ size: 4 * MiB, mmap: true, initShared: true });
  using ram = Memfd.create('ram', { size: 2 * MiB });
  const refused = (userspace: unknown, extra: object = {}) =>
    codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 2 * MiB }, userspace: userspace as never, ...extra }));
  expect(refused(ram)).toBe('ERR_INVALID_ARG_VALUE');
  expect(refused('anonymous')).toBe('ERR_INVALID_ARG_VALUE');
  expect(refused(gmem, { userspaceOffset: 0 })).toBe('ERR_INVALID_ARG_VALUE');
  expect(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: ram, guestMemfd: { file: gmem } })).toThrow(
    /options\.userspace must be guest_memfd \(fd \d+\) itself at offset 0x0 .*its own shared memory/,
  );
  expect(vm.slots).toHaveLength(0);
  // Itself at the same offset, or left out, is what the kernel will use.
  const a = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 2 * MiB }, userspace: gmem });
  const b = vm.addMemorySlot({ guestPhysAddr: 4 * MiB, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
  expect([a.userspace.file, a.userspace.offset, b.userspace.file, b.userspace.offset]).toEqual([gmem, 2 * MiB, gmem, 0]);
});

test('overlapping GPA ranges: the library names both slots; the kernel says EEXIST', ({ vm }) => {
  const gmem = gmemOf(vm);
  vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
  let error: unknown;
  try {
    vm.addMemorySlot({ guestPhysAddr: G4 + BigInt(MiB), size: 2 * MiB, userspace: 'anonymous' });
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(StateError);
  expect((error as StateError).code).toBe('ERR_SLOT_OVERLAP');
  expect((error as Error).message).toMatch(/GPA range 0x100100000..0x100300000 overlaps slot 0 \(GPA 0x100000000..0x100200000\)/);
  expect(kernelCode(() => vm.setUserMemoryRegion2({ slot: 5, flags: 0, guestPhysAddr: G4 + BigInt(MiB), memorySize: 2 * MiB, userspaceAddr: scratchView.address }))).toBe('EEXIST');
});

mappableTest('a mappable, initially shared guest_memfd is its own slot\'s shared backing by default', ({ vm }) => {
  const gmem = vm.createGuestMemfd({ size: 4 * MiB, mmap: true, initShared: true });
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 2 * MiB } });
  expect(slot.userspace.kind).toBe('guest_memfd');
  expect(slot.userspace.file).toBe(gmem);
  expect(slot.userspace.offset).toBe(2 * MiB);
  gmem.map(2 * MiB, 4096).buffer[5] = 0x77;
  expect(vm.memory.read(5, 1)[0]).toBe(0x77);
});

test('without a mappable guest_memfd the default shared backing is anonymous memory', ({ vm }) => {
  const gmem = vm.createGuestMemfd({ size: 2 * MiB });
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem } });
  expect(slot.userspace.kind).toBe('anonymous');
  vm.memory.write(0, Buffer.from([1, 2]));
  expect(vm.memory.read(0, 2)).toEqual(Buffer.from([1, 2]));
});

test('a guest_memfd range binds once: the library names the holder before the kernel refuses (EINVAL, or EEXIST since Linux 7.2)', ({ vm }) => {
  const gmem = gmemOf(vm);
  const raw = rawOf(gmem);
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
  let error: unknown;
  try {
    vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, guestMemfd: { file: gmem, offset: MiB } });
  } catch (e) {
    error = e;
  }
  expect((error as StateError).code).toBe('ERR_GUEST_MEMFD_BOUND');
  expect((error as Error).message).toMatch(/already bound by slot 0 \(GPA 0x0..0x200000\)/);
  // Whatever this kernel answers, the library's check came first.
  expect(['EINVAL', 'EEXIST']).toContain(kernelCode(() => vm.setUserMemoryRegion2(raw({ guestMemfdOffset: MiB }))));
});

test("another VM's guest_memfd is refused; the kernel says EINVAL", ({ vm, kvm }) => {
  const gmem = gmemOf(vm);
  const raw = rawOf(gmem);
  using other = kvm.createVm({ type: vm.type });
  const foreign = gmemOf(other);
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: foreign } }))).toBe(
    'ERR_FOREIGN_GUEST_MEMFD',
  );
  expect(kernelCode(() => vm.setUserMemoryRegion2(raw({ guestMemfd: foreign })))).toBe('EINVAL');
});

test('unaligned GPA, size or offset are refused; the kernel says EINVAL', ({ vm }) => {
  const gmem = gmemOf(vm);
  const raw = rawOf(gmem);
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0x1001, size: 2 * MiB, guestMemfd: { file: gmem } }))).toBe('ERR_UNALIGNED');
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 4095, guestMemfd: { file: gmem } }))).toBe('ERR_UNALIGNED');
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 4096, guestMemfd: { file: gmem, offset: 1 } }))).toBe('ERR_UNALIGNED');
  expect(kernelCode(() => vm.setUserMemoryRegion2(raw({ guestPhysAddr: G4 + 1n })))).toBe('EINVAL');
  expect(kernelCode(() => vm.setUserMemoryRegion2(raw({ memorySize: 4095 })))).toBe('EINVAL');
  expect(kernelCode(() => vm.setUserMemoryRegion2(raw({ guestMemfdOffset: 1 })))).toBe('EINVAL');
});

test('a guest_memfd range past the end of the file is refused; the kernel says EINVAL', ({ vm }) => {
  const gmem = gmemOf(vm);
  const raw = rawOf(gmem);
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 4 * MiB, guestMemfd: { file: gmem, offset: 6 * MiB } }))).toBe(
    'ERR_OUT_OF_RANGE',
  );
  expect(kernelCode(() => vm.setUserMemoryRegion2(raw({ guestMemfdOffset: 7 * MiB })))).toBe('EINVAL');
});

test('guest_memfd with readonly or dirty logging is refused; the kernel says EINVAL', ({ vm }) => {
  const gmem = gmemOf(vm);
  const raw = rawOf(gmem);
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem }, readonly: true }))).toBe(
    'ERR_INVALID_ARG_VALUE',
  );
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem }, logDirtyPages: true }))).toBe(
    'ERR_INVALID_ARG_VALUE',
  );
  expect(kernelCode(() => vm.setUserMemoryRegion2(raw({ flags: 4 | 2 })))).toBe('EINVAL');
  expect(kernelCode(() => vm.setUserMemoryRegion2(raw({ flags: 4 | 1 })))).toBe('EINVAL');
});

test('size 0 is refused (for the kernel it would mean "delete")', ({ vm }) => {
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 0, userspace: 'anonymous' }))).toBe('ERR_OUT_OF_RANGE');
});

test('a slot id out of range is refused; the kernel says EINVAL', ({ vm }) => {
  const gmem = gmemOf(vm);
  const raw = rawOf(gmem);
  const limit = vm.checkExtension(Cap.NrMemslots);
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 4096, userspace: 'anonymous', slot: limit }))).toBe(
    'ERR_OUT_OF_RANGE',
  );
  expect(kernelCode(() => vm.setUserMemoryRegion2(raw({ slot: limit })))).toBe('EINVAL');
});

test('a slot id in use is refused; reusing it with another size, the kernel says EINVAL', ({ vm }) => {
  const gmem = gmemOf(vm);
  const raw = rawOf(gmem);
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: 'anonymous', slot: 10 });
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: G4, size: 4096, userspace: 'anonymous', slot: 10 }))).toBe(
    'ERR_SLOT_IN_USE',
  );
  // The kernel's answer, on a slot made through the raw call (the library keeps
  // the raw call off the slots it manages).
  vm.setUserMemoryRegion2(raw({ slot: 11, flags: 0, guestMemfd: 0, guestPhysAddr: 2n * G4 }));
  expect(kernelCode(() => vm.setUserMemoryRegion2(raw({ slot: 11, flags: 0, memorySize: 4096, guestMemfd: 0, guestPhysAddr: 2n * G4 })))).toBe('EINVAL');
});

test('the raw call refuses a slot id the library manages (its record would go stale)', ({ vm }) => {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 4096, userspace: 'anonymous', slot: 3 });
  expect(codeOf(() => vm.setUserMemoryRegion2({ slot: 3, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 }))).toBe(
    'ERR_SLOT_IN_USE',
  );
  expect(vm.slots.map((s) => s.id)).toEqual([3]);
});

test("a slot's own mapping cannot back another slot (it goes when its slot goes)", ({ vm }) => {
  using ram = Memfd.create('ram', { size: 2 * MiB });
  const a = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: ram });
  expect(a.userspace.view.slotOwned).toBe(true);
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, userspace: a.userspace.view }))).toBe('ERR_IN_USE');
});

mappableTest("another VM's guest_memfd cannot be a slot's userspace memory", ({ vm, kvm }) => {
  using other = kvm.createVm({ type: vm.type });
  const foreign = other.createGuestMemfd({ size: 2 * MiB, mmap: true, initShared: true });
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: foreign }))).toBe('ERR_FOREIGN_GUEST_MEMFD');
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: foreign.map() }))).toBe('ERR_FOREIGN_GUEST_MEMFD');
});

test('a move racing a removal fails instead of re-creating the removed slot', async ({ vm }) => {
  using ram = Memfd.create('ram', { size: MiB });
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: ram });
  let removal: Promise<void> | undefined;
  const off = vm.notifier.register({
    async populate() {
      off();
      removal = vm.removeMemorySlot(slot);
      await removal;
    },
  });
  await expect(vm.moveMemorySlot(slot, G4)).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  await removal;
  expect(vm.slots).toEqual([]);
  // Nothing is left in the kernel at either address.
  vm.setUserMemoryRegion2({ slot: 0, flags: 0, guestPhysAddr: G4, memorySize: 4096, userspaceAddr: ram.map(0, 4096).address });
});

test('a slot bound while closeAsync awaited its listeners stops the close', async ({ vm }) => {
  using ram = Memfd.create('ram', { size: MiB });
  const off = ram.notifier.register({
    async invalidateStart() {
      off();
      vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: ram });
    },
  });
  await expect(ram.closeAsync()).rejects.toMatchObject({ code: 'ERR_IN_USE' });
  expect(ram.closed).toBe(false);
  expect(vm.memory.read(0, 1)).toEqual(Buffer.from([0]));
});

test('closing a VM closes every part even when one fails, then reports them together', ({ vm }) => {
  const gmem = gmemOf(vm);
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem } });
  const vcpu = vm.createVcpu(0);
  // Make the slot deletion fail in the kernel: pull the slot out from under the library.
  native.setUserMemoryRegion2(vm.fd, 0, 0, 0, 0, 0, 0, 0);
  native.close(vm.fd); // the VM fd is gone too: every later ioctl fails EBADF
  let error: unknown;
  try {
    vm.close();
  } catch (e) {
    error = e;
  }
  expect(vcpu.closed).toBe(true);
  expect(gmem.closed).toBe(true);
  expect(vm.closed).toBe(true);
  expect(vm.slots).toEqual([]);
  expect((error as { code: string }).code).toBe('ERR_CLOSE_INCOMPLETE');
});

test('more slots than KVM_CAP_NR_MEMSLOTS are refused with ERR_NO_SLOTS', ({ vm }) => {
  // A smaller limit keeps the test short; the check is the same.
  (vm as unknown as { cap(c: number): number }).cap = ((orig) => (c: number) => (c === Cap.NrMemslots ? 8 : orig(c)))(
    vm.cap.bind(vm),
  );
  using ram = Memfd.create('ram', { size: 8 * 4096 });
  const view = ram.map();
  for (let i = 0; i < 8; i++) vm.addMemorySlot({ guestPhysAddr: i * 4096, size: 4096, userspace: view });
  let error: unknown;
  try {
    vm.addMemorySlot({ guestPhysAddr: 8 * 4096, size: 4096, userspace: view });
  } catch (e) {
    error = e;
  }
  expect((error as StateError).code).toBe('ERR_NO_SLOTS');
  expect((error as Error).message).toMatch(/all 8 slots \(KVM_CAP_NR_MEMSLOTS\)/);
});

test('bad argument types are typed errors before any syscall', ({ vm }) => {
  const fds = openFds();
  expect(codeOf(() => vm.addMemorySlot(undefined as never))).toBe('ERR_INVALID_ARG_TYPE');
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: -1, size: 4096 }))).toBe('ERR_OUT_OF_RANGE');
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 1n << 65n, size: 4096 }))).toBe('ERR_OUT_OF_RANGE');
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 'x' as never, size: 4096 }))).toBe('ERR_INVALID_ARG_TYPE');
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 4096, userspace: 'heap' as never }))).toBe('ERR_INVALID_ARG_TYPE');
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: 0, size: 4096, guestMemfd: { file: {} as GuestMemfd } }))).toBe(
    'ERR_INVALID_ARG_TYPE',
  );
  expect(openFds()).toBe(fds);
});

test('a slot keeps its backings: unmap and close are refused while it exists', async ({ vm }) => {
  const gmem = gmemOf(vm);
  using ram = Memfd.create('ram', { size: 2 * MiB });
  const view = ram.map();
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: view });
  expect(codeOf(() => view.unmap())).toBe('ERR_IN_USE');
  expect(codeOf(() => ram.close())).toBe('ERR_IN_USE');
  expect(() => ram.close()).toThrow(/bound by slot 0 \(GPA 0x0..0x200000\); remove the slot first/);
  const g = vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, guestMemfd: { file: gmem } });
  expect(codeOf(() => gmem.close())).toBe('ERR_IN_USE');
  await vm.removeMemorySlot(slot);
  await vm.removeMemorySlot(g);
  view.unmap();
  gmem.close();
  expect(gmem.closed).toBe(true);
});

test('disposing a bound file defers its close until the slot is gone', async ({ vm }) => {
  const ram = Memfd.create('ram', { size: 2 * MiB });
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: ram });
  ram[Symbol.dispose]();
  expect(ram.closed).toBe(false);
  await vm.removeMemorySlot(slot);
  expect(ram.closed).toBe(true);
});

test('removeMemorySlot deletes the slot in the kernel, unmaps its own mapping and frees the GPA range', async ({ vm }) => {
  const gmem = gmemOf(vm);
  const raw = rawOf(gmem);
  const maps = native.mappingCount();
  const slot = vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, guestMemfd: { file: gmem } });
  const view = slot.userspace.view;
  expect(native.mappingCount()).toBe(maps + 1);
  await vm.removeMemorySlot(slot);
  expect(slot.removed).toBe(true);
  expect(view.mapped).toBe(false);
  expect(native.mappingCount()).toBe(maps);
  expect(vm.slots).toEqual([]);
  // The kernel freed the range and the binding: the same raw region binds again.
  vm.setUserMemoryRegion2(raw());
  await expect(vm.removeMemorySlot(slot)).rejects.toMatchObject({ code: 'ERR_CLOSED' });
});

test(`add/remove ${CYCLES.toLocaleString('en')} times leaks no fd or mapping`, async ({ vm }) => {
  const gmem = gmemOf(vm);
  const fds = openFds();
  const maps = native.mappingCount();
  using ram = Memfd.create('ram', { size: 2 * MiB });
  for (let i = 0; i < CYCLES; i++) {
    const a = vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, guestMemfd: { file: gmem } });
    const b = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: ram });
    const c = vm.addMemorySlot({ guestPhysAddr: 2n * G4, size: 64 * 1024, userspace: 'anonymous' });
    await vm.removeMemorySlot(a);
    await vm.removeMemorySlot(b);
    await vm.removeMemorySlot(c);
  }
  expect(openFds()).toBe(fds + 1); // the memfd itself
  expect(native.mappingCount()).toBe(maps);
});

test('512 slots can be added and listed in GPA order', ({ vm }) => {
  using ram = Memfd.create('ram', { size: 512 * 4096 });
  const view = ram.map();
  for (let i = 511; i >= 0; i--) vm.addMemorySlot({ guestPhysAddr: BigInt(i) * 0x10000n, size: 4096, userspace: view });
  const slots = vm.slots;
  expect(slots).toHaveLength(512);
  expect(slots.map((s) => s.guestPhysAddr)).toEqual(Array.from({ length: 512 }, (_, i) => BigInt(i) * 0x10000n));
  expect(new Set(slots.map((s) => s.id)).size).toBe(512);
  expect(vm.slotAt(0x10000n * 300n)?.guestPhysAddr).toBe(0x10000n * 300n);
});

test('vm.memory reads what was written through the file view, across slots', ({ vm }) => {
  using ram = Memfd.create('ram', { size: 2 * MiB });
  vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: ram });
  vm.addMemorySlot({ guestPhysAddr: MiB, size: MiB, userspace: ram, userspaceOffset: MiB });
  const fileView = ram.map();
  fileView.buffer.write('across the boundary', MiB - 6);
  expect(vm.memory.read(MiB - 6, 19).toString()).toBe('across the boundary');
  vm.memory.write(MiB - 3, Buffer.from('XYZ!!!'));
  expect(fileView.buffer.toString('utf8', MiB - 3, MiB + 3)).toBe('XYZ!!!');
});

test('vm.memory.view is zero-copy within one slot and refuses to span slots', ({ vm }) => {
  using ram = Memfd.create('ram', { size: 2 * MiB });
  vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: ram });
  vm.addMemorySlot({ guestPhysAddr: MiB, size: MiB, userspace: ram, userspaceOffset: MiB });
  const v = vm.memory.view(4096, 16);
  v[0] = 0x42;
  expect(ram.map(0, 8192).buffer[4096]).toBe(0x42);
  expect(codeOf(() => vm.memory.view(MiB - 8, 16))).toBe('ERR_NOT_CONTIGUOUS');
});

test('vm.memory names unmapped GPAs', ({ vm }) => {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 4096, userspace: 'anonymous' });
  expect(codeOf(() => vm.memory.read(0, 8192))).toBe('ERR_UNMAPPED_GPA');
  expect(() => vm.memory.read(0, 8192)).toThrow(/GPA 0x1000..0x2000 is not covered by any memory slot/);
  expect(codeOf(() => vm.memory.write(G4, Buffer.alloc(1)))).toBe('ERR_UNMAPPED_GPA');
});

test('moving a plain slot keeps its memory; moving a guest_memfd slot re-creates it', async ({ vm }) => {
  const gmem = gmemOf(vm);
  using ram = Memfd.create('ram', { size: MiB });
  const plain = vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: ram });
  vm.memory.write(16, Buffer.from('kept'));
  await vm.moveMemorySlot(plain, G4);
  expect(plain.guestPhysAddr).toBe(G4);
  expect(vm.memory.read(G4 + 16n, 4).toString()).toBe('kept');
  const g = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem } });
  await vm.moveMemorySlot(g, 2n * G4);
  expect(vm.slotAt(2n * G4)).toBe(g);
  expect(vm.slotAt(0)).toBeUndefined();
  await expect(vm.moveMemorySlot(g, G4)).rejects.toMatchObject({ code: 'ERR_SLOT_OVERLAP' });
});

test('a dirty-logging slot is queryable; host writes are not guest writes', ({ vm }) => {
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 64 * 4096, userspace: 'anonymous', logDirtyPages: true });
  vm.memory.write(4096, Buffer.from([1]));
  const log = slot.getDirtyLog();
  expect(log.pages).toBe(64);
  expect(log.count).toBe(0);
  const plain = vm.addMemorySlot({ guestPhysAddr: G4, size: 4096, userspace: 'anonymous' });
  expect(codeOf(() => plain.getDirtyLog())).toBe('ERR_INVALID_STATE');
});

test('without KVM_CAP_USER_MEMORY2 a plain slot falls back to KVM_SET_USER_MEMORY_REGION', ({ vm }) => {
  const gmem = gmemOf(vm);
  (vm as unknown as { cap(c: number): number }).cap = ((orig) => (c: number) => (c === Cap.UserMemory2 ? 0 : orig(c)))(
    vm.cap.bind(vm),
  );
  using ram = Memfd.create('ram', { size: MiB });
  vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: ram });
  expect(codeOf(() => vm.addMemorySlot({ guestPhysAddr: G4, size: MiB, guestMemfd: { file: gmem } }))).toBe('ERR_UNSUPPORTED');
  // The old ioctl made a real slot: the range is taken in the kernel.
  expect(kernelCode(() => vm.setUserMemoryRegion2({ slot: 9, flags: 0, guestPhysAddr: 0, memorySize: 4096, userspaceAddr: ram.map(0, 4096).address }))).toBe('EEXIST');
});

test('closing the VM removes its slots and detaches their views', ({ vm }) => {
  using ram = Memfd.create('ram', { size: MiB });
  const view = ram.map();
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: view });
  vm.close();
  expect(slot.removed).toBe(true);
  expect(view.pinned).toBe(false);
  ram.close();
  expect(view.buffer.length).toBe(0);
});
