// Invalidation and populate notifications, wired to real discards on the kernel.
import { describe, expect, test } from 'vitest';
import { Memfd, Notifier, type FileRangeEvent, type GpaRangeEvent, type MemoryFile, type Vm } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';
import { gmemOf } from './helpers';

const MiB = 1 << 20;
const G4 = 1n << 32n;

describe('Notifier (pure)', () => {
  test('register returns an unregister function that stops delivery and is repeat-safe', async () => {
    const n = Notifier.create<number>();
    const seen: number[] = [];
    const off = n.register({ invalidateStart: (e) => void seen.push(e) });
    const { invalidate } = await import('../lib/events/notifier');
    await invalidate([[n, 1]], () => undefined);
    off();
    off();
    await invalidate([[n, 2]], () => undefined);
    expect(seen).toEqual([1]);
    expect(n.size).toBe(0);
  });

  test('listeners run in registration order: all starts, the operation, all ends', async () => {
    const n = Notifier.create<string>();
    const log: string[] = [];
    n.register({ invalidateStart: () => void log.push('a:start'), invalidateEnd: () => void log.push('a:end') });
    n.register({
      async invalidateStart() {
        await new Promise((r) => setTimeout(r, 5));
        log.push('b:start');
      },
      invalidateEnd: () => void log.push('b:end'),
    });
    const { invalidate } = await import('../lib/events/notifier');
    await invalidate([[n, 'x']], () => void log.push('op'));
    expect(log).toEqual(['a:start', 'b:start', 'op', 'a:end', 'b:end']);
  });

  test('a throwing start does not stop the operation; the error goes to onError', async () => {
    const n = Notifier.create<string>();
    const errors: unknown[] = [];
    n.onError = (e, phase) => void errors.push([phase, (e as Error).message]);
    const ends: string[] = [];
    n.register({ invalidateStart: () => { throw new Error('busy'); }, invalidateEnd: () => void ends.push('end') });
    const { invalidate } = await import('../lib/events/notifier');
    let ran = false;
    await invalidate([[n, 'x']], () => void (ran = true));
    expect(ran).toBe(true);
    expect(ends).toEqual(['end']);
    expect(errors).toEqual([['invalidateStart', 'busy']]);
  });

  test('by default a listener error becomes a process warning', async () => {
    const n = Notifier.create<string>();
    n.register({ invalidateEnd: () => { throw new Error('oops'); } });
    const warned = new Promise<Error>((resolve) => process.once('warning', resolve));
    const { invalidate } = await import('../lib/events/notifier');
    await invalidate([[n, 'x']], () => undefined);
    const w = await warned;
    expect(w.name).toBe('GuestMemfdListenerWarning');
    expect(w.message).toMatch(/invalidateEnd.*oops/);
  });

  test('an async onError that rejects becomes a warning, not an unhandled rejection', async () => {
    const n = Notifier.create<string>();
    n.onError = async () => {
      await Promise.resolve();
      throw new Error('handler rejects');
    };
    n.register({ invalidateStart: () => { throw new Error('listener fails'); } });
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => void unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    const warnings: string[] = [];
    const onWarning = (w: Error) => void warnings.push(w.message);
    process.on('warning', onWarning);
    try {
      const { invalidate } = await import('../lib/events/notifier');
      await invalidate([[n, 'x']], () => undefined);
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
      expect(unhandled).toEqual([]);
      expect(warnings.some((w) => /listener fails/.test(w))).toBe(true);
      expect(warnings.some((w) => /onError threw.*handler rejects/.test(w))).toBe(true);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      process.off('warning', onWarning);
    }
  });

  test('invalidateEnd runs even when the operation fails, and the failure propagates', async () => {
    const n = Notifier.create<string>();
    const ends: string[] = [];
    n.register({ invalidateEnd: (e) => void ends.push(e) });
    const { invalidate } = await import('../lib/events/notifier');
    await expect(invalidate([[n, 'x']], () => { throw new Error('kernel said no'); })).rejects.toThrow('kernel said no');
    expect(ends).toEqual(['x']);
  });

  test('populate: a veto rolls back exactly the listeners that accepted, then rethrows', async () => {
    const { populate } = await import('../lib/events/notifier');
    const a = Notifier.create<string>();
    const b = Notifier.create<string>();
    const log: string[] = [];
    a.register({ populate: (e) => void log.push(`a1 populate ${e}`), invalidateStart: (e) => void log.push(`a1 start ${e}`), invalidateEnd: (e) => void log.push(`a1 end ${e}`) });
    a.register({ invalidateStart: () => void log.push('a2 start (never populated)') });
    b.register({ populate: () => { throw new Error('no'); }, invalidateStart: () => void log.push('b start') });
    await expect(populate([[a, 'x'], [b, 'y']])).rejects.toThrow('no');
    expect(log).toEqual(['a1 populate x', 'a1 start x', 'a1 end x']);
  });

  test('register validates its listener', () => {
    const n = Notifier.create<string>();
    expect(() => n.register(null as never)).toThrow(TypeError);
    expect(() => n.register({ populate: 5 as never })).toThrow(/listener.populate must be a function/);
  });

  test('10,000 register/unregister cycles leave no listener behind', () => {
    const n = Notifier.create<string>();
    for (let i = 0; i < 10_000; i++) n.register({ invalidateStart() {} })();
    expect(n.size).toBe(0);
    expect(n.snapshot()).toHaveLength(0);
  });

  test('events() yields notifications for for-await and unregisters on break', async () => {
    const n = Notifier.create<number>();
    const { invalidate } = await import('../lib/events/notifier');
    const got: string[] = [];
    const done = (async () => {
      for await (const ev of n.events()) {
        got.push(`${ev.type}:${ev.event}`);
        if (got.length === 2) break;
      }
    })();
    await Promise.resolve();
    await invalidate([[n, 7]], () => undefined);
    await done;
    expect(got).toEqual(['invalidate-start:7', 'invalidate-end:7']);
    expect(n.size).toBe(0);
  });
});

const kvm = kvmTest({ guestMemfd: true });

function record<E extends object>(target: { notifier: Notifier<E> }): Array<{ phase: string } & E> {
  const events: Array<{ phase: string } & E> = [];
  target.notifier.register({
    invalidateStart: (e) => void events.push({ phase: 'start', ...e }),
    invalidateEnd: (e) => void events.push({ phase: 'end', ...e }),
    populate: (e) => void events.push({ phase: 'populate', ...e }),
  });
  return events;
}

kvm('punch-hole events carry the file range and the GPA ranges of both slots binding it', async ({ vm }) => {
  const gmem = gmemOf(vm, 8 * MiB);
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
  vm.addMemorySlot({ guestPhysAddr: G4, size: 4 * MiB, guestMemfd: { file: gmem, offset: 4 * MiB } });
  const fileEvents = record<FileRangeEvent<MemoryFile>>(gmem);
  const vmEvents = record<GpaRangeEvent<Vm>>(vm);
  // One range spanning the end of slot 0's part, the unbound middle and slot 1's start.
  await gmem.punchHole(MiB, 4 * MiB);
  expect(fileEvents.map((e) => [e.phase, e.cause, e.offset, e.length])).toEqual([
    ['start', 'punch-hole', MiB, 4 * MiB],
    ['end', 'punch-hole', MiB, 4 * MiB],
  ]);
  // The guest_memfd is both the shared and the private backing of each slot.
  const ranges = fileEvents[0]!.ranges.map((r) => [r.slot, r.guestPhysAddr, r.size]);
  expect(ranges).toContainEqual([0, BigInt(MiB), BigInt(MiB)]);
  expect(ranges).toContainEqual([1, G4, BigInt(MiB)]);
  const starts = vmEvents.filter((e) => e.phase === 'start').map((e) => [e.guestPhysAddr, e.size]);
  expect(starts).toContainEqual([BigInt(MiB), BigInt(MiB)]);
  expect(starts).toContainEqual([G4, BigInt(MiB)]);
  expect(vmEvents.every((e) => e.cause === 'punch-hole')).toBe(true);
});

test('an async invalidateStart delays the punch: data readable during it, zero after end', async () => {
  using gmem = Memfd.create('delayed', { size: 4096 });
  const view = gmem.map(0, 4096);
  view.buffer.fill(0x77);
  const seen: number[] = [];
  gmem.notifier.register({
    async invalidateStart() {
      await new Promise((r) => setTimeout(r, 20));
      seen.push(view.buffer[0]!);
    },
    invalidateEnd() {
      seen.push(view.buffer[0]!);
    },
  });
  await gmem.punchHole(0, 4096);
  expect(seen).toEqual([0x77, 0]);
});

test('memfd truncate is announced for the discarded tail', async () => {
  using ram = Memfd.create('ram', { size: 4 * 4096, shrinkable: true });
  const events = record<FileRangeEvent<MemoryFile>>(ram);
  await ram.truncate(4096);
  expect(events.map((e) => [e.phase, e.cause, e.offset, e.length])).toEqual([
    ['start', 'truncate', 4096, 3 * 4096],
    ['end', 'truncate', 4096, 3 * 4096],
  ]);
  await ram.truncate(8 * 4096); // growing discards nothing
  expect(events).toHaveLength(2);
});

kvm('slot removal is announced to the VM and to both backings', async ({ vm }) => {
  const gmem = vm.createGuestMemfd({ size: 8 * MiB });
  using ram = Memfd.create('ram', { size: 2 * MiB });
  const slot = vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, userspace: ram, guestMemfd: { file: gmem, offset: 2 * MiB } });
  const vmEvents = record<GpaRangeEvent<Vm>>(vm);
  const ramEvents = record<FileRangeEvent<MemoryFile>>(ram);
  const gmemEvents = record<FileRangeEvent<MemoryFile>>(gmem);
  await vm.removeMemorySlot(slot);
  expect(vmEvents.map((e) => [e.phase, e.cause, e.guestPhysAddr, e.size])).toEqual([
    ['start', 'slot-removed', G4, BigInt(2 * MiB)],
    ['end', 'slot-removed', G4, BigInt(2 * MiB)],
  ]);
  expect(ramEvents.map((e) => [e.phase, e.offset, e.length])).toEqual([
    ['start', 0, 2 * MiB],
    ['end', 0, 2 * MiB],
  ]);
  expect(gmemEvents.map((e) => [e.phase, e.offset, e.ranges[0]!.guestPhysAddr])).toEqual([
    ['start', 2 * MiB, G4],
    ['end', 2 * MiB, G4],
  ]);
});

kvm('the slot is still in the kernel during invalidateStart and gone at invalidateEnd', async ({ vm }) => {
  const gmem = gmemOf(vm, 8 * MiB);
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem } });
  const seen: Array<boolean> = [];
  vm.notifier.register({
    invalidateStart: () => void seen.push(vm.slotAt(0) === slot),
    invalidateEnd: () => void seen.push(vm.slotAt(0) === slot),
  });
  await vm.removeMemorySlot(slot);
  expect(seen).toEqual([true, false]);
});

test('closing a file announces a close of the whole file', () => {
  const ram = Memfd.create('ram', { size: 8192 });
  const events = record<FileRangeEvent<MemoryFile>>(ram);
  ram.close();
  expect(events.map((e) => [e.phase, e.cause, e.offset, e.length])).toEqual([
    ['start', 'close', 0, 8192],
    ['end', 'close', 0, 8192],
  ]);
});

kvm('closing the VM announces the removal of its slots with cause close', ({ vm }) => {
  const gmem = gmemOf(vm, 8 * MiB);
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem } });
  const vmEvents = record<GpaRangeEvent<Vm>>(vm);
  const gmemEvents = record<FileRangeEvent<MemoryFile>>(gmem);
  vm.close();
  expect(vmEvents.map((e) => [e.phase, e.cause])).toEqual([
    ['start', 'close'],
    ['end', 'close'],
  ]);
  // The guest_memfd hears the slot going (bound range) and then its own close.
  expect(gmemEvents.map((e) => [e.phase, e.cause, e.length])).toEqual([
    ['start', 'close', 2 * MiB],
    ['end', 'close', 2 * MiB],
    ['start', 'close', 8 * MiB],
    ['end', 'close', 8 * MiB],
  ]);
});

kvm('unregister stops delivery of real discards', async ({ vm }) => {
  const gmem = gmemOf(vm, 8 * MiB);
  const events: string[] = [];
  const off = gmem.notifier.register({ invalidateStart: (e) => void events.push(e.cause) });
  await gmem.punchHole(0, 4096);
  off();
  await gmem.punchHole(0, 4096);
  expect(events).toEqual(['punch-hole']);
});

kvm('registration can replay what is populated now', async ({ vm }) => {
  const gmem = gmemOf(vm, 8 * MiB);
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
  vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, guestMemfd: { file: gmem, offset: 4 * MiB } });
  const vmReplay: Array<[bigint, bigint, string | undefined]> = [];
  const offVm = await vm.notifier.register(
    { populate: (e) => void vmReplay.push([e.guestPhysAddr, e.size, e.state]) },
    { replay: true },
  );
  expect(vmReplay).toEqual([
    [0n, BigInt(2 * MiB), 'shared'],
    [G4, BigInt(2 * MiB), 'shared'],
  ]);
  const fileReplay: Array<[number, number, string]> = [];
  await gmem.notifier.register({ populate: (e) => void fileReplay.push([e.offset, e.length, e.cause]) }, { replay: true });
  // Each slot binds the guest_memfd twice (shared and private backing).
  expect(new Set(fileReplay.map((r) => r.join()))).toEqual(new Set([`0,${2 * MiB},replay`, `${4 * MiB},${2 * MiB},replay`]));
  offVm();
});

kvm('a slot add is announced to populate listeners, and a throw vetoes it', ({ vm }) => {
  const populated: string[] = [];
  const off = vm.notifier.register({ populate: (e) => void populated.push(`${e.cause}:${e.guestPhysAddr}`) });
  vm.addMemorySlot({ guestPhysAddr: 0, size: 4096, userspace: 'anonymous' });
  expect(populated).toEqual(['slot-added:0']);
  off();
  vm.notifier.register({ populate: () => { throw new Error('not now'); } });
  expect(() => vm.addMemorySlot({ guestPhysAddr: G4, size: 4096, userspace: 'anonymous' })).toThrow('not now');
  expect(vm.slotAt(G4)).toBeUndefined();
});
