// memfd on the real kernel: sizes, seals, hugetlb refusal, truncation safety, views.
import { describe, expect, test } from 'vitest';
import { KvmError, Memfd, MemoryView } from '../lib/index';
import { native } from '../lib/native';
import { codeOf, openFds } from './helpers';
import { runs } from './runs';

/** Create/close cycles of the leak tests (fewer inside an emulated kernel). */
const CYCLES = runs(1000);

const MiB = 1 << 20;
const freeHugePages = (() => {
  try {
    return Number(require('node:fs').readFileSync('/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages', 'utf8'));
  } catch {
    return 0;
  }
})();
const secretAvailable = (() => {
  try {
    Memfd.create('probe', { secret: true, size: 4096 }).close();
    return true;
  } catch {
    return false;
  }
})();

describe('memfd', () => {
  test('create sizes the file and map() reads back writes', () => {
    using ram = Memfd.create('ram', { size: 2 * MiB });
    expect(ram.size).toBe(2 * MiB);
    expect(ram.stat().size).toBe(2 * MiB);
    const view = ram.map();
    view.buffer.write('hello', 100);
    expect(ram.map(0, 4096).buffer.toString('utf8', 100, 105)).toBe('hello');
  });

  test('the fd is close-on-exec', () => {
    using ram = Memfd.create('ram', { size: 4096 });
    expect(native.isCloexec(ram.fd)).toBe(true);
  });

  test('allocate and punchHole are visible in the allocated bytes', async () => {
    using ram = Memfd.create('ram', { size: 2 * MiB });
    ram.allocate(0, 64 * 1024);
    expect(ram.stat().allocatedBytes).toBe(64 * 1024);
    await ram.punchHole(0, 32 * 1024);
    expect(ram.stat().allocatedBytes).toBe(32 * 1024);
  });

  test('punchHole zeroes only the punched page', async () => {
    using ram = Memfd.create('ram', { size: 3 * 4096 });
    const view = ram.map();
    view.buffer.fill(1);
    await ram.punchHole(4096, 4096);
    expect([view.buffer[4095], view.buffer[4096], view.buffer[8191], view.buffer[8192]]).toEqual([1, 0, 0, 1]);
  });

  test('seals are added and reported by name', () => {
    using ram = Memfd.create('sealed', { size: 8192, allowSealing: true, shrinkable: true });
    expect(ram.seals).toEqual([]);
    ram.seal(['shrink', 'grow']);
    expect(ram.seals).toEqual(['shrink', 'grow']);
  });

  test('by default a memfd is sealed against shrinking, and without allowSealing against further seals', () => {
    using plain = Memfd.create('plain', { size: 8192 });
    expect(plain.seals).toEqual(['seal', 'shrink']);
    expect(() => plain.seal(['grow'])).toThrow(expect.objectContaining({ code: 'EPERM' }));
    using sealable = Memfd.create('sealable', { size: 8192, allowSealing: true });
    expect(sealable.seals).toEqual(['shrink']);
    sealable.seal(['grow']);
    expect(sealable.seals).toEqual(['shrink', 'grow']);
    using loose = Memfd.create('loose', { size: 8192, shrinkable: true });
    expect(loose.seals).toEqual(['seal']);
  });

  test('truncate refuses to shrink a shrink-sealed memfd before the syscall, naming the option', async () => {
    using ram = Memfd.create('sealed', { size: 8192 });
    const error = await ram.truncate(4096).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_SEALED', message: expect.stringMatching(/sealed against shrinking.*shrinkable: true/) });
    expect(ram.size).toBe(8192);
    await ram.truncate(16384); // growing is fine
    expect(ram.size).toBe(16384);
  });

  test('a shrink seal makes the kernel refuse truncation with EPERM, explained', async () => {
    using ram = Memfd.create('sealed', { size: 8192, allowSealing: true, shrinkable: true });
    ram.seal(['shrink']);
    // The library's record says sealed now; the kernel's answer is seen through the raw call.
    await expect(ram.truncate(4096)).rejects.toMatchObject({ code: 'ERR_SEALED' });
    let code: string | undefined;
    try {
      native.ftruncate(ram.fd, 4096);
    } catch (e) {
      code = (e as { code: string }).code;
    }
    expect(code).toBe('EPERM');
    expect(ram.size).toBe(8192);
  });

  test('a grow seal refuses growth', async () => {
    using ram = Memfd.create('sealed', { size: 8192, allowSealing: true });
    ram.seal(['grow']);
    await expect(ram.truncate(16384)).rejects.toMatchObject({ code: 'EPERM' });
  });

  test('sealing without allowSealing fails EPERM, explained', () => {
    using ram = Memfd.create('plain', { size: 4096 });
    let error: unknown;
    try {
      ram.seal(['grow']);
    } catch (e) {
      error = e;
    }
    expect((error as KvmError).code).toBe('EPERM');
    expect((error as Error).message).toMatch(/without allowSealing/);
  });

  test("the 'write' seal is refused while a writable view exists (EBUSY) and allowed after unmap", () => {
    using ram = Memfd.create('w', { size: 4096, allowSealing: true });
    const view = ram.map();
    expect(codeOf(() => ram.seal(['write']))).toBe('EBUSY');
    view.unmap();
    ram.seal(['write']);
    expect(ram.seals).toContain('write');
  });

  test('noExecSeal creates a non-executable memfd sealed against exec changes', () => {
    using ram = Memfd.create('noexec', { size: 4096, noExecSeal: true });
    expect(ram.seals).toContain('exec');
    expect(require('node:fs').fstatSync(ram.fd).mode & 0o111).toBe(0);
  });

  test('unknown seal names and bad arguments are typed errors', () => {
    using ram = Memfd.create('w', { size: 4096, allowSealing: true });
    expect(codeOf(() => ram.seal(['nope' as 'grow']))).toBe('ERR_INVALID_ARG_VALUE');
    expect(codeOf(() => ram.seal('grow' as unknown as ['grow']))).toBe('ERR_INVALID_ARG_TYPE');
    expect(codeOf(() => Memfd.create(7 as unknown as string))).toBe('ERR_INVALID_ARG_TYPE');
    expect(codeOf(() => Memfd.create('x'.repeat(300)))).toBe('ERR_INVALID_ARG_VALUE');
    expect(codeOf(() => Memfd.create('x', { size: 100 }))).toBe('ERR_UNALIGNED');
    expect(codeOf(() => Memfd.create('x', { size: -1 }))).toBe('ERR_OUT_OF_RANGE');
    expect(codeOf(() => Memfd.create('x', { hugetlb: '4MB' as '2MB' }))).toBe('ERR_INVALID_ARG_VALUE');
  });

  test.skipIf(freeHugePages > 0)(
    `a hugetlb memfd without free huge pages refuses map() with ENOSPC instead of SIGBUS${freeHugePages > 0 ? ' [skipped: this host has free huge pages]' : ''}`,
    () => {
      using huge = Memfd.create('huge', { size: 2 * MiB, hugetlb: '2MB' });
      let error: unknown;
      try {
        huge.map();
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(KvmError);
      expect(['ENOSPC', 'ENOMEM']).toContain((error as KvmError).code);
      expect((error as Error).message).toMatch(/no free 2MB huge pages/);
      expect(huge.views.size).toBe(0);
    },
  );

  test('a hugetlb memfd needs huge-page-aligned sizes and maps', () => {
    expect(codeOf(() => Memfd.create('huge', { size: 4096, hugetlb: '2MB' }))).toBe('ERR_UNALIGNED');
    using huge = Memfd.create('huge', { size: 4 * MiB, hugetlb: '2MB' });
    expect(huge.granule).toBe(2 * MiB);
    expect(codeOf(() => huge.map(0, 4096))).toBe('ERR_UNALIGNED');
  });

  test.skipIf(!secretAvailable)(
    `a secret memfd (memfd_secret) maps and holds data${secretAvailable ? '' : ' [skipped: memfd_secret unavailable]'}`,
    () => {
      using secret = Memfd.create('key', { secret: true, size: 4096 });
      const view = secret.map();
      view.buffer.write('secret');
      expect(view.buffer.toString('utf8', 0, 6)).toBe('secret');
      expect(secret.secret).toBe(true);
    },
  );

  test('while a shrink awaits its listeners, the doomed tail cannot be mapped', async () => {
    using ram = Memfd.create('t', { size: 4 * 4096, shrinkable: true });
    let during: string | undefined;
    ram.notifier.register({
      async invalidateStart() {
        during = (() => {
          try {
            ram.map(2 * 4096, 4096);
            return 'mapped';
          } catch (e) {
            return (e as { code: string }).code;
          }
        })();
      },
    });
    await ram.truncate(4096);
    expect(during).toBe('ERR_OUT_OF_RANGE');
    expect(ram.size).toBe(4096);
  });

  test('a memfd dropped without close has its fd closed by the collector', async () => {
    (await import('node:v8')).setFlagsFromString('--expose-gc');
    const collect = (await import('node:vm')).runInNewContext('gc') as () => void;
    const { readlinkSync } = await import('node:fs');
    // Each fd is checked by number and name: objects other files dropped may be
    // collected during this loop too, so the addon's total count is no baseline.
    const name = `dropped-${process.pid}-${Date.now()}`;
    const target = `/memfd:${name} (deleted)`;
    const stillOpen = (fds: number[]) =>
      fds.filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`) === target;
        } catch {
          return false;
        }
      });
    const fds = (() => {
      const made: number[] = [];
      for (let i = 0; i < 50; i++) made.push(Memfd.create(name, { size: 4096 }).fd);
      return made;
    })();
    expect(stillOpen(fds)).toHaveLength(50);
    for (let i = 0; i < 200 && stillOpen(fds).length > 0; i++) {
      collect();
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(stillOpen(fds)).toEqual([]);
  });

  test.skipIf(freeHugePages === 0)(
    `punching a hugetlb memfd under a live view is refused (the reservation would go, SIGBUS next)${freeHugePages === 0 ? ' [skipped: no free 2 MiB huge pages here]' : ''}`,
    async () => {
      using huge = Memfd.create('huge', { size: 2 * MiB, hugetlb: '2MB' });
      const view = huge.map();
      await expect(huge.punchHole(0, 2 * MiB)).rejects.toMatchObject({ code: 'ERR_IN_USE' });
      view.unmap();
      await huge.punchHole(0, 2 * MiB);
    },
  );

  test('truncating below a live view is refused; after unmap it is allowed', async () => {
    using ram = Memfd.create('t', { size: 4 * 4096, shrinkable: true });
    const view = ram.map(2 * 4096, 2 * 4096);
    await expect(ram.truncate(4096)).rejects.toMatchObject({ code: 'ERR_IN_USE' });
    await expect(ram.truncate(4096)).rejects.toThrow(/SIGBUS/);
    view.unmap();
    await ram.truncate(4096);
    expect(ram.size).toBe(4096);
    expect(ram.stat().size).toBe(4096);
  });

  test('truncating below a view whose buffer is still held (view object dropped) is refused', async () => {
    using ram = Memfd.create('t', { size: 2 * 4096, shrinkable: true });
    const buffer = ram.map().buffer;
    await expect(ram.truncate(4096)).rejects.toMatchObject({ code: 'ERR_IN_USE' });
    expect(buffer.length).toBe(2 * 4096);
  });
});

describe('views', () => {
  test('unmap cuts the view off the file: view.buffer is empty, a Buffer taken earlier reads zeros and writes stay out of the file', () => {
    using ram = Memfd.create('v', { size: 4096 });
    const view = ram.map();
    const buffer = view.buffer;
    buffer[0] = 9;
    view.unmap();
    view.unmap();
    expect(view.mapped).toBe(false);
    expect(view.buffer.length).toBe(0);
    expect(buffer.length).toBe(4096);
    expect(buffer[0]).toBe(0);
    buffer[1] = 1; // lands in anonymous memory, never in the file
    expect(buffer[1]).toBe(1);
    expect(ram.map(0, 4096).buffer.subarray(0, 2)).toEqual(Buffer.from([9, 0]));
    expect(native.mappingCount()).toBeGreaterThan(0);
  });

  test('closing the file cuts off every view, including one whose object was dropped', () => {
    const ram = Memfd.create('v', { size: 8192 });
    const view = ram.map();
    view.buffer.fill(3);
    const orphan = ram.map(4096, 4096).buffer;
    ram.close();
    expect(view.buffer.length).toBe(0);
    expect(orphan.length).toBe(4096);
    expect(orphan.every((b) => b === 0)).toBe(true);
  });

  test('releaseOverlapping cuts off the views over a range, even orphaned buffers, but not pinned ones', async () => {
    const { Kvm } = await import('../lib/index');
    const { noKvm, kvmPath } = await import('./helpers');
    using ram = Memfd.create('v', { size: 4 * 4096 });
    const a = ram.map(0, 4096);
    const b = ram.map(4096, 2 * 4096);
    const whole = ram.map();
    whole.buffer.fill(5);
    whole.unmap();
    const orphan = ram.map(2 * 4096, 4096).buffer;
    const far = ram.map(3 * 4096, 4096);
    let pinned: MemoryView | undefined;
    if (!noKvm) {
      using kvm = Kvm.open(kvmPath);
      using vm = kvm.createVm();
      pinned = ram.map(2 * 4096, 4096);
      vm.addMemorySlot({ guestPhysAddr: 0, size: 4096, userspace: pinned });
      expect(ram.views.releaseOverlapping(4096, 2 * 4096)).toBe(2);
      expect(pinned.buffer.length).toBe(4096);
    } else {
      expect(ram.views.releaseOverlapping(4096, 2 * 4096)).toBe(2);
    }
    expect([a.buffer.length, b.buffer.length, orphan.length, far.buffer.length]).toEqual([4096, 0, 4096, 4096]);
    expect([a.buffer[0], orphan[0], far.buffer[0]]).toEqual([5, 0, 5]);
  });

  test('each view has its own mapping and address', () => {
    using ram = Memfd.create('v', { size: 4096 });
    const a = ram.map();
    const b = ram.map();
    expect(a).toBeInstanceOf(MemoryView);
    expect(a.address).not.toBe(b.address);
    a.buffer[0] = 5;
    expect(b.buffer[0]).toBe(5);
  });

  test('a forgotten view is unmapped when its buffer is collected', async () => {
    // Expose the collector to a fresh context so the test can force a collection.
    (await import('node:v8')).setFlagsFromString('--expose-gc');
    const collect = (await import('node:vm')).runInNewContext('gc') as () => void;
    using ram = Memfd.create('v', { size: 4096 });
    const before = native.mappingCount();
    (() => {
      for (let i = 0; i < 100; i++) ram.map().buffer[0] = 1;
    })();
    expect(native.mappingCount()).toBe(before + 100);
    for (let i = 0; i < 200 && (native.mappingCount() > before || ram.views.size > 0); i++) {
      collect();
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(native.mappingCount()).toBe(before);
    expect(ram.views.size).toBe(0);
  });

  test(`${CYCLES.toLocaleString('en')} create/map/close cycles of memfds leave no fd or mapping behind`, () => {
    const fds = openFds();
    const maps = native.mappingCount();
    for (let i = 0; i < CYCLES; i++) {
      const ram = Memfd.create('cycle', { size: 4096, allowSealing: true });
      ram.map().buffer[0] = 1;
      ram.close();
    }
    expect(openFds()).toBe(fds);
    expect(native.mappingCount()).toBe(maps);
  });
});
