// VMM basics beyond memory: the in-kernel irqchip and PIT, interrupt lines and
// irqfds, ioeventfds, guest debugging, CPUID and MSRs, the local APIC and MP state,
// each shown by a real guest where a guest can show it.
import { readFileSync } from 'node:fs';
import { expect, test as plain } from 'vitest';
import {
  EventFd,
  LapicRegister,
  LapicState,
  loadLongMode,
  Msr,
  MsrError,
  withCpuidLeaf,
  type GuestProgram,
  type IoExit,
  type Vcpu,
  type VcpuExit,
  type Vm,
} from '../lib/index';
import { encodeGuestDebug } from '../lib/kvm/guest-debug';
import { findVmType, kvmTest } from '../lib/testing/vitest.mjs';
import { breakpointGuest, cpuidMsrGuest, interruptGuest, PORT, READY, stepGuest, writesGuest } from './vmm-guests';
import { openFds } from './helpers';

/** Generous: inside the test kernels the guests run under TCG. */
const RUN = { timeoutMs: 30_000 };
const SLOW = 180_000;

const test = kvmTest();
const irqTest = kvmTest({ irqchip: true, irqfd: true });
const ioeventfdTest = kvmTest({ ioeventfd: true });
const debugTest = kvmTest({ guestDebug: true });

/** 2 MiB of anonymous memory at GPA 0, vCPU 0 in long mode at the program. */
function boot(vm: Vm, program: GuestProgram, vcpu: Vcpu = vm.createVcpu(0)): Vcpu {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 << 20, userspace: 'anonymous' });
  loadLongMode(vcpu, program);
  return vcpu;
}

function expectByte(exit: VcpuExit, value: number): void {
  expect(exit).toMatchObject({ reason: 'io', port: PORT, direction: 'out' });
  expect((exit as IoExit).data[0]).toBe(value);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

plain('the testing requirements for VMM features are booleans, answered by the kernel', () => {
  for (const key of ['irqchip', 'irqfd', 'ioeventfd', 'guestDebug', 'hardwareBreakpoints', 'softwareBreakpoints'])
    expect(() => findVmType({ [key]: 'yes' } as never)).toThrow(new RegExp(`needs\\.${key} must be a boolean`));
  const m = findVmType({ irqchip: true, ioeventfd: true });
  expect(m.type !== undefined || /KVM_CAP_IRQCHIP=0|KVM_CAP_IOEVENTFD=0|no usable KVM/.test(m.reason!)).toBe(true);
});

// --- interrupts ------------------------------------------------------------------------------------

irqTest('a guest takes IRQ 5 through the PIC, raised by irqLine and then by an irqfd, acknowledging each with an EOI', async ({ vm }) => {
  vm.createIrqchip();
  const vcpu = boot(vm, interruptGuest('pic', 5));
  expectByte(await vcpu.run(RUN), READY);
  const first = vcpu.run(RUN);
  await sleep(100);
  // With the in-kernel irqchip the guest's hlt waits in the kernel: no exit.
  expect(vcpu.running).toBe(true);
  vm.irqLine(5, true);
  vm.irqLine(5, false);
  expectByte(await first, 1);
  using irq = EventFd.create();
  vm.irqfd(irq, 5);
  expect(vm.irqfds).toEqual([{ eventfd: irq, gsi: 5, resample: undefined }]);
  const second = vcpu.run(RUN);
  irq.write();
  // Delivered: the PIC took the guest's EOI of the first (an IRQ 5 still in service would hold it back).
  expectByte(await second, 2);
}, SLOW);

irqTest('without the guest\'s EOI, the PIC holds the next IRQ 5 back', async ({ vm }) => {
  vm.createIrqchip();
  const vcpu = boot(vm, interruptGuest('pic', 5, { eoi: false }));
  expectByte(await vcpu.run(RUN), READY);
  const first = vcpu.run(RUN);
  vm.irqLine(5, true);
  vm.irqLine(5, false);
  expectByte(await first, 1);
  const second = vcpu.run({ timeoutMs: 3000 });
  vm.irqLine(5, true);
  vm.irqLine(5, false);
  await expect(second).rejects.toMatchObject({ code: 'ERR_TIMEOUT' }); // IRQ 5 is still in service
}, SLOW);

irqTest('a guest takes IOAPIC pin 10 on its vector through its local APIC, again after each EOI to the local APIC', async ({ vm }) => {
  vm.createIrqchip();
  const vcpu = boot(vm, interruptGuest('ioapic', 10));
  expectByte(await vcpu.run(RUN), READY);
  const lapic = vcpu.getLapic();
  expect(lapic.enabled).toBe(true); // the guest's SVR write reached the in-kernel local APIC
  expect(lapic.spuriousVector).toBe(0xff);
  for (const count of [1, 2, 3]) {
    const run = vcpu.run(RUN);
    vm.irqLine(10, true);
    vm.irqLine(10, false);
    expectByte(await run, count);
  }
}, SLOW);

test('createIrqchip comes before the first vCPU (even a closed one) and only once', ({ vm, kvm }) => {
  vm.createVcpu(0).close();
  expect(() => vm.createIrqchip()).toThrow(expect.objectContaining({ code: 'ERR_VCPUS_EXIST', message: expect.stringMatching(/vm\.createIrqchip: 1 vCPU\(s\) were already created/) }));
  expect(vm.hasIrqchip).toBe(false);
  using other = kvm.createVm();
  other.createIrqchip();
  expect(other.hasIrqchip).toBe(true);
  expect(() => other.createIrqchip()).toThrow(expect.objectContaining({ code: 'ERR_EXISTS' }));
  expect(other.createVcpu(0).getMpState()).toBe('runnable');
});

test('createPit needs the irqchip first, is made once, and checks its options', ({ vm }) => {
  expect(() => vm.createPit()).toThrow(expect.objectContaining({ code: 'ERR_NO_IRQCHIP', message: expect.stringMatching(/vm\.createPit: .*vm\.createIrqchip\(\) first/) }));
  vm.createIrqchip();
  expect(() => vm.createPit({ speakerDummy: 1 as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/options\.speakerDummy/) }));
  expect(() => vm.createPit(null as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  expect(vm.hasPit).toBe(false);
  vm.createPit({ speakerDummy: true });
  expect(vm.hasPit).toBe(true);
  expect(() => vm.createPit()).toThrow(expect.objectContaining({ code: 'ERR_EXISTS' }));
});

test('irqLine needs the irqchip, a routed GSI and a level', ({ vm }) => {
  expect(() => vm.irqLine(5, true)).toThrow(expect.objectContaining({ code: 'ERR_NO_IRQCHIP' }));
  vm.createIrqchip();
  expect(() => vm.irqLine(24, true)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', message: expect.stringMatching(/irq 24 has no route: .*GSIs 0\.\.23/) }));
  expect(() => vm.irqLine(-1, true)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  expect(() => vm.irqLine('5' as never, true)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  expect(() => vm.irqLine(5, 2 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/level must be a boolean/) }));
  expect(() => vm.irqLine(5, 'high' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  const status = vm.irqLine(5, 1);
  expect(status === undefined || Number.isInteger(status)).toBe(true);
  vm.irqLine(5, 0);
});

test('setTssAddr takes three page-aligned pages below 4 GiB, outside every slot, once; slots then keep clear of it', async ({ vm }) => {
  expect(() => vm.setTssAddr(0xfffbd001)).toThrow(expect.objectContaining({ code: 'ERR_UNALIGNED' }));
  expect(() => vm.setTssAddr(0xfffff000)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', message: expect.stringMatching(/end within the first 4 GiB \(addr at most 0xffffd000\)/) }));
  expect(() => vm.setTssAddr(-4096)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  expect(() => vm.setTssAddr('0x1000' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
  expect(() => vm.setTssAddr(0xfe000)).toThrow(expect.objectContaining({ code: 'ERR_SLOT_OVERLAP', message: expect.stringMatching(/TSS range 0xfe000\.\.0x101000 overlaps slot 0/) }));
  vm.setTssAddr(0xffffd000);
  expect(vm.tssAddr).toBe(0xffffd000n);
  expect(() => vm.setTssAddr(0xfffbd000)).toThrow(expect.objectContaining({ code: 'ERR_EXISTS' }));
  expect(() => vm.addMemorySlot({ guestPhysAddr: 0xfff00000, size: 1 << 20, userspace: 'anonymous' })).toThrow(
    expect.objectContaining({ code: 'ERR_SLOT_OVERLAP', message: expect.stringMatching(/overlaps the TSS range 0xffffd000\.\.0x100000000 \(vm\.setTssAddr\)/) }),
  );
  await expect(vm.moveMemorySlot(slot, 0xfff00000)).rejects.toMatchObject({ code: 'ERR_SLOT_OVERLAP' });
  vm.addMemorySlot({ guestPhysAddr: 0xffe00000, size: 1 << 20, userspace: 'anonymous' }); // right below it
});

test('setIdentityMapAddr takes a page below 4 GiB outside slots and the TSS, before the first vCPU', ({ vm, kvm }) => {
  expect(() => vm.setIdentityMapAddr(0xfffbc800)).toThrow(expect.objectContaining({ code: 'ERR_UNALIGNED' }));
  expect(() => vm.setIdentityMapAddr(0x100000000)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  vm.setTssAddr(0xfffbd000);
  expect(() => vm.setIdentityMapAddr(0xfffbe000)).toThrow(expect.objectContaining({ code: 'ERR_SLOT_OVERLAP', message: expect.stringMatching(/overlaps the TSS range/) }));
  vm.setIdentityMapAddr(0xfffbc000);
  vm.setIdentityMapAddr(0xfffbb000); // KVM takes it again until a vCPU exists
  expect(vm.identityMapAddr).toBe(0xfffbb000n);
  vm.createVcpu(0);
  expect(() => vm.setIdentityMapAddr(0xfffbc000)).toThrow(expect.objectContaining({ code: 'ERR_VCPUS_EXIST' }));
  using other = kvm.createVm();
  other.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
  expect(() => other.setIdentityMapAddr(0x1000)).toThrow(expect.objectContaining({ code: 'ERR_SLOT_OVERLAP' }));
});

test('no fd leaks over 1,000 VMs with an irqchip and a PIT', ({ kvm }) => {
  const before = openFds();
  for (let i = 0; i < 1000; i++) {
    const vm = kvm.createVm();
    vm.createIrqchip();
    vm.createPit();
    vm.close();
  }
  expect(openFds()).toBe(before);
}, SLOW);

// --- eventfds in guests ------------------------------------------------------------------------

ioeventfdTest('a guest write to an ioeventfd port signals the eventfd without an exit: the next exit is the guest\'s own report', async ({ vm }) => {
  using doorbell = EventFd.create();
  vm.ioeventfd({ addr: 0x50, len: 1, pio: true, eventfd: doorbell });
  const program = writesGuest([{ kind: 'pio', address: 0x50, value: 7, size: 1 }, { kind: 'pio', address: 0x50, value: 8, size: 1 }], { done: 0x99 });
  const vcpu = boot(vm, program);
  expectByte(await vcpu.run(RUN), 0x99);
  expect(doorbell.read()).toBe(2n);
  vm.ioeventfd({ addr: 0x50, len: 1, pio: true, eventfd: doorbell, deassign: true });
  expect(vm.ioeventfds).toEqual([]);
  // Deassigned: the same write exits again.
  loadLongMode(vcpu, program);
  const exit = await vcpu.run(RUN);
  expect(exit).toMatchObject({ reason: 'io', port: 0x50, size: 1 });
  expect((exit as IoExit).data[0]).toBe(7);
}, SLOW);

ioeventfdTest('the host sees an ioeventfd fire while the vCPU keeps running', async ({ vm }) => {
  using doorbell = EventFd.create();
  vm.ioeventfd({ addr: 0x50, len: 2, pio: true, eventfd: doorbell });
  const vcpu = boot(vm, writesGuest([{ kind: 'pio', address: 0x50, value: 0x1234, size: 2 }], { spin: true }));
  const running = vcpu.run();
  expect(await doorbell.wait({ timeoutMs: 30_000 })).toBe(1n);
  expect(vcpu.running).toBe(true); // the guest spins on: the write did not end KVM_RUN
  vcpu.kick();
  expect((await running).reason).toBe('intr');
}, SLOW);

ioeventfdTest('an MMIO ioeventfd with datamatch fires for its value only; other values exit as MMIO', async ({ vm }) => {
  const addr = 0xd0000000; // in the guest's identity map, outside every slot
  using doorbell = EventFd.create();
  vm.ioeventfd({ addr, len: 4, datamatch: 2, eventfd: doorbell });
  const vcpu = boot(vm, writesGuest([{ kind: 'mmio', address: addr, value: 1, size: 4 }, { kind: 'mmio', address: addr, value: 2, size: 4 }], { done: 0x77 }));
  const mmio = await vcpu.run(RUN);
  expect(mmio).toMatchObject({ reason: 'mmio', address: BigInt(addr), length: 4, isWrite: true });
  expect([...(mmio as { data: Buffer }).data]).toEqual([1, 0, 0, 0]);
  expect(doorbell.read()).toBe(0n);
  expectByte(await vcpu.run(RUN), 0x77);
  expect(doorbell.read()).toBe(1n);
}, SLOW);

// --- guest debugging -----------------------------------------------------------------------------

debugTest('single-stepping: each instruction is a debug exit (#DB, DR6.BS) at the next instruction\'s address', async ({ vm }) => {
  const { program, starts, result } = stepGuest();
  const vcpu = boot(vm, program);
  vcpu.setGuestDebug({ singleStep: true });
  const pcs: bigint[] = [];
  for (let i = 0; i < 6; i++) {
    const exit = await vcpu.run(RUN);
    expect(exit).toMatchObject({ reason: 'debug', exception: 1 });
    if (exit.reason !== 'debug') return;
    expect(exit.dr6 & 0x4000n).toBe(0x4000n);
    expect(vcpu.getRegs().rip).toBe(exit.pc);
    pcs.push(exit.pc);
  }
  expect(pcs).toEqual(starts.slice(1, 7));
  // The out exits for its I/O before its step completes.
  expectByte(await vcpu.run(RUN), result);
  vcpu.setGuestDebug({});
  expect((await vcpu.run(RUN)).reason).toBe('hlt');
}, SLOW);

kvmTest({ hardwareBreakpoints: true })('a hardware execution breakpoint stops the guest at its address (#DB, DR6.B0) before the instruction runs', async ({ vm }) => {
  const { program, starts, result } = stepGuest();
  const vcpu = boot(vm, program);
  vcpu.setGuestDebug({ hardwareBreakpoints: [{ address: starts[3]!, type: 'exec' }] });
  const exit = await vcpu.run(RUN);
  expect(exit).toMatchObject({ reason: 'debug', exception: 1, pc: starts[3] });
  if (exit.reason === 'debug') expect(exit.dr6 & 1n).toBe(1n);
  expect(vcpu.getRegs().rax & 0xffffffffn).toBe(0x12n); // mov and inc ran, lea not yet
  vcpu.setGuestDebug({});
  expectByte(await vcpu.run(RUN), result);
}, SLOW);

kvmTest({ softwareBreakpoints: true })('a software breakpoint: the guest\'s int3 is a debug exit (#BP) at its address, and the guest goes on past it', async ({ vm }) => {
  const { program, breakpoint, after } = breakpointGuest();
  const vcpu = boot(vm, program);
  vcpu.setGuestDebug({ softwareBreakpoints: true });
  expect(await vcpu.run(RUN)).toMatchObject({ reason: 'debug', exception: 3, pc: breakpoint });
  vcpu.setGuestDebug({});
  vcpu.setRegs({ rip: after });
  expectByte(await vcpu.run(RUN), 0x33);
}, SLOW);

debugTest('setGuestDebug checks its options before the ioctl', ({ vm }) => {
  const vcpu = vm.createVcpu(0);
  const bad: Array<[unknown, RegExp]> = [
    [undefined, /options must be an object/],
    [null, /options must be an object/],
    [[], /options must be an object/],
    [{ singleStep: 1 }, /options\.singleStep must be a boolean/],
    [{ softwareBreakpoints: 'yes' }, /options\.softwareBreakpoints must be a boolean/],
    [{ step: true }, /unknown option 'step'/],
    [{ hardwareBreakpoints: {} }, /hardwareBreakpoints must be an array/],
    [{ hardwareBreakpoints: Array(5).fill({ address: 0 }) }, /has 5 entries; x86 has 4/],
    [{ hardwareBreakpoints: [null] }, /hardwareBreakpoints\[0\] must be an object/],
    [{ hardwareBreakpoints: [{ address: -1 }] }, /hardwareBreakpoints\[0\]\.address -1 is negative/],
    [{ hardwareBreakpoints: [{ address: 0x1000, type: 'read' }] }, /\.type must be 'exec', 'write' or 'rw'/],
    [{ hardwareBreakpoints: [{ address: 0x1000, type: 'write', length: 3 }] }, /\.length must be 1, 2, 4 or 8/],
    [{ hardwareBreakpoints: [{ address: 0x1000, length: 4 }] }, /an 'exec' breakpoint watches one instruction/],
    [{ hardwareBreakpoints: [{ address: 0x1002, type: 'rw', length: 4 }] }, /address 0x1002 is not aligned to its length 4/],
  ];
  for (const [options, message] of bad) expect(() => vcpu.setGuestDebug(options as never), String(message)).toThrow(message);
  vcpu.setGuestDebug({ singleStep: false });
});

plain('guest debug options encode the KVM_GUESTDBG_* bits and DR7 as the SDM lays them out', () => {
  expect(encodeGuestDebug('t', {}).control).toBe(0);
  expect(encodeGuestDebug('t', { singleStep: true }).control).toBe(0x3);
  expect(encodeGuestDebug('t', { softwareBreakpoints: true }).control).toBe(0x10001);
  const { control, debugreg } = encodeGuestDebug('t', {
    hardwareBreakpoints: [{ address: 0x1000n }, { address: 0x2000, type: 'write', length: 4 }, { address: 0x3000, type: 'rw', length: 8 }],
  });
  expect(control).toBe(0x20001);
  expect([...debugreg.subarray(0, 4)]).toEqual([0x1000n, 0x2000n, 0x3000n, 0n]);
  // G0, G1, G2; R/W1 = 01 LEN1 = 11 (bits 20..23); R/W2 = 11 LEN2 = 10 (bits 24..27).
  expect(debugreg[7]).toBe((2n | 8n | 32n) | (0b1101n << 20n) | (0b1011n << 24n));
});

// --- CPUID and MSRs --------------------------------------------------------------------------------

test('a guest reads the CPUID leaf 0x40000000 the host set and the MSRs the host wrote', async ({ kvm, vm }) => {
  const signature = Buffer.from('gmemVMMtest!', 'latin1');
  const [ebx, ecx, edx] = [0, 4, 8].map((o) => signature.readUInt32LE(o)) as [number, number, number];
  const vcpu = vm.createVcpu(0, { cpuid: withCpuidLeaf(kvm.getSupportedCpuid(), 0x40000000, 0, { eax: 0x40000000, ebx, ecx, edx }) });
  expect(kvm.msrIndexList()).toEqual(expect.arrayContaining([Msr.SysenterCs, Msr.KernelGsBase]));
  const gsBase = 0xffff8000deadb000n;
  expect(vcpu.setMsrs([{ index: Msr.SysenterCs, data: 0x1234 }, { index: Msr.KernelGsBase, data: gsBase }])).toBe(2);
  boot(vm, cpuidMsrGuest(0x40000000, [Msr.SysenterCs, Msr.KernelGsBase]), vcpu);
  const values: number[] = [];
  const last = await vcpu.runUntil({ ...RUN, io: (e) => void values.push(e.data.readUInt32LE(0)) });
  expect(last.reason).toBe('hlt');
  expect(values).toEqual([0x40000000, ebx, ecx, edx, 0x1234, 0, Number(gsBase & 0xffffffffn), Number(gsBase >> 32n)]);
}, SLOW);

test('getMsrs reads back what setMsrs wrote, in order', ({ vm }) => {
  const vcpu = vm.createVcpu(0);
  expect(vcpu.setMsrs([{ index: Msr.SysenterEip, data: 0x81000000n }, { index: Msr.SysenterCs, data: 0x10 }])).toBe(2);
  expect(vcpu.getMsrs([Msr.SysenterCs, Msr.SysenterEip])).toEqual([
    { index: Msr.SysenterCs, data: 0x10n },
    { index: Msr.SysenterEip, data: 0x81000000n }, // 32 bits: AMD keeps no more for a guest of its own vendor
  ]);
  expect(vcpu.getMsrs([])).toEqual([]);
});

/** kvm.ignore_msrs=Y makes KVM accept unknown MSRs. */
const ignoresMsrs = (() => {
  try {
    return readFileSync('/sys/module/kvm/parameters/ignore_msrs', 'utf8').trim() === 'Y';
  } catch {
    return false;
  }
})();

const strictMsrTest = test.skipIf(ignoresMsrs ? 'kvm.ignore_msrs=Y makes KVM accept unknown MSRs' : undefined);

strictMsrTest('an MSR the kernel does not know stops KVM_GET/SET_MSRS: MsrError names it, with what was done before it', ({ vm }) => {
  const vcpu = vm.createVcpu(0);
  const unknown = 0x4b564dff + 0x100; // in KVM's paravirtual range, but not an MSR it has
  vcpu.setMsrs([{ index: Msr.SysenterCs, data: 0x18 }]);
  let error: unknown;
  try {
    vcpu.getMsrs([Msr.SysenterCs, unknown, Msr.SysenterEsp]);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(MsrError);
  expect(error).toMatchObject({ code: 'ERR_MSR_PARTIAL', applied: 1, index: unknown, position: 1, entries: [{ index: Msr.SysenterCs, data: 0x18n }] });
  expect((error as Error).message).toMatch(/vcpu\.getMsrs: the kernel read 1 of 3 MSRs and stopped at MSR 0x4b564eff/);
  expect(() => vcpu.setMsrs([{ index: Msr.SysenterCs, data: 0x20 }, { index: unknown, data: 1 }])).toThrow(
    expect.objectContaining({ code: 'ERR_MSR_PARTIAL', applied: 1, index: unknown, message: expect.stringMatching(/wrote 1 of 2 MSRs/) }),
  );
  expect(vcpu.getMsrs([Msr.SysenterCs])[0]!.data).toBe(0x20n); // the first one was written
});

test('MSR calls check their arguments before the ioctl', ({ kvm, vm }) => {
  const vcpu = vm.createVcpu(0);
  expect(() => vcpu.getMsrs(0x174 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/indices must be an array/) }));
  expect(() => vcpu.getMsrs([-1])).toThrow(/indices\[0\] -1 is outside 0\.\.4294967295/);
  expect(() => vcpu.getMsrs([2 ** 32])).toThrow(/indices\[0\]/);
  expect(() => vcpu.getMsrs(['0x174' as never])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  expect(() => vcpu.getMsrs(Array(256).fill(0x174))).toThrow(/256 MSRs exceed the 255/);
  expect(() => vcpu.setMsrs({} as never)).toThrow(/entries must be an array/);
  expect(() => vcpu.setMsrs([null as never])).toThrow(/entries\[0\] must be an object/);
  expect(() => vcpu.setMsrs([{ index: 0x174 } as never])).toThrow(/entries\[0\]\.data must be a number or bigint/);
  expect(() => vcpu.setMsrs([{ index: 0x174, data: -1 }])).toThrow(/entries\[0\]\.data -1 is negative/);
  expect(() => vcpu.setMsrs([{ index: 0x174, data: 1n << 64n }])).toThrow(/entries\[0\]\.data .* is outside 0\.\.2\^64-1/);
  expect(() => vcpu.setMsrs([{ index: 1.5, data: 0 }])).toThrow(/entries\[0\]\.index 1\.5/);
  expect(() => kvm.getMsrFeatures([-2])).toThrow(/kvm\.getMsrFeatures: indices\[0\]/);
  vcpu.close();
  expect(() => vcpu.getMsrs([0x174])).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
});

kvmTest({ capabilities: { 153: 1 } })('KVM_GET_MSR_FEATURE_INDEX_LIST names the feature MSRs, and the system fd reads them all', ({ kvm }) => {
  const list = kvm.msrFeatureIndexList();
  expect(list.length).toBeGreaterThan(0);
  const values = kvm.getMsrFeatures(list);
  expect(values.map((v) => v.index)).toEqual(list);
  expect(values.every((v) => typeof v.data === 'bigint')).toBe(true);
});

// --- local APIC and MP state -----------------------------------------------------------------------

irqTest('KVM_GET_LAPIC gives each vCPU its APIC id; changes to TPR, SVR and the LVT go through KVM_SET_LAPIC and back', ({ vm }) => {
  vm.createIrqchip();
  const vcpu0 = vm.createVcpu(0);
  const vcpu3 = vm.createVcpu(3);
  expect(vcpu0.getLapic().id).toBe(0);
  const lapic = vcpu3.getLapic();
  expect(lapic.id).toBe(3);
  expect(lapic.bytes.length).toBe(1024);
  expect(lapic.version).toBeGreaterThanOrEqual(0x10); // an integrated APIC
  lapic.tpr = 0x20;
  lapic.enabled = true;
  lapic.spuriousVector = 0xef;
  lapic.setLvt('lint0', { deliveryMode: 'extint', masked: false });
  lapic.setLvt('timer', { vector: 0xec, timerMode: 'periodic', masked: true });
  vcpu3.setLapic(lapic);
  const back = vcpu3.getLapic();
  expect(back.tpr).toBe(0x20);
  expect(back.enabled).toBe(true);
  expect(back.spuriousVector).toBe(0xef);
  expect(back.lvt('lint0')).toMatchObject({ deliveryMode: 'extint', masked: false });
  expect(back.lvt('timer')).toMatchObject({ vector: 0xec, timerMode: 'periodic', masked: true });
  expect(back.register(LapicRegister.Svr) & 0x1ff).toBe(0x1ef);
  // Raw bytes round-trip too.
  const raw = Buffer.from(back.bytes);
  raw.writeUInt32LE(0x30, LapicRegister.Tpr);
  vcpu3.setLapic(raw);
  expect(vcpu3.getLapic().tpr).toBe(0x30);
});

test('the local APIC and MP states other than runnable need the irqchip; setLapic checks its argument', ({ vm }) => {
  const vcpu = vm.createVcpu(0);
  expect(() => vcpu.getLapic()).toThrow(expect.objectContaining({ code: 'ERR_NO_IRQCHIP', message: expect.stringMatching(/vcpu\.getLapic: local APICs are part of the in-kernel irqchip/) }));
  expect(() => vcpu.setLapic(new LapicState())).toThrow(expect.objectContaining({ code: 'ERR_NO_IRQCHIP' }));
  expect(() => vcpu.setLapic(Buffer.alloc(512))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringMatching(/1024 bytes/) }));
  expect(() => vcpu.setLapic('x' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  expect(vcpu.getMpState()).toBe('runnable');
  expect(() => vcpu.setMpState('halted')).toThrow(expect.objectContaining({ code: 'ERR_NO_IRQCHIP' }));
  vcpu.setMpState('runnable');
});

irqTest('MP state: the boot vCPU is runnable, an application processor waits for INIT; set states read back', ({ vm }) => {
  vm.createIrqchip();
  const bsp = vm.createVcpu(0);
  const ap = vm.createVcpu(1);
  expect(bsp.getMpState()).toBe('runnable');
  expect(ap.getMpState()).toBe('uninitialized');
  bsp.setMpState('halted');
  expect(bsp.getMpState()).toBe('halted');
  ap.setMpState('runnable');
  expect(ap.getMpState()).toBe('runnable');
  expect(() => bsp.setMpState('stopped')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringMatching(/'stopped' is not an x86 MP state/) }));
  expect(() => bsp.setMpState('sleeping' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
  expect(() => bsp.setMpState(3 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
});

plain('LapicState decodes and encodes registers and LVT entries, and checks what it is given', () => {
  const s = new LapicState();
  s.id = 7;
  expect(s.register(LapicRegister.Id)).toBe(0x07000000);
  s.setRegister(LapicRegister.LvtLint1, (1 << 16) | (4 << 8) | (1 << 12) | (1 << 15));
  expect(s.lvt('lint1')).toEqual({ vector: 0, deliveryMode: 'nmi', pending: true, activeLow: false, remoteIrr: false, levelTriggered: true, masked: true });
  s.setLvt('lint1', { masked: false, levelTriggered: false, activeLow: true });
  expect(s.lvt('lint1')).toMatchObject({ masked: false, levelTriggered: false, activeLow: true, deliveryMode: 'nmi', pending: true });
  s.setRegister(LapicRegister.Isr + 16, 1 << 2); // vector 34
  s.setRegister(LapicRegister.Irr + 7 * 16, 2 ** 31); // vector 255
  expect(s.inServiceVectors()).toEqual([34]);
  expect(s.requestedVectors()).toEqual([255]);
  expect(new LapicState(s.bytes).id).toBe(7);
  expect(() => new LapicState(new Uint8Array(100))).toThrow(/bytes must be 1024 bytes/);
  expect(() => new LapicState('x' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  expect(() => s.register(0x21)).toThrow(expect.objectContaining({ code: 'ERR_UNALIGNED' }));
  expect(() => s.register(0x400)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  expect(() => s.setRegister(0x80, 2 ** 32)).toThrow(/value/);
  expect(() => { s.id = 256; }).toThrow(/lapic\.id/);
  expect(() => { s.tpr = -1; }).toThrow(/lapic\.tpr/);
  expect(() => { s.enabled = 1 as never; }).toThrow(/lapic\.enabled must be a boolean/);
  expect(() => s.lvt('lint2' as never)).toThrow(/name must be one of 'timer'/);
  expect(() => s.setLvt('timer', { vector: 256 })).toThrow(/patch\.vector/);
  expect(() => s.setLvt('timer', { deliveryMode: 'lowest' as never })).toThrow(/patch\.deliveryMode must be one of/);
  expect(() => s.setLvt('lint0', { timerMode: 'periodic' })).toThrow(/timerMode applies to the timer entry only/);
  expect(() => s.setLvt('timer', { timerMode: 'burst' as never })).toThrow(/patch\.timerMode must be/);
  expect(() => s.setLvt('timer', { pending: true } as never)).toThrow(/patch\.pending is not a writable LVT field/);
  expect(() => s.setLvt('timer', { masked: 'no' as never })).toThrow(/patch\.masked must be a boolean/);
  expect(() => s.setLvt('timer', null as never)).toThrow(/patch must be an object/);
});
