import { describe, expect, it } from 'vitest';
import {
  decodeExit,
  ExitReason,
  KVM_EXIT_HYPERCALL_LONG_MODE,
  KVM_MEMORY_EXIT_FLAG_PRIVATE,
  KvmRunOffset,
  type VcpuExit,
} from '../lib/kvm/exits';

// x86-64 struct kvm_run, include/uapi/linux/kvm.h.
const EXIT_REASON = 8;
const U = 32; // the exit union
/** KVM_GET_VCPU_MMAP_SIZE on x86: kvm_run page, PIO data page, coalesced MMIO ring. */
const RUN_SIZE = 3 * 4096;
/** io.data_offset KVM uses on x86 (KVM_PIO_PAGE_OFFSET pages). */
const PIO_OFFSET = 4096;

const EINTR = 4;
const EFAULT = 14;
const EINVAL = 22;
const EHWPOISON = 133;

function runImage(reason: number): Buffer {
  const run = Buffer.alloc(RUN_SIZE);
  run.writeUInt32LE(reason, EXIT_REASON);
  return run;
}

function ioImage(direction: 0 | 1, size: number, port: number, count: number, offset = PIO_OFFSET): Buffer {
  const run = runImage(ExitReason.Io);
  run[U] = direction;
  run[U + 1] = size;
  run.writeUInt16LE(port, U + 2);
  run.writeUInt32LE(count, U + 4);
  run.writeBigUInt64LE(BigInt(offset), U + 8);
  return run;
}

function narrow<R extends VcpuExit['reason']>(exit: VcpuExit, reason: R): Extract<VcpuExit, { reason: R }> {
  expect(exit.reason).toBe(reason);
  return exit as Extract<VcpuExit, { reason: R }>;
}

describe('ExitReason', () => {
  it('uses the kernel KVM_EXIT_* numbers', () => {
    expect(ExitReason).toMatchObject({
      Unknown: 0, Exception: 1, Io: 2, Hypercall: 3, Debug: 4, Hlt: 5, Mmio: 6, IrqWindowOpen: 7,
      Shutdown: 8, FailEntry: 9, Intr: 10, SetTpr: 11, TprAccess: 12, Nmi: 16, InternalError: 17,
      SystemEvent: 24, IoapicEoi: 26, Hyperv: 27, X86Rdmsr: 29, X86Wrmsr: 30, DirtyRingFull: 31,
      ApResetHold: 32, X86BusLock: 33, Xen: 34, Notify: 37, MemoryFault: 39, Tdx: 40,
    });
  });

  it('has the kvm_run header offsets of the uapi struct', () => {
    expect(KvmRunOffset).toEqual({
      requestInterruptWindow: 0, immediateExit: 1, exitReason: 8, readyForInterruptInjection: 12,
      ifFlag: 13, flags: 14, cr8: 16, apicBase: 24, exit: 32,
    });
    expect(KVM_MEMORY_EXIT_FLAG_PRIVATE).toBe(8n);
    expect(KVM_EXIT_HYPERCALL_LONG_MODE).toBe(1n);
  });
});

describe('decodeExit: KVM_EXIT_IO', () => {
  it('decodes an out of one byte', () => {
    const run = ioImage(1, 1, 0x3f8, 1);
    run[PIO_OFFSET] = 0x41;
    const exit = narrow(decodeExit(run, 0), 'io');
    expect(exit).toMatchObject({ rawReason: 2, port: 0x3f8, direction: 'out', size: 1, count: 1 });
    expect([...exit.data]).toEqual([0x41]);
  });

  it('io data is a zero-copy view of the run buffer at data_offset', () => {
    const run = ioImage(0, 2, 0x60, 3);
    const exit = narrow(decodeExit(run, 0), 'io');
    expect(exit.direction).toBe('in');
    expect(exit.data.length).toBe(6);
    expect(exit.data.buffer).toBe(run.buffer);
    expect(exit.data.byteOffset).toBe(run.byteOffset + PIO_OFFSET);
    exit.data.fill(0xaa); // what a handler does for an `in` before the next KVM_RUN
    expect([...run.subarray(PIO_OFFSET - 1, PIO_OFFSET + 7)]).toEqual([0, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0]);
  });

  it('io data always shows the current exit, also when the view is reused across exits', () => {
    const run = ioImage(1, 1, 0x3f8, 1);
    run[PIO_OFFSET] = 1;
    const first = narrow(decodeExit(run, 0), 'io');
    run[PIO_OFFSET] = 2; // the next KVM_RUN writes the next byte in place
    const second = narrow(decodeExit(run, 0), 'io');
    expect(second.data[0]).toBe(2);
    expect(first.data[0]).toBe(2); // valid until the next KVM_RUN only: it aliases the run page
  });

  it('io data of two vCPUs alternating stays with each vCPU run buffer', () => {
    const a = ioImage(1, 1, 0x3f8, 1);
    const b = ioImage(1, 1, 0x3f8, 1);
    a[PIO_OFFSET] = 0xa;
    b[PIO_OFFSET] = 0xb;
    for (let i = 0; i < 3; i++) {
      const ea = narrow(decodeExit(a, 0), 'io');
      const eb = narrow(decodeExit(b, 0), 'io');
      expect(ea.data.buffer).toBe(a.buffer);
      expect(eb.data.buffer).toBe(b.buffer);
      expect([ea.data[0], eb.data[0]]).toEqual([0xa, 0xb]);
    }
  });

  it('io data length follows size * count of each exit (string I/O)', () => {
    const run = ioImage(1, 4, 0x1f0, 1);
    expect(narrow(decodeExit(run, 0), 'io').data.length).toBe(4);
    run[U + 1] = 2;
    run.writeUInt32LE(8, U + 4);
    expect(narrow(decodeExit(run, 0), 'io').data.length).toBe(16);
  });

  it('decodes an IO exit image captured from KVM_RUN on Linux 6.18', () => {
    // readAndReport(0x2000, 1, 0x3f8) reading 0xa7; first 48 bytes of kvm_run and the PIO page.
    const run = Buffer.alloc(RUN_SIZE);
    Buffer.from('0000000000000000020000000000000000000000000000000009e0fe000000000101f803010000000010000000000000', 'hex').copy(run);
    run[PIO_OFFSET] = 0xa7;
    const exit = narrow(decodeExit(run, 0), 'io');
    expect(exit).toMatchObject({ rawReason: 2, port: 0x3f8, direction: 'out', size: 1, count: 1 });
    expect([...exit.data]).toEqual([0xa7]);
  });
});

describe('decodeExit: KVM_EXIT_MMIO', () => {
  it('decodes a read with a writable zero-copy data view', () => {
    const run = runImage(ExitReason.Mmio);
    run.writeBigUInt64LE(0xb8000n, U);
    run.writeUInt32LE(1, U + 16);
    run[U + 20] = 0;
    const exit = narrow(decodeExit(run, 0), 'mmio');
    expect(exit).toMatchObject({ rawReason: 6, address: 0xb8000n, length: 1, isWrite: false });
    exit.data[0] = 0x7e;
    expect(run[U + 8]).toBe(0x7e);
    expect(exit.data.buffer).toBe(run.buffer);
  });

  it('decodes a write of 8 bytes at a 64-bit address', () => {
    const run = runImage(ExitReason.Mmio);
    run.writeBigUInt64LE(0xfffff_0000_1000n, U);
    run.writeBigUInt64LE(0x0807060504030201n, U + 8);
    run.writeUInt32LE(8, U + 16);
    run[U + 20] = 1;
    const exit = narrow(decodeExit(run, 0), 'mmio');
    expect(exit).toMatchObject({ address: 0xfffff_0000_1000n, length: 8, isWrite: true });
    expect([...exit.data]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('decodes an MMIO exit image captured from KVM_RUN on Linux 6.18', () => {
    // touch(0xb8000) with nothing mapped there.
    const run = Buffer.alloc(RUN_SIZE);
    Buffer.from('0000000000000000060000000000000000000000000000000009e0fe0000000000800b0000000000000000000000000001000000', 'hex').copy(run);
    expect(decodeExit(run, 0)).toMatchObject({ reason: 'mmio', address: 0xb8000n, length: 1, isWrite: false });
  });
});

describe('decodeExit: simple exits', () => {
  it('decodes KVM_EXIT_HLT', () => {
    expect(decodeExit(runImage(ExitReason.Hlt), 0)).toEqual({ reason: 'hlt', rawReason: 5 });
  });

  it('decodes KVM_EXIT_SHUTDOWN', () => {
    expect(decodeExit(runImage(ExitReason.Shutdown), 0)).toEqual({ reason: 'shutdown', rawReason: 8 });
  });

  it('decodes KVM_EXIT_FAIL_ENTRY with the hardware reason and cpu', () => {
    const run = runImage(ExitReason.FailEntry);
    run.writeBigUInt64LE(0x8000_0021n, U);
    run.writeUInt32LE(3, U + 8);
    expect(decodeExit(run, 0)).toEqual({ reason: 'fail-entry', rawReason: 9, hardwareEntryFailureReason: 0x8000_0021n, cpu: 3 });
  });

  it('decodes KVM_EXIT_EXCEPTION', () => {
    const run = runImage(ExitReason.Exception);
    run.writeUInt32LE(13, U);
    run.writeUInt32LE(0x10, U + 4);
    expect(decodeExit(run, 0)).toEqual({ reason: 'exception', rawReason: 1, exception: 13, errorCode: 0x10 });
  });

  it('decodes KVM_EXIT_DEBUG (struct kvm_debug_exit_arch)', () => {
    const run = runImage(ExitReason.Debug);
    run.writeUInt32LE(1, U);
    run.writeBigUInt64LE(0x1004n, U + 8);
    run.writeBigUInt64LE(0xffff4ff0n, U + 16);
    run.writeBigUInt64LE(0x400n, U + 24);
    expect(decodeExit(run, 0)).toEqual({ reason: 'debug', rawReason: 4, exception: 1, pc: 0x1004n, dr6: 0xffff4ff0n, dr7: 0x400n });
  });

  it('decodes KVM_EXIT_UNKNOWN with hw.hardware_exit_reason', () => {
    const run = runImage(ExitReason.Unknown);
    run.writeBigUInt64LE(0x7fn, U);
    expect(decodeExit(run, 0)).toEqual({ reason: 'unknown', rawReason: 0, hardwareExitReason: 0x7fn });
  });

  it('reports exits it does not decode as unknown with their raw reason', () => {
    expect(decodeExit(runImage(ExitReason.X86Rdmsr), 0)).toEqual({ reason: 'unknown', rawReason: 29 });
    expect(decodeExit(runImage(1000), 0)).toEqual({ reason: 'unknown', rawReason: 1000 });
  });
});

describe('decodeExit: KVM_EXIT_INTERNAL_ERROR and KVM_EXIT_SYSTEM_EVENT', () => {
  it('decodes internal.suberror and data[0..ndata)', () => {
    const run = runImage(ExitReason.InternalError);
    run.writeUInt32LE(1, U);
    run.writeUInt32LE(3, U + 4);
    for (let i = 0; i < 4; i++) run.writeBigUInt64LE(BigInt(0x10 + i), U + 8 + i * 8);
    expect(decodeExit(run, 0)).toEqual({
      reason: 'internal-error', rawReason: 17, suberror: 1, suberrorName: 'emulation', data: [0x10n, 0x11n, 0x12n],
    });
  });

  it('caps internal.ndata at the 16 entries of the union', () => {
    const run = runImage(ExitReason.InternalError);
    run.writeUInt32LE(4, U);
    run.writeUInt32LE(1000, U + 4);
    const exit = narrow(decodeExit(run, 0), 'internal-error');
    expect(exit.data).toHaveLength(16);
    expect(exit.suberrorName).toBe('unexpected-exit-reason');
  });

  it('decodes system_event type, name and data', () => {
    const run = runImage(ExitReason.SystemEvent);
    run.writeUInt32LE(2, U);
    run.writeUInt32LE(1, U + 4);
    run.writeBigUInt64LE(0x5n, U + 8);
    expect(decodeExit(run, 0)).toEqual({ reason: 'system-event', rawReason: 24, type: 2, typeName: 'reset', data: [5n] });
  });

  it('names every KVM_SYSTEM_EVENT_* type and unknown ones', () => {
    const names = ['unknown', 'shutdown', 'reset', 'crash', 'wakeup', 'suspend', 'sev-term', 'tdx-fatal', 'unknown'];
    names.forEach((name, type) => {
      const run = runImage(ExitReason.SystemEvent);
      run.writeUInt32LE(type, U);
      expect(narrow(decodeExit(run, 0), 'system-event').typeName).toBe(name);
    });
  });
});

describe('decodeExit: KVM_EXIT_HYPERCALL', () => {
  function hypercallImage(flags: bigint): Buffer {
    const run = runImage(ExitReason.Hypercall);
    run.writeBigUInt64LE(12n, U); // KVM_HC_MAP_GPA_RANGE
    for (let i = 0; i < 6; i++) run.writeBigUInt64LE(BigInt(i + 1) << 32n, U + 8 + i * 8);
    run.writeBigUInt64LE(flags, U + 64);
    return run;
  }

  it('decodes nr, args[6] and the long-mode flag', () => {
    const exit = narrow(decodeExit(hypercallImage(KVM_EXIT_HYPERCALL_LONG_MODE), 0), 'hypercall');
    expect(exit.rawReason).toBe(3);
    expect(exit.nr).toBe(12n);
    expect(exit.args).toEqual([1n << 32n, 2n << 32n, 3n << 32n, 4n << 32n, 5n << 32n, 6n << 32n]);
    expect(exit.flags).toBe(1n);
    expect(exit.longMode).toBe(true);
    expect(narrow(decodeExit(hypercallImage(0n), 0), 'hypercall').longMode).toBe(false);
  });

  it('setReturn writes hypercall.ret at kvm_run offset 88', () => {
    const run = hypercallImage(0n);
    const exit = narrow(decodeExit(run, 0), 'hypercall');
    exit.setReturn(0x1234n);
    expect(run.readBigUInt64LE(88)).toBe(0x1234n);
    expect(run.readBigUInt64LE(80)).toBe(6n << 32n); // args[5] untouched
    expect(run.readBigUInt64LE(96)).toBe(0n); // flags untouched
    exit.setReturn(-1000); // -KVM_ENOSYS, as the guest sees it in rax
    expect(run.readBigInt64LE(88)).toBe(-1000n);
  });
});

describe('decodeExit: KVM_RUN errno', () => {
  function memoryFaultImage(flags: bigint): Buffer {
    const run = runImage(ExitReason.MemoryFault);
    run.writeBigUInt64LE(flags, U);
    run.writeBigUInt64LE(0x1_0000_0000n, U + 8);
    run.writeBigUInt64LE(0x1000n, U + 16);
    return run;
  }

  it('decodes EFAULT with KVM_EXIT_MEMORY_FAULT as a private memory fault, not an error', () => {
    expect(decodeExit(memoryFaultImage(KVM_MEMORY_EXIT_FLAG_PRIVATE), EFAULT)).toEqual({
      reason: 'memory-fault', rawReason: 39, gpa: 0x1_0000_0000n, size: 0x1000n, private: true, flags: 8n, errno: EFAULT,
    });
  });

  it('decodes a shared memory fault (flags without KVM_MEMORY_EXIT_FLAG_PRIVATE)', () => {
    const exit = narrow(decodeExit(memoryFaultImage(0n), EFAULT), 'memory-fault');
    expect(exit.private).toBe(false);
    expect(exit.flags).toBe(0n);
  });

  it('decodes EHWPOISON with KVM_EXIT_MEMORY_FAULT as a memory fault', () => {
    expect(decodeExit(memoryFaultImage(0n), EHWPOISON)).toMatchObject({ reason: 'memory-fault', errno: EHWPOISON });
  });

  it('decodes EINTR as intr whatever exit_reason holds', () => {
    expect(decodeExit(runImage(ExitReason.Intr), EINTR)).toEqual({ reason: 'intr', rawReason: 10 });
    // immediate_exit returns before the guest runs: exit_reason keeps whatever it had.
    expect(decodeExit(ioImage(1, 1, 0x3f8, 1), EINTR)).toEqual({ reason: 'intr', rawReason: 2 });
    expect(decodeExit(runImage(0), EINTR)).toEqual({ reason: 'intr', rawReason: 0 });
  });

  it('decodes KVM_EXIT_INTR without errno as intr', () => {
    expect(decodeExit(runImage(ExitReason.Intr), 0)).toEqual({ reason: 'intr', rawReason: 10 });
  });

  it('reports EFAULT without KVM_EXIT_MEMORY_FAULT as an error', () => {
    expect(decodeExit(runImage(ExitReason.Io), EFAULT)).toEqual({ reason: 'error', errno: EFAULT, rawReason: 2 });
  });

  it('reports an unexpected errno as an error, even with a memory-fault exit_reason', () => {
    expect(decodeExit(runImage(ExitReason.Hlt), EINVAL)).toEqual({ reason: 'error', errno: EINVAL, rawReason: 5 });
    expect(decodeExit(memoryFaultImage(8n), EINVAL)).toEqual({ reason: 'error', errno: EINVAL, rawReason: 39 });
  });
});

describe('decodeExit: every variant', () => {
  it('carries rawReason equal to kvm_run.exit_reason', () => {
    for (const reason of [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 17, 24, 29, 39]) {
      expect(decodeExit(runImage(reason), 0).rawReason).toBe(reason);
    }
  });
});
