/**
 * Decoding of `struct kvm_run` (include/uapi/linux/kvm.h, x86-64 layout) after
 * KVM_RUN returns, into a discriminated union on `reason`.
 *
 * Pure TypeScript over the zero-copy mapping of the vCPU's kvm_run: nothing here
 * makes a syscall, and nothing is copied out of the run page that a handler must
 * write back (I/O data, MMIO data and the hypercall return value are views or
 * writes into the mapping itself).
 *
 * @module
 */
import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';

/**
 * The kernel's `KVM_EXIT_*` numbers (`kvm_run.exit_reason`), include/uapi/linux/kvm.h.
 * Names are the kernel's without the prefix, camelCased.
 */
export const ExitReason = {
  /** KVM_EXIT_UNKNOWN: `hw.hardware_exit_reason` holds the hardware reason. */
  Unknown: 0,
  /** KVM_EXIT_EXCEPTION */
  Exception: 1,
  /** KVM_EXIT_IO: port I/O, `kvm_run.io`. */
  Io: 2,
  /** KVM_EXIT_HYPERCALL: a hypercall enabled with KVM_CAP_EXIT_HYPERCALL. */
  Hypercall: 3,
  /** KVM_EXIT_DEBUG: KVM_SET_GUEST_DEBUG breakpoint or single step. */
  Debug: 4,
  /** KVM_EXIT_HLT: the guest halted (no in-kernel irqchip). */
  Hlt: 5,
  /** KVM_EXIT_MMIO: access to a GPA no memory slot backs, `kvm_run.mmio`. */
  Mmio: 6,
  /** KVM_EXIT_IRQ_WINDOW_OPEN */
  IrqWindowOpen: 7,
  /** KVM_EXIT_SHUTDOWN: triple fault. */
  Shutdown: 8,
  /** KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest. */
  FailEntry: 9,
  /** KVM_EXIT_INTR: KVM_RUN was interrupted by a signal or `immediate_exit`. */
  Intr: 10,
  /** KVM_EXIT_SET_TPR */
  SetTpr: 11,
  /** KVM_EXIT_TPR_ACCESS */
  TprAccess: 12,
  /** KVM_EXIT_NMI */
  Nmi: 16,
  /** KVM_EXIT_INTERNAL_ERROR: KVM could not handle an exit, `kvm_run.internal`. */
  InternalError: 17,
  /** KVM_EXIT_SYSTEM_EVENT: shutdown/reset/crash request, `kvm_run.system_event`. */
  SystemEvent: 24,
  /** KVM_EXIT_IOAPIC_EOI */
  IoapicEoi: 26,
  /** KVM_EXIT_HYPERV */
  Hyperv: 27,
  /** KVM_EXIT_X86_RDMSR */
  X86Rdmsr: 29,
  /** KVM_EXIT_X86_WRMSR */
  X86Wrmsr: 30,
  /** KVM_EXIT_DIRTY_RING_FULL */
  DirtyRingFull: 31,
  /** KVM_EXIT_AP_RESET_HOLD */
  ApResetHold: 32,
  /** KVM_EXIT_X86_BUS_LOCK */
  X86BusLock: 33,
  /** KVM_EXIT_XEN */
  Xen: 34,
  /** KVM_EXIT_NOTIFY */
  Notify: 37,
  /** KVM_EXIT_MEMORY_FAULT: comes with KVM_RUN failing EFAULT/EHWPOISON, `kvm_run.memory_fault`. */
  MemoryFault: 39,
  /** KVM_EXIT_TDX */
  Tdx: 40,
} as const;

/** `KVM_MEMORY_EXIT_FLAG_PRIVATE` (1 << 3) in `kvm_run.memory_fault.flags`: the faulting access was private. */
export const KVM_MEMORY_EXIT_FLAG_PRIVATE = 1n << 3n;

/** `KVM_EXIT_HYPERCALL_LONG_MODE` (bit 0 of `kvm_run.hypercall.flags`, arch/x86/include/uapi/asm/kvm.h). */
export const KVM_EXIT_HYPERCALL_LONG_MODE = 1n << 0n;

/**
 * Byte offsets in the x86-64 `struct kvm_run` (include/uapi/linux/kvm.h). The
 * exit union starts at 32 and is 256 bytes long.
 */
export const KvmRunOffset = {
  /** `__u8 request_interrupt_window` */
  requestInterruptWindow: 0,
  /** `__u8 immediate_exit`: set to make the next KVM_RUN return EINTR at once. */
  immediateExit: 1,
  /** `__u32 exit_reason` */
  exitReason: 8,
  /** `__u8 ready_for_interrupt_injection` */
  readyForInterruptInjection: 12,
  /** `__u8 if_flag` */
  ifFlag: 13,
  /** `__u16 flags` */
  flags: 14,
  /** `__u64 cr8` */
  cr8: 16,
  /** `__u64 apic_base` */
  apicBase: 24,
  /** Start of the exit union. */
  exit: 32,
} as const;

const EINTR = 4;
const EFAULT = 14;
/** EHWPOISON on x86 (asm-generic/errno.h): KVM_EXIT_MEMORY_FAULT may come with it too. */
const EHWPOISON = 133;

const U = KvmRunOffset.exit;
/** The fixed header and the exit union: the least a kvm_run buffer holds. */
const KVM_RUN_MIN_SIZE = KvmRunOffset.exit + 256;

/** Fields every decoded exit carries. */
interface ExitBase {
  /** `kvm_run.exit_reason` as the kernel left it (see {@link ExitReason}). */
  readonly rawReason: number;
}

/** KVM_EXIT_IO (`kvm_run.io`): an `in` or `out` instruction (also `ins`/`outs`: `count` > 1). */
export interface IoExit extends ExitBase {
  /** Discriminant: KVM_EXIT_IO. */
  readonly reason: 'io';
  /** `io.port`: the I/O port accessed. */
  readonly port: number;
  /** `io.direction`: KVM_EXIT_IO_IN (0) is `'in'`, KVM_EXIT_IO_OUT (1) is `'out'`. */
  readonly direction: 'in' | 'out';
  /** Bytes per access: 1, 2 or 4. */
  readonly size: number;
  /** Number of accesses (string I/O). */
  readonly count: number;
  /**
   * Zero-copy view of the `size * count` data bytes at `kvm_run + io.data_offset`.
   * For `out` it holds what the guest wrote; for `in` the handler fills it before the
   * next KVM_RUN. Valid until the next KVM_RUN.
   */
  readonly data: Buffer;
}

/** KVM_EXIT_MMIO (`kvm_run.mmio`): an access to a GPA that no memory slot backs. */
export interface MmioExit extends ExitBase {
  /** Discriminant: KVM_EXIT_MMIO. */
  readonly reason: 'mmio';
  /** `mmio.phys_addr` */
  readonly address: bigint;
  /** `mmio.len`: 1..8 bytes. */
  readonly length: number;
  /** `mmio.is_write` */
  readonly isWrite: boolean;
  /**
   * Zero-copy view of `mmio.data[0..length)`: what the guest wrote, or for a read,
   * what the handler must fill in before the next KVM_RUN.
   */
  readonly data: Buffer;
}

/** KVM_EXIT_HLT: the guest executed `hlt` and KVM has no in-kernel irqchip to wait on. */
export interface HltExit extends ExitBase {
  /** Discriminant: KVM_EXIT_HLT. */
  readonly reason: 'hlt';
}

/** KVM_EXIT_SHUTDOWN: the guest triple-faulted (on x86). */
export interface ShutdownExit extends ExitBase {
  /** Discriminant: KVM_EXIT_SHUTDOWN. */
  readonly reason: 'shutdown';
}

/** KVM_EXIT_FAIL_ENTRY (`kvm_run.fail_entry`): VM entry failed, usually invalid guest state. */
export interface FailEntryExit extends ExitBase {
  /** Discriminant: KVM_EXIT_FAIL_ENTRY. */
  readonly reason: 'fail-entry';
  /** `fail_entry.hardware_entry_failure_reason` (VMX exit reason / SVM exit code). */
  readonly hardwareEntryFailureReason: bigint;
  /** `fail_entry.cpu`: the host CPU the entry failed on. */
  readonly cpu: number;
}

/** `KVM_INTERNAL_ERROR_*` names of `kvm_run.internal.suberror`. */
export type InternalErrorName = 'emulation' | 'simul-ex' | 'delivery-ev' | 'unexpected-exit-reason' | 'unknown';

/** KVM_EXIT_INTERNAL_ERROR (`kvm_run.internal`): KVM could not handle something (often emulation). */
export interface InternalErrorExit extends ExitBase {
  /** Discriminant: KVM_EXIT_INTERNAL_ERROR. */
  readonly reason: 'internal-error';
  /** `internal.suberror` (KVM_INTERNAL_ERROR_EMULATION = 1, SIMUL_EX = 2, DELIVERY_EV = 3, UNEXPECTED_EXIT_REASON = 4). */
  readonly suberror: number;
  /** The name of `suberror`. */
  readonly suberrorName: InternalErrorName;
  /** `internal.data[0..ndata)` (at most 16). */
  readonly data: bigint[];
}

/** `KVM_SYSTEM_EVENT_*` names of `kvm_run.system_event.type`. */
export type SystemEventName = 'shutdown' | 'reset' | 'crash' | 'wakeup' | 'suspend' | 'sev-term' | 'tdx-fatal' | 'unknown';

/** KVM_EXIT_SYSTEM_EVENT (`kvm_run.system_event`): the guest asked for a shutdown, reset, ... */
export interface SystemEventExit extends ExitBase {
  /** Discriminant: KVM_EXIT_SYSTEM_EVENT. */
  readonly reason: 'system-event';
  /** `system_event.type` (KVM_SYSTEM_EVENT_SHUTDOWN = 1, RESET = 2, CRASH = 3, ...). */
  readonly type: number;
  /** The name of `type`. */
  readonly typeName: SystemEventName;
  /** `system_event.data[0..ndata)` (at most 16). */
  readonly data: bigint[];
}

/** KVM_EXIT_HYPERCALL (`kvm_run.hypercall`): a hypercall KVM_CAP_EXIT_HYPERCALL forwards to userspace. */
export interface HypercallExit extends ExitBase {
  /** Discriminant: KVM_EXIT_HYPERCALL. */
  readonly reason: 'hypercall';
  /** `hypercall.nr` (e.g. KVM_HC_MAP_GPA_RANGE = 12). */
  readonly nr: bigint;
  /** `hypercall.args[0..6)`. */
  readonly args: bigint[];
  /** `hypercall.flags` (the old `longmode` field). */
  readonly flags: bigint;
  /** KVM_EXIT_HYPERCALL_LONG_MODE: the guest made the call in 64-bit mode. */
  readonly longMode: boolean;
  /** Writes `hypercall.ret`, the value the guest gets in rax once the vCPU runs again. */
  setReturn(value: bigint | number): void;
}

/**
 * KVM_EXIT_MEMORY_FAULT (`kvm_run.memory_fault`): KVM could not resolve a guest
 * access, e.g. a private access to a GPA whose slot has no guest_memfd, or the
 * attributes of the range disagree with the access. Comes with KVM_RUN failing
 * EFAULT (or EHWPOISON): it is a result, not an error.
 */
export interface MemoryFaultExit extends ExitBase {
  /** Discriminant: KVM_EXIT_MEMORY_FAULT (with KVM_RUN failing EFAULT or EHWPOISON). */
  readonly reason: 'memory-fault';
  /** `memory_fault.gpa`: start of the faulting range. */
  readonly gpa: bigint;
  /** `memory_fault.size`: bytes in the faulting range. */
  readonly size: bigint;
  /** KVM_MEMORY_EXIT_FLAG_PRIVATE is set: the access was private (else shared). */
  readonly private: boolean;
  /** `memory_fault.flags` as the kernel left them. */
  readonly flags: bigint;
  /** The errno KVM_RUN failed with: EFAULT (14), or EHWPOISON (133) for poisoned memory. */
  readonly errno: number;
}

/** KVM_EXIT_EXCEPTION (`kvm_run.ex`). */
export interface ExceptionExit extends ExitBase {
  /** Discriminant: KVM_EXIT_EXCEPTION. */
  readonly reason: 'exception';
  /** `ex.exception`: the vector. */
  readonly exception: number;
  /** `ex.error_code` */
  readonly errorCode: number;
}

/** KVM_EXIT_DEBUG (`kvm_run.debug.arch`, x86 `struct kvm_debug_exit_arch`). */
export interface DebugExit extends ExitBase {
  /** Discriminant: KVM_EXIT_DEBUG. */
  readonly reason: 'debug';
  /** `debug.arch.exception`: 1 (#DB) or 3 (#BP). */
  readonly exception: number;
  /** `debug.arch.pc` */
  readonly pc: bigint;
  /** `debug.arch.dr6` */
  readonly dr6: bigint;
  /** `debug.arch.dr7` */
  readonly dr7: bigint;
}

/**
 * KVM_RUN returned EINTR: a signal (a kick) or `immediate_exit` stopped it before or
 * while the guest ran. The kernel sets `exit_reason` to KVM_EXIT_INTR (10); the run
 * can simply be repeated.
 */
export interface IntrExit extends ExitBase {
  /** Discriminant: KVM_RUN failed with EINTR (`exit_reason` KVM_EXIT_INTR). */
  readonly reason: 'intr';
}

/** Any exit reason this module does not decode (and KVM_EXIT_UNKNOWN itself). */
export interface UnknownExit extends ExitBase {
  /** Discriminant: KVM_EXIT_UNKNOWN, or an exit reason not decoded here (see `rawReason`). */
  readonly reason: 'unknown';
  /** For KVM_EXIT_UNKNOWN (0) only: `hw.hardware_exit_reason`. */
  readonly hardwareExitReason?: bigint;
}

/**
 * KVM_RUN failed with an errno that is not part of an exit (not EINTR, not
 * EFAULT/EHWPOISON with KVM_EXIT_MEMORY_FAULT). `rawReason` is then stale: the kernel
 * does not promise to set it. The caller turns this into an exception.
 */
export interface ErrorExit extends ExitBase {
  /** Discriminant: KVM_RUN failed with an errno that is not part of an exit. */
  readonly reason: 'error';
  /** The errno KVM_RUN failed with (positive, e.g. 22 for EINVAL). */
  readonly errno: number;
}

/** What one KVM_RUN ended with, decoded from `struct kvm_run` and KVM_RUN's errno. */
export type VcpuExit =
  | IoExit
  | MmioExit
  | HltExit
  | ShutdownExit
  | FailEntryExit
  | InternalErrorExit
  | SystemEventExit
  | HypercallExit
  | MemoryFaultExit
  | ExceptionExit
  | DebugExit
  | IntrExit
  | UnknownExit
  | ErrorExit;

/** The `reason` strings of {@link VcpuExit}. */
export type VcpuExitReason = VcpuExit['reason'];

const INTERNAL_ERROR_NAMES: readonly InternalErrorName[] = ['unknown', 'emulation', 'simul-ex', 'delivery-ev', 'unexpected-exit-reason'];
const SYSTEM_EVENT_NAMES: readonly SystemEventName[] = ['unknown', 'shutdown', 'reset', 'crash', 'wakeup', 'suspend', 'sev-term', 'tdx-fatal'];

/** The hypercall exit is a class so `setReturn` is a shared method, not a closure per exit. */
class HypercallExitImpl implements HypercallExit {
  readonly reason = 'hypercall' as const;
  readonly rawReason: number;
  readonly nr: bigint;
  readonly args: bigint[];
  readonly flags: bigint;
  readonly longMode: boolean;
  readonly #run: Buffer;

  constructor(run: Buffer, rawReason: number) {
    this.#run = run;
    this.rawReason = rawReason;
    this.nr = run.readBigUInt64LE(U);
    const args = new Array<bigint>(6);
    for (let i = 0; i < 6; i++) args[i] = run.readBigUInt64LE(U + 8 + i * 8);
    this.args = args;
    this.flags = run.readBigUInt64LE(U + 64);
    this.longMode = (this.flags & KVM_EXIT_HYPERCALL_LONG_MODE) !== 0n;
  }

  setReturn(value: bigint | number): void {
    // hypercall.ret: after nr and args[6]. Negative values are the guest's -errno (two's complement).
    this.#run.writeBigUInt64LE(BigInt.asUintN(64, BigInt(value)), U + 56);
  }
}

/*
 * One-entry cache of the last I/O data view. A vCPU's PIO data sits at a fixed
 * offset of its own mapping and most exits move the same number of bytes, so a
 * vCPU looping on I/O gets the same Buffer back instead of a new subarray per
 * exit (a subarray costs about as much as the rest of the decode). It only ever
 * aliases `run`, so its contents are always the current exit's. Held weakly: the
 * view keeps the kvm_run mapping alive, and a vCPU dropped without close() must
 * still have its mapping released when it is collected.
 */
let ioCacheRun: WeakRef<Buffer> | undefined;
let ioCacheOffset = -1;
let ioCacheLength = -1;
let ioCacheView: WeakRef<Buffer> | undefined;

function ioData(run: Buffer, offset: number, length: number): Buffer {
  if (offset === ioCacheOffset && length === ioCacheLength && ioCacheRun?.deref() === run) {
    const cached = ioCacheView?.deref();
    if (cached !== undefined) return cached;
  }
  const view = run.subarray(offset, offset + length);
  ioCacheRun = new WeakRef(run);
  ioCacheOffset = offset;
  ioCacheLength = length;
  ioCacheView = new WeakRef(view);
  return view;
}

function readU64Array(run: Buffer, offset: number, n: number): bigint[] {
  const count = Math.min(n, 16);
  const out = new Array<bigint>(count);
  for (let i = 0; i < count; i++) out[i] = run.readBigUInt64LE(offset + i * 8);
  return out;
}

/**
 * Decodes the exit a vCPU's KVM_RUN ended with.
 *
 * @param run - the vCPU's kvm_run mapping (`mmap` of the vCPU fd, at least
 *   KVM_GET_VCPU_MMAP_SIZE bytes, so that `io.data_offset` lies inside it). Views
 *   in the result alias it.
 * @param errno - 0 if KVM_RUN returned 0, else its errno.
 *
 * - errno EINTR: `'intr'` whatever `exit_reason` says.
 * - errno EFAULT or EHWPOISON with `exit_reason` KVM_EXIT_MEMORY_FAULT: `'memory-fault'`.
 *   The kernel leaves `exit_reason` alone on other failures, so a caller that wants
 *   to tell a fresh memory fault from a stale one clears `exit_reason` before KVM_RUN.
 * - any other nonzero errno: `'error'`.
 */
export function decodeExit(run: Buffer, errno: number): VcpuExit {
  if (!Buffer.isBuffer(run) || run.length < KVM_RUN_MIN_SIZE)
    throw new ArgumentTypeError(
      'ERR_INVALID_ARG_TYPE',
      `decodeExit: run must be a Buffer over a vCPU's kvm_run mapping (at least ${KVM_RUN_MIN_SIZE} bytes), got ${
        Buffer.isBuffer(run) ? `${run.length} bytes` : run === null ? 'null' : `a ${typeof run}`
      }`,
    );
  if (!Number.isInteger(errno) || errno < 0 || errno > 4095)
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `decodeExit: errno must be an integer 0..4095, got ${String(errno)}`);
  return decodeRun(run, errno);
}

/** {@link decodeExit} without the argument checks: the vCPU's own mapping. @internal */
export function decodeRun(run: Buffer, errno: number): VcpuExit {
  const raw = run.readUInt32LE(KvmRunOffset.exitReason);
  if (errno !== 0) {
    if (errno === EINTR) return { reason: 'intr', rawReason: raw };
    if (raw === ExitReason.MemoryFault && (errno === EFAULT || errno === EHWPOISON)) return decodeMemoryFault(run, raw, errno);
    return { reason: 'error', errno, rawReason: raw };
  }
  switch (raw) {
    case ExitReason.Io: {
      const size = run[U + 1]!;
      const count = run.readUInt32LE(U + 4);
      // data_offset is a u64 but always within the mapping (KVM_PIO_PAGE_OFFSET pages): read the low half.
      const offset = run.readUInt32LE(U + 8);
      return {
        reason: 'io',
        rawReason: raw,
        port: run.readUInt16LE(U + 2),
        direction: run[U] === 0 ? 'in' : 'out',
        size,
        count,
        data: ioData(run, offset, size * count),
      };
    }
    case ExitReason.Mmio: {
      const length = Math.min(run.readUInt32LE(U + 16), 8);
      return {
        reason: 'mmio',
        rawReason: raw,
        address: run.readBigUInt64LE(U),
        length,
        isWrite: run[U + 20] !== 0,
        data: run.subarray(U + 8, U + 8 + length),
      };
    }
    case ExitReason.Hlt:
      return { reason: 'hlt', rawReason: raw };
    case ExitReason.Shutdown:
      return { reason: 'shutdown', rawReason: raw };
    case ExitReason.Intr:
      return { reason: 'intr', rawReason: raw };
    case ExitReason.Hypercall:
      return new HypercallExitImpl(run, raw);
    case ExitReason.FailEntry:
      return {
        reason: 'fail-entry',
        rawReason: raw,
        hardwareEntryFailureReason: run.readBigUInt64LE(U),
        cpu: run.readUInt32LE(U + 8),
      };
    case ExitReason.InternalError: {
      const suberror = run.readUInt32LE(U);
      return {
        reason: 'internal-error',
        rawReason: raw,
        suberror,
        suberrorName: INTERNAL_ERROR_NAMES[suberror] ?? 'unknown',
        data: readU64Array(run, U + 8, run.readUInt32LE(U + 4)),
      };
    }
    case ExitReason.SystemEvent: {
      const type = run.readUInt32LE(U);
      return {
        reason: 'system-event',
        rawReason: raw,
        type,
        typeName: SYSTEM_EVENT_NAMES[type] ?? 'unknown',
        data: readU64Array(run, U + 8, run.readUInt32LE(U + 4)),
      };
    }
    case ExitReason.MemoryFault:
      return decodeMemoryFault(run, raw, errno);
    case ExitReason.Exception:
      return { reason: 'exception', rawReason: raw, exception: run.readUInt32LE(U), errorCode: run.readUInt32LE(U + 4) };
    case ExitReason.Debug:
      return {
        reason: 'debug',
        rawReason: raw,
        exception: run.readUInt32LE(U),
        pc: run.readBigUInt64LE(U + 8),
        dr6: run.readBigUInt64LE(U + 16),
        dr7: run.readBigUInt64LE(U + 24),
      };
    case ExitReason.Unknown:
      return { reason: 'unknown', rawReason: raw, hardwareExitReason: run.readBigUInt64LE(U) };
    default:
      return { reason: 'unknown', rawReason: raw };
  }
}

function decodeMemoryFault(run: Buffer, raw: number, errno: number): MemoryFaultExit {
  const flags = run.readBigUInt64LE(U);
  return {
    reason: 'memory-fault',
    rawReason: raw,
    gpa: run.readBigUInt64LE(U + 8),
    size: run.readBigUInt64LE(U + 16),
    private: (flags & KVM_MEMORY_EXIT_FLAG_PRIVATE) !== 0n,
    flags,
    errno,
  };
}
