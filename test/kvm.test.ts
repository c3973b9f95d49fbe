// The KVM system fd and VM objects on the real /dev/kvm.
import { describe, expect, test } from 'vitest';
import { Cap, capName, Kvm, KvmError, UnsupportedError, StateError, VmType, type VmTypeName } from '../lib/index';
import { findVmType, titleWithReason } from '../lib/testing/index';
import { codeOf, kvmPath, needsKvm, noKvm, openFds, runNode } from './helpers';
import { runs } from './runs';

/** Create/close cycles of the leak tests (fewer inside an emulated kernel). */
const CYCLES = runs(1000);

const { type: gmemType, reason: gmemReason } = findVmType({ guestMemfd: true });

test('capName names capabilities and refuses what is no capability number', () => {
  expect(capName(Cap.GuestMemfd)).toBe('KVM_CAP_GUEST_MEMFD');
  expect(capName(BigInt(Cap.GuestMemfd) as unknown as number)).toBe('KVM_CAP_GUEST_MEMFD');
  expect(capName(9999)).toBe('KVM_CAP_9999');
  for (const bad of ['toString', '__proto__', null, undefined, {}, [], true])
    expect(codeOf(() => capName(bad as unknown as number)), String(bad)).toBe('ERR_INVALID_ARG_TYPE');
  for (const bad of [-1, 1.5, NaN, Infinity, 2 ** 32, -1n])
    expect(codeOf(() => capName(bad as unknown as number)), String(bad)).toBe('ERR_OUT_OF_RANGE');
});

describe('Kvm.open failures (no KVM needed)', () => {
  test('a missing device is a KvmError ENOENT with advice', () => {
    let error: unknown;
    try {
      Kvm.open('/nonexistent/kvm');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(KvmError);
    const k = error as KvmError;
    expect(k.code).toBe('ENOENT');
    expect(k.errno).toBe(2);
    expect(k.syscall).toBe('open');
    expect(k.message).toMatch(/Kvm\.open\('\/nonexistent\/kvm'\).*no such file \(the KVM device is usually \/dev\/kvm\)/);
  });
  test('a path that is not a KVM device is refused and its fd closed', () => {
    const before = openFds();
    let error: unknown;
    try {
      Kvm.open('/dev/null');
    } catch (e) {
      error = e;
    }
    expect((error as KvmError).code).toBe('ENOTTY');
    expect((error as KvmError).message).toMatch(/not a KVM device/);
    expect(openFds()).toBe(before);
  });
  test('a non-string path is a TypeError', () => {
    expect(() => Kvm.open(42 as unknown as string)).toThrow(TypeError);
  });
});

describe.skipIf(noKvm)(needsKvm('Kvm and Vm on the real kernel'), () => {
  test('apiVersion is 12', () => {
    using kvm = Kvm.open(kvmPath);
    expect(kvm.apiVersion).toBe(12);
  });

  test('checkExtension answers on the system fd and on the VM fd', () => {
    using kvm = Kvm.open(kvmPath);
    using vm = kvm.createVm();
    expect(kvm.checkExtension(Cap.UserMemory)).toBeGreaterThan(0);
    expect(vm.checkExtension(Cap.NrMemslots)).toBeGreaterThan(0);
    expect(() => vm.checkExtension(-1)).toThrow(RangeError);
  });

  test('capabilities() decodes guest-memory capabilities into names', () => {
    using kvm = Kvm.open(kvmPath);
    using vm = kvm.createVm();
    const caps = vm.capabilities();
    expect(caps.raw['KVM_CAP_GUEST_MEMFD']).toBe(vm.checkExtension(Cap.GuestMemfd));
    expect(caps.guestMemfd).toBe(vm.checkExtension(Cap.GuestMemfd) > 0);
    expect(caps.guestMemfdFlags.raw).toBe(BigInt(vm.checkExtension(Cap.GuestMemfdFlags)));
    if (caps.guestMemfdFlags.raw & 1n) expect(caps.guestMemfdFlags.names).toContain('mmap');
    if (caps.guestMemfdFlags.raw & 2n) expect(caps.guestMemfdFlags.names).toContain('init-shared');
    expect(caps.vmTypes).toContain('default');
    expect(caps.nrMemslots).toBe(vm.checkExtension(Cap.NrMemslots));
    expect(caps.memoryAttributes.names.includes('private')).toBe((caps.memoryAttributes.raw & 8n) !== 0n);
  });

  test('createVm refuses an unknown type name before any syscall', () => {
    using kvm = Kvm.open(kvmPath);
    const before = openFds();
    expect(codeOf(() => kvm.createVm({ type: 'nope' as 'default' }))).toBe('ERR_INVALID_ARG_VALUE');
    expect(codeOf(() => kvm.createVm(5 as unknown as object))).toBe('ERR_INVALID_ARG_TYPE');
    expect(openFds()).toBe(before);
  });

  const unoffered = (() => {
    if (noKvm) return undefined;
    using kvm = Kvm.open(kvmPath);
    const types = kvm.checkExtension(Cap.VmTypes);
    return (Object.keys(VmType) as VmTypeName[]).find((t) => ((types >> VmType[t]) & 1) === 0);
  })();
  test.skipIf(!unoffered)(
    `createVm of a type missing from KVM_CAP_VM_TYPES is an UnsupportedError naming it${unoffered ? '' : ' [skipped: this host offers every VM type]'}`,
    () => {
      using kvm = Kvm.open(kvmPath);
      const types = kvm.checkExtension(Cap.VmTypes);
      let error: unknown;
      try {
        kvm.createVm({ type: unoffered! });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(UnsupportedError);
      expect((error as UnsupportedError).capability).toBe('KVM_CAP_VM_TYPES');
      expect((error as UnsupportedError).reported).toBe(types);
      expect((error as Error).message).toMatch(new RegExp(`'${unoffered}' VM.*KVM_CAP_VM_TYPES=.*\\(offered: default`));
    },
  );

  test('VM fds are close-on-exec', async () => {
    const { native } = await import('../lib/native');
    using kvm = Kvm.open(kvmPath);
    using vm = kvm.createVm();
    expect(native.isCloexec(kvm.fd)).toBe(true);
    expect(native.isCloexec(vm.fd)).toBe(true);
  });

  test('use after close throws ERR_CLOSED and close is idempotent', () => {
    const kvm = Kvm.open(kvmPath);
    const vm = kvm.createVm();
    vm.close();
    vm.close();
    expect(vm.closed).toBe(true);
    expect(codeOf(() => vm.fd)).toBe('ERR_CLOSED');
    expect(codeOf(() => vm.checkExtension(Cap.GuestMemfd))).toBe('ERR_CLOSED');
    expect(codeOf(() => vm.createGuestMemfd({ size: 4096 }))).toBe('ERR_CLOSED');
    kvm.close();
    kvm.close();
    expect(codeOf(() => kvm.checkExtension(Cap.GuestMemfd))).toBe('ERR_CLOSED');
    let error: unknown;
    try {
      kvm.createVm();
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(StateError);
  });

  test('closing the KVM device closes its VMs', () => {
    const kvm = Kvm.open(kvmPath);
    const vm = kvm.createVm();
    kvm.close();
    expect(vm.closed).toBe(true);
  });

  test.skipIf(!gmemType)(titleWithReason('a whole setup dropped without close (device, VM, guest_memfds) has its fds closed by the collector', gmemReason), async () => {
    const { native } = await import('../lib/native');
    (await import('node:v8')).setFlagsFromString('--expose-gc');
    const collect = (await import('node:vm')).runInNewContext('gc') as () => void;
    // Checked fd by fd: objects other files dropped may be collected during this
    // loop too, so the addon's total count is no baseline. Nothing opens an fd
    // meanwhile, so a number the addon holds again would be a new adoption.
    const fds = (() => {
      const kvm = Kvm.open(kvmPath);
      const vm = kvm.createVm({ type: gmemType! });
      return [kvm.fd, vm.fd, ...Array.from({ length: 10 }, () => vm.createGuestMemfd({ size: 4096 }).fd)];
    })();
    const held = () => fds.filter((fd) => native.ownsFd(fd));
    expect(held()).toEqual(fds);
    for (let i = 0; i < 200 && held().length > 0; i++) {
      collect();
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(held()).toEqual([]);
  });

  test('signals do not fail calls the kernel gives up on with EINTR (VM creation and allocation under a sampling profiler)', async () => {
    // KVM_CREATE_VM takes every lock of the address space and returns EINTR when a
    // signal is pending; the profiler's SIGPROF every 20 µs lands during many of them.
    const r = await runNode(
      [
        '-e',
        `
        const { Session } = require('node:inspector/promises');
        const gm = require(process.cwd());
        (async () => {
          const s = new Session();
          s.connect();
          await s.post('Profiler.enable');
          await s.post('Profiler.setSamplingInterval', { interval: 20 });
          await s.post('Profiler.start');
          const failures = {};
          const note = (e) => (failures[e.code ?? e.message] = (failures[e.code ?? e.message] ?? 0) + 1);
          const kvm = gm.Kvm.open();
          for (let i = 0; i < ${runs(200)}; i++) try { kvm.createVm().close(); } catch (e) { note(e); }
          const ram = gm.Memfd.create('ram', { size: 32 << 20 });
          for (let i = 0; i < ${runs(20)}; i++) try { await ram.allocate(0, 32 << 20); await ram.punchHole(0, 32 << 20); } catch (e) { note(e); }
          await s.post('Profiler.stop');
          console.log(JSON.stringify({ failures }));
        })();
        `,
      ],
      60_000,
    );
    expect(r.signal).toBeNull();
    expect(r.out).toContain('{"failures":');
    expect(JSON.parse(r.out.trim().split('\n').pop()!)).toEqual({ failures: {} });
    expect(r.code).toBe(0);
  });

  test(`${CYCLES.toLocaleString('en')} open/close cycles of Kvm and Vm leave no fd behind`, () => {
    const before = openFds();
    for (let i = 0; i < CYCLES; i++) {
      const kvm = Kvm.open(kvmPath);
      kvm.createVm().close();
      kvm.close();
    }
    expect(openFds()).toBe(before);
  });
});
