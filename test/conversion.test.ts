// Shared/private conversion on the real kernel, where a VM type offers
// KVM_MEMORY_ATTRIBUTE_PRIVATE (the mainline kernels' sw-protected VMs); the refusal
// is tested where default VMs lack it.
import { expect } from 'vitest';
import { Cap, Memfd, UnsupportedError, type ConversionResult, type GuestMemfd, type Vm } from '../lib/index';
import { native } from '../lib/native';
import { findVmType, kvmTest } from '../lib/testing/vitest.mjs';

const MiB = 1 << 20;
const PAGE = 4096;

const defaultTest = kvmTest({ type: 'default' });
const refusalSkip = findVmType({ type: 'default', privateMemory: true }).type ? 'default VMs here can convert' : undefined;

defaultTest.skipIf(refusalSkip)(
  'vm.convert throws UnsupportedError naming KVM_CAP_MEMORY_ATTRIBUTES and what the VM reported, touching nothing',
  async ({ vm }) => {
    using ram = Memfd.create('ram', { size: 2 * MiB });
    vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: ram });
    ram.map().buffer.fill(1);
    const events: string[] = [];
    vm.notifier.register({ populate: () => void events.push('populate'), invalidateStart: () => void events.push('start') });
    ram.notifier.register({ invalidateStart: () => void events.push('file start') });
    const error = await vm.convert(0, 2 * PAGE, 'private').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnsupportedError);
    expect((error as UnsupportedError).capability).toBe('KVM_CAP_MEMORY_ATTRIBUTES');
    expect((error as UnsupportedError).reported).toBe(BigInt(vm.checkExtension(Cap.MemoryAttributes)));
    expect((error as Error).message).toMatch(/vm\.convert .*KVM_CAP_MEMORY_ATTRIBUTES=/);
    expect(events).toEqual([]);
    expect(vm.attributes.count).toBe(0);
    expect(ram.map(0, PAGE).buffer[0]).toBe(1);
    // Bad arguments are named first: they would be wrong anywhere.
    await expect(vm.convert(1, 1, 'private')).rejects.toMatchObject({ code: 'ERR_UNALIGNED' });
    await expect(vm.convert(0, PAGE, 'Private' as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });
  },
);

defaultTest.skipIf(refusalSkip)(
  'setMemoryAttributes and the memory-fault policy are refused the same way; the kernel agrees',
  async ({ vm }) => {
    expect(() => vm.setMemoryAttributes(0, PAGE, 8n)).toThrow(UnsupportedError);
    await expect(vm.convertOnMemoryFault({ gpa: 0x1234n, size: 8n, private: true })).rejects.toBeInstanceOf(UnsupportedError);
    let code: string | undefined;
    try {
      native.setMemoryAttributes(vm.fd, 0, PAGE, 8n);
    } catch (e) {
      code = (e as { code: string }).code;
    }
    expect(['ENOTTY', 'EINVAL']).toContain(code);
  },
);

const test = kvmTest({ privateMemory: true });
const inPlaceTest = kvmTest({ privateMemory: true, mmap: true, initShared: true });

/** 2 MiB at GPA 0: a memfd shared backing and a guest_memfd, both closed with the VM. */
function setup(vm: Vm): { ram: Memfd; gmem: GuestMemfd } {
  const ram = Memfd.create('ram', { size: 2 * MiB });
  const gmem = vm.createGuestMemfd({ size: 2 * MiB });
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: ram, guestMemfd: { file: gmem } });
  ram[Symbol.dispose](); // closes once the VM has removed the slot
  return { ram, gmem };
}

test('to private: the map records it and the shared copy is discarded', async ({ vm }) => {
  const { ram } = setup(vm);
  const view = ram.map();
  view.buffer.fill(0xab);
  const allocated = ram.stat().allocatedBytes;
  const result = await vm.convert(PAGE, 2 * PAGE, 'private');
  expect(result.converted).toEqual([{ guestPhysAddr: BigInt(PAGE), size: BigInt(2 * PAGE), to: 'private' }]);
  expect(vm.attributes.at(PAGE)).toBe('private');
  expect(vm.attributes.at(0)).toBe('shared');
  // Measured before anything reads the punched pages: a read would fault them back in.
  expect(ram.stat().allocatedBytes).toBe(allocated - 2 * PAGE);
  expect(view.buffer[PAGE - 1]).toBe(0xab);
  expect(view.buffer.subarray(PAGE, 3 * PAGE).every((b) => b === 0)).toBe(true);
  expect(view.buffer[3 * PAGE]).toBe(0xab);
  expect(() => vm.memory.read(PAGE, 1)).toThrow(/is private/);
});

test('to shared: the map records it and the guest_memfd range is punched', async ({ vm }) => {
  setup(vm);
  await vm.convert(0, 4 * PAGE, 'private');
  const events: Array<[string, number, number]> = [];
  vm.slots[0]!.guestMemfd!.file.notifier.register({ invalidateStart: (e) => void events.push([e.cause, e.offset, e.length]) });
  await vm.convert(PAGE, PAGE, 'shared');
  expect(vm.attributes.ranges().map((r) => [r.guestPhysAddr, r.size])).toEqual([
    [0n, BigInt(PAGE)],
    [BigInt(2 * PAGE), BigInt(2 * PAGE)],
  ]);
  expect(events).toEqual([['convert-to-shared', PAGE, PAGE]]);
  expect(vm.memory.read(PAGE, 4)).toEqual(Buffer.alloc(4));
});

test('conversion is idempotent: a second call touches nothing', async ({ vm }) => {
  setup(vm);
  await vm.convert(0, 2 * PAGE, 'private');
  const events: string[] = [];
  vm.notifier.register({ populate: () => void events.push('populate'), invalidateStart: () => void events.push('start') });
  const again = await vm.convert(0, 2 * PAGE, 'private');
  expect(again.converted).toEqual([]);
  expect(again.unchangedBytes).toBe(BigInt(2 * PAGE));
  expect(events).toEqual([]);
});

test('a populate veto leaves the kernel, the map and the shared copy as they were', async ({ vm }) => {
  const { ram } = setup(vm);
  const view = ram.map();
  view.buffer.fill(0x11);
  const off = vm.notifier.register({ populate: () => { throw new Error('vetoed'); } });
  await expect(vm.convert(0, PAGE, 'private')).rejects.toThrow('vetoed');
  expect(vm.attributes.count).toBe(0);
  expect(view.buffer[0]).toBe(0x11);
  expect(vm.memory.read(0, 1)[0]).toBe(0x11);
  off();
  const retry = await vm.convert(0, PAGE, 'private');
  expect(retry.converted).toHaveLength(1);
});

test('a range not covered by guest_memfd slots is refused, listing the gaps', async ({ vm }) => {
  setup(vm);
  vm.addMemorySlot({ guestPhysAddr: 4 * MiB, size: MiB, userspace: 'anonymous' });
  await expect(vm.convert(2 * MiB - PAGE, 3 * MiB + PAGE, 'private')).rejects.toThrow(
    /not covered: 0x200000..0x400000 \(no slot\), 0x400000..0x500000 \(slot 1 has no guest_memfd\)/,
  );
  expect(vm.attributes.count).toBe(0);
});

inPlaceTest('views over a mappable guest_memfd range turning private in place are cut off first', async ({ vm }) => {
  setup(vm);
  const gmem = vm.createGuestMemfd({ size: 2 * MiB, mmap: true, initShared: true });
  vm.addMemorySlot({ guestPhysAddr: 4 * MiB, size: 2 * MiB, guestMemfd: { file: gmem } });
  const inside = gmem.map(0, PAGE);
  const outside = gmem.map(PAGE, PAGE);
  await vm.convert(4 * MiB, PAGE, 'private');
  expect(inside.buffer.length).toBe(0);
  expect(outside.buffer.length).toBe(PAGE);
});

test('a slot removed while populate listeners run is never acted on (even if its id is reused)', async ({ vm }) => {
  setup(vm);
  using other = Memfd.create('other', { size: 2 * MiB });
  other.map().buffer.fill(0xaa);
  const off = vm.notifier.register({
    async populate() {
      off();
      await vm.removeMemorySlot(vm.slots[0]!);
      vm.addMemorySlot({ guestPhysAddr: 8 * MiB, size: 2 * MiB, userspace: other, slot: 0 });
    },
  });
  await expect(vm.convert(0, PAGE, 'private')).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  expect(vm.attributes.count).toBe(0);
  expect(other.map(0, PAGE).buffer[0]).toBe(0xaa);
});

test('vm.convert with nobody listening (its direct path) does what the engine does with a listener: results, map, discards', async ({ vm }) => {
  const { ram, gmem } = setup(vm);
  const view = ram.map();
  /** The same steps at `base`, with or without a listener; everything relative to `base`. */
  const steps = async (base: number, listen: boolean): Promise<unknown[]> => {
    const off = listen ? vm.notifier.register({ invalidateStart() {} }) : undefined;
    const log: unknown[] = [];
    const note = (r: ConversionResult) => {
      const allocated = [ram.stat().allocatedBytes, gmem.stat().allocatedBytes];
      log.push({
        converted: r.converted.map((c) => [Number(c.guestPhysAddr) - base, Number(c.size), c.to]),
        unchanged: r.unchangedBytes,
        map: vm.attributes.ranges(base, base + 16 * PAGE).map((x) => [Number(x.guestPhysAddr) - base, Number(x.size)]),
        allocated,
      });
    };
    view.buffer.fill(0x5a, base, base + 8 * PAGE);
    const before = [ram.stat().allocatedBytes, gmem.stat().allocatedBytes];
    for (const [page, pages, to] of [[0, 4, 'private'], [1, 1, 'shared'], [0, 4, 'private'], [0, 4, 'private'], [2, 2, 'shared'], [0, 8, 'shared']] as const)
      note(await vm.convert(base + page * PAGE, pages * PAGE, to));
    off?.();
    // Allocation as a change from where each run began (the runs share the files).
    return log.map((e) => ({ ...(e as object), allocated: (e as { allocated: number[] }).allocated.map((a, i) => a - before[i]!) }));
  };
  const direct = await steps(0, false);
  const engine = await steps(64 * PAGE, true);
  expect(direct).toEqual(engine);
  expect(direct[0]).toMatchObject({ converted: [[0, 4 * PAGE, 'private']], map: [[0, 4 * PAGE]], allocated: [-4 * PAGE, 0] });
  expect(view.buffer[PAGE]).toBe(0);
  expect(view.buffer[4 * PAGE]).toBe(0x5a);
});

test('convertMany applies a batch in one call per direction', async ({ vm }) => {
  setup(vm);
  const r = await vm.convertMany([
    { guestPhysAddr: 0, size: PAGE, to: 'private' },
    { guestPhysAddr: 8 * PAGE, size: PAGE, to: 'private' },
  ]);
  expect(r.converted).toHaveLength(2);
  expect(vm.attributes.count).toBe(2);
});

test('the memory-fault policy converts the faulting pages to the accessed state', async ({ vm }) => {
  setup(vm);
  await vm.convertOnMemoryFault({ gpa: BigInt(PAGE + 100), size: 8n, private: true });
  expect(vm.attributes.at(PAGE)).toBe('private');
  await vm.convertOnMemoryFault({ gpa: BigInt(PAGE), size: BigInt(PAGE), private: false });
  expect(vm.attributes.at(PAGE)).toBe('shared');
});
