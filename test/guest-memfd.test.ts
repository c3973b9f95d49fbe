// guest_memfd on the real kernel: the rules listed under "This machine's kernel".
import { spawnSync } from 'node:child_process';
import { readSync, writeSync } from 'node:fs';
import { expect } from 'vitest';
import { Cap, GuestMemfd, KvmError, UnsupportedError, type Vm } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';
import { native } from '../lib/native';
import { codeOf, openFds } from './helpers';
import { runs } from './runs';

/** Create/close cycles of the leak tests (fewer inside an emulated kernel). */
const CYCLES = runs(1000);

const MiB = 1 << 20;
const test = kvmTest({ guestMemfd: true });
const mappableTest = kvmTest({ mmap: true, initShared: true });
const mmapTest = kvmTest({ mmap: true });
const mappable = (vm: Vm) => vm.createGuestMemfd({ size: 2 * MiB, mmap: true, initShared: true });


test('creates a guest_memfd with size and flags recorded', ({ vm }) => {
  const g = vm.createGuestMemfd({ size: 2 * MiB });
  expect(g).toBeInstanceOf(GuestMemfd);
  expect(g.size).toBe(2 * MiB);
  expect(g.flags).toBe(0n);
  expect(g.stat().size).toBe(2 * MiB);
});

for (const [what, size, code] of [
  ['zero', 0, 'ERR_OUT_OF_RANGE'],
  ['unaligned', 4097, 'ERR_UNALIGNED'],
  ['negative', -4096, 'ERR_OUT_OF_RANGE'],
  ['NaN', NaN, 'ERR_OUT_OF_RANGE'],
  ['non-integer', 4096.5, 'ERR_OUT_OF_RANGE'],
  ['above 2^64', 1n << 65n, 'ERR_OUT_OF_RANGE'],
  ['a string', '4096', 'ERR_INVALID_ARG_TYPE'],
] as const)
  test(`a ${what} size is refused before any syscall`, ({ vm }) => {
    const before = openFds();
    expect(codeOf(() => vm.createGuestMemfd({ size: size as number }))).toBe(code);
    expect(openFds()).toBe(before);
  });

test('the kernel agrees: size 0 and unaligned sizes fail EINVAL through the raw call', ({ vm }) => {
  for (const size of [0, 4097]) {
    let error: unknown;
    try {
      vm.createGuestMemfdRaw(size, 0);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(KvmError);
    expect((error as KvmError).code).toBe('EINVAL');
    expect((error as KvmError).ioctl).toBe('KVM_CREATE_GUEST_MEMFD');
    expect((error as KvmError).syscall).toBe('ioctl');
  }
});

test('an unknown flag bit is refused by the kernel with EINVAL', ({ vm }) => {
  expect(codeOf(() => vm.createGuestMemfdRaw(4096, 1n << 40n))).toBe('EINVAL');
});

test('named flags the VM does not report are refused, listing the supported ones', ({ vm }) => {
  // The check reads this VM's KVM_CAP_GUEST_MEMFD_FLAGS answer; pretend it said 1.
  (vm as unknown as { cap(c: number): number }).cap = (c: number) => (c === Cap.GuestMemfdFlags ? 1 : 1);
  let error: unknown;
  try {
    vm.createGuestMemfd({ size: 4096, mmap: true, initShared: true });
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(UnsupportedError);
  expect((error as UnsupportedError).capability).toBe('KVM_CAP_GUEST_MEMFD_FLAGS');
  expect((error as Error).message).toMatch(/supported: mmap$/);
});

test('the fd is close-on-exec although the kernel creates it without', ({ vm }) => {
  const g = vm.createGuestMemfd({ size: 4096 });
  expect(native.isCloexec(g.fd)).toBe(true);
});

test('a spawned child does not inherit the guest_memfd fd', ({ vm }) => {
  const g = vm.createGuestMemfd({ size: 4096 });
  const child = spawnSync('sh', ['-c', `if [ -e /proc/self/fd/${g.fd} ]; then readlink /proc/self/fd/${g.fd}; else echo closed; fi`], {
    encoding: 'utf8',
  });
  expect(child.stdout.trim()).toBe('closed');
  // Sanity: in this process the same number is the guest_memfd.
  expect(spawnSync('readlink', [`/proc/${process.pid}/fd/${g.fd}`], { encoding: 'utf8' }).stdout).toMatch(/kvm-gmem/);
});

test('read and write on a guest_memfd fail EINVAL', ({ vm }) => {
  const g = vm.createGuestMemfd({ size: 4096 });
  expect(codeOf(() => readSync(g.fd, Buffer.alloc(16), 0, 16, null))).toBe('EINVAL');
  expect(codeOf(() => writeSync(g.fd, Buffer.alloc(16), 0, 16, null))).toBe('EINVAL');
});

test('map() without mmap is refused by the library, and the kernel says ENODEV', ({ vm }) => {
  const g = vm.createGuestMemfd({ size: 4096 });
  expect(codeOf(() => g.map())).toBe('ERR_NOT_MAPPABLE');
  expect(() => g.map()).toThrow(/created without mmap: true.*ENODEV/);
  expect(codeOf(() => native.mapFile(g.fd, 0, 4096, true))).toBe('ENODEV');
});

mmapTest('map() without initShared is refused: private pages would SIGBUS', ({ vm }) => {
  const g = vm.createGuestMemfd({ size: 4096, mmap: true });
  expect(codeOf(() => g.map())).toBe('ERR_NOT_MAPPABLE');
  expect(() => g.map()).toThrow(/SIGBUS/);
});

mappableTest('a mapped guest_memfd reads back what was written', ({ vm }) => {
  const g = mappable(vm);
  const view = g.map();
  view.buffer.write('guest memory', 4096);
  const again = g.map(4096, 4096);
  expect(again.buffer.toString('utf8', 0, 12)).toBe('guest memory');
  expect(again.address).not.toBe(view.address);
});

mappableTest('punchHole zeroes exactly the punched page', async ({ vm }) => {
  const g = mappable(vm);
  const view = g.map();
  view.buffer.fill(0xaa, 0, 3 * 4096);
  await g.punchHole(4096, 4096);
  expect(view.buffer[4095]).toBe(0xaa);
  expect(view.buffer.subarray(4096, 8192).every((b) => b === 0)).toBe(true);
  expect(view.buffer[8192]).toBe(0xaa);
});

mappableTest('punchHoles punches a batch in one call and validates every range first', async ({ vm }) => {
  const g = mappable(vm);
  const view = g.map();
  view.buffer.fill(9, 0, 4 * 4096);
  await expect(g.punchHoles([[0, 4096], [1, 4096]])).rejects.toThrow(/punchHoles\[1\]: offset 0x1 is not aligned/);
  expect(view.buffer[0]).toBe(9); // nothing was punched
  const events: number[] = [];
  g.notifier.register({ invalidateStart: (e) => void events.push(e.offset) });
  await g.punchHoles([[0, 4096], [2 * 4096, 4096]]);
  expect([view.buffer[0], view.buffer[4096], view.buffer[2 * 4096], view.buffer[3 * 4096]]).toEqual([0, 9, 0, 9]);
  expect(events).toEqual([0, 2 * 4096]);
  await expect(g.punchHoles('x' as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
});

mappableTest('allocate keeps the size and leaves the contents zero', ({ vm }) => {
  const g = mappable(vm);
  g.allocate(0, 64 * 1024);
  expect(g.stat().size).toBe(2 * MiB);
  expect(g.map(0, 64 * 1024).buffer.every((b) => b === 0)).toBe(true);
});

mappableTest('allocate past the end is refused by the library; the kernel says EINVAL', ({ vm }) => {
  const g = mappable(vm);
  expect(codeOf(() => g.allocate(2 * MiB, 4096))).toBe('ERR_OUT_OF_RANGE');
  expect(() => g.allocate(2 * MiB - 4096, 8192)).toThrow(/ends past the end of guest_memfd/);
  expect(codeOf(() => native.fallocate(g.fd, 1, 2 * MiB, 4096))).toBe('EINVAL');
});

mappableTest('fallocate alignment: unaligned offset or length refused; the kernel says EINVAL', async ({ vm }) => {
  const g = mappable(vm);
  expect(codeOf(() => g.allocate(1, 4096))).toBe('ERR_UNALIGNED');
  expect(codeOf(() => g.allocate(0, 100))).toBe('ERR_UNALIGNED');
  await expect(g.punchHole(0, 100)).rejects.toMatchObject({ code: 'ERR_UNALIGNED' });
  expect(codeOf(() => native.fallocate(g.fd, 1, 1, 4096))).toBe('EINVAL');
  expect(codeOf(() => native.fallocate(g.fd, 3, 0, 100))).toBe('EINVAL');
});

mappableTest('fallocate without KEEP_SIZE is EOPNOTSUPP (allocate always keeps the size)', ({ vm }) => {
  const g = mappable(vm);
  expect(codeOf(() => native.fallocate(g.fd, 0, 0, 4096))).toBe('EOPNOTSUPP');
  expect(() => g.allocate(0, 4096)).not.toThrow();
});

mappableTest('bad offsets and lengths are typed errors', async ({ vm }) => {
  const g = mappable(vm);
  expect(codeOf(() => g.allocate(-4096, 4096))).toBe('ERR_OUT_OF_RANGE');
  expect(codeOf(() => g.allocate(0, 0))).toBe('ERR_OUT_OF_RANGE');
  expect(codeOf(() => g.allocate('0' as unknown as number, 4096))).toBe('ERR_INVALID_ARG_TYPE');
  expect(codeOf(() => g.map(0, 1n << 70n))).toBe('ERR_OUT_OF_RANGE');
  await expect(g.punchHole(NaN, 4096)).rejects.toBeInstanceOf(RangeError);
});

mappableTest('windowed maps reach far into a file larger than a Buffer', ({ vm }) => {
  const size = 16 * 1024 * MiB;
  const g = vm.createGuestMemfd({ size, mmap: true, initShared: true });
  const window = g.map(12 * 1024 * MiB, 4096);
  window.buffer[0] = 7;
  expect(g.map(12 * 1024 * MiB, 4096).buffer[0]).toBe(7);
  expect(codeOf(() => g.map())).toBe('ERR_OUT_OF_RANGE');
});

mappableTest('use after close throws ERR_CLOSED; close is idempotent', async ({ vm }) => {
  const g = mappable(vm);
  g.close();
  g.close();
  expect(g.closed).toBe(true);
  expect(codeOf(() => g.fd)).toBe('ERR_CLOSED');
  expect(codeOf(() => g.map())).toBe('ERR_CLOSED');
  expect(codeOf(() => g.allocate(0, 4096))).toBe('ERR_CLOSED');
  expect(codeOf(() => g.stat())).toBe('ERR_CLOSED');
  await expect(g.punchHole(0, 4096)).rejects.toMatchObject({ code: 'ERR_CLOSED' });
});

mappableTest('closing the VM closes its guest_memfds and detaches their views', ({ vm }) => {
  const g = mappable(vm);
  const view = g.map();
  view.buffer[0] = 1;
  vm.close();
  expect(g.closed).toBe(true);
  expect(view.mapped).toBe(false);
  expect(view.buffer.length).toBe(0);
  expect(view.buffer[0]).toBeUndefined();
});

mappableTest('Symbol.dispose closes the file', ({ vm }) => {
  let g: GuestMemfd;
  {
    using file = mappable(vm);
    g = file;
  }
  expect(g.closed).toBe(true);
});

mappableTest(`${CYCLES.toLocaleString('en')} create/map/close cycles leave no fd or mapping behind`, ({ vm }) => {
  const fds = openFds();
  const maps = native.mappingCount();
  for (let i = 0; i < CYCLES; i++) {
    const g = vm.createGuestMemfd({ size: 64 * 1024, mmap: true, initShared: true });
    g.map().buffer[0] = 1;
    g.close();
  }
  expect(openFds()).toBe(fds);
  expect(native.mappingCount()).toBe(maps);
});
