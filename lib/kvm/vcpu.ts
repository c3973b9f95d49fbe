/**
 * vCPUs: KVM_CREATE_VCPU, register blocks, and KVM_RUN on a native thread of their
 * own, with every exit decoded into a discriminated union.
 */
import { Cap, capName, Hypercall } from '../core/caps';
import { AbortError, ArgumentRangeError, ArgumentTypeError, closedError, explain, KvmError, StateError, TimeoutError, UnsupportedError } from '../core/errors';
import { decodeRun, type HypercallExit, type IoExit, type MemoryFaultExit, type MmioExit, type VcpuExit } from './exits';
import type { KvmDtable, KvmSegment } from '../guest/programs';
import { MemoryView, ViewSet } from '../memory/memory-view';
import { native, type NativeVcpuRunner } from '../native';
import { closed, track, type FdCell } from '../core/ownership';
import { enableCapOn } from './enable-cap';
import { decodeCpuid, encodeCpuid, type CpuidEntry } from './cpuid';
import { checkMsrEntries, checkMsrIndices, msrEntries, MsrError, type MsrEntry } from './msr';
import { LAPIC_STATE_SIZE, LapicState } from './lapic';
import { encodeGuestDebug, type GuestDebugOptions } from './guest-debug';
import { hex, PAGE_SIZE, u64, uint } from '../core/validate';
import type { Vm } from './vm';
import { guardReceivers } from '../core/receiver';

/** General purpose registers (struct kvm_regs), 64-bit fields as bigint. */
export interface Regs {
  /** kvm_regs.rax. */
  rax: bigint;
  /** kvm_regs.rbx. */
  rbx: bigint;
  /** kvm_regs.rcx. */
  rcx: bigint;
  /** kvm_regs.rdx. */
  rdx: bigint;
  /** kvm_regs.rsi. */
  rsi: bigint;
  /** kvm_regs.rdi. */
  rdi: bigint;
  /** kvm_regs.rsp. */
  rsp: bigint;
  /** kvm_regs.rbp. */
  rbp: bigint;
  /** kvm_regs.r8. */
  r8: bigint;
  /** kvm_regs.r9. */
  r9: bigint;
  /** kvm_regs.r10. */
  r10: bigint;
  /** kvm_regs.r11. */
  r11: bigint;
  /** kvm_regs.r12. */
  r12: bigint;
  /** kvm_regs.r13. */
  r13: bigint;
  /** kvm_regs.r14. */
  r14: bigint;
  /** kvm_regs.r15. */
  r15: bigint;
  /** kvm_regs.rip: the instruction pointer. */
  rip: bigint;
  /** kvm_regs.rflags (bit 1 is always set). */
  rflags: bigint;
}

/** A segment register (struct kvm_segment). */
export type Segment = KvmSegment;

/** A descriptor table register (struct kvm_dtable). */
export type Dtable = KvmDtable;

/** Special registers (struct kvm_sregs). */
export interface Sregs {
  /** kvm_sregs.cs: the CS segment register. */
  cs: Segment;
  /** kvm_sregs.ds: the DS segment register. */
  ds: Segment;
  /** kvm_sregs.es: the ES segment register. */
  es: Segment;
  /** kvm_sregs.fs: the FS segment register. */
  fs: Segment;
  /** kvm_sregs.gs: the GS segment register. */
  gs: Segment;
  /** kvm_sregs.ss: the SS segment register. */
  ss: Segment;
  /** kvm_sregs.tr: the TR segment register. */
  tr: Segment;
  /** kvm_sregs.ldt: the LDT segment register. */
  ldt: Segment;
  /** kvm_sregs.gdt: the global descriptor table register. */
  gdt: Dtable;
  /** kvm_sregs.idt: the interrupt descriptor table register. */
  idt: Dtable;
  /** kvm_sregs.cr0: control register 0 (PE, PG, ...). */
  cr0: bigint;
  /** kvm_sregs.cr2: the page-fault linear address. */
  cr2: bigint;
  /** kvm_sregs.cr3: the page table root. */
  cr3: bigint;
  /** kvm_sregs.cr4: control register 4 (PAE, ...). */
  cr4: bigint;
  /** kvm_sregs.cr8: the task priority register. */
  cr8: bigint;
  /** kvm_sregs.efer: the EFER MSR (LME, LMA, ...). */
  efer: bigint;
  /** kvm_sregs.apic_base: the IA32_APIC_BASE MSR (kvm_sregs.apic_base). */
  apicBase: bigint;
  /** kvm_sregs.interrupt_bitmap: 256 bits of pending interrupts, as four 64-bit words. */
  interruptBitmap: bigint[];
}

/** FPU state (struct kvm_fpu). */
export interface Fpu {
  /** x87 registers, 8 × 16 bytes. */
  fpr: Buffer[];
  /** `kvm_fpu.fcw`: x87 control word. */
  fcw: number;
  /** `kvm_fpu.fsw`: x87 status word. */
  fsw: number;
  /** `kvm_fpu.ftwx`: x87 tag word in FXSAVE's abridged form (one bit per register). */
  ftwx: number;
  /** `kvm_fpu.last_opcode`: opcode of the last x87 instruction. */
  lastOpcode: number;
  /** `kvm_fpu.last_ip`: address of the last x87 instruction. */
  lastIp: bigint;
  /** `kvm_fpu.last_dp`: address of the last x87 memory operand. */
  lastDp: bigint;
  /** SSE registers, 16 × 16 bytes. */
  xmm: Buffer[];
  /** `kvm_fpu.mxcsr`: SSE control and status register. */
  mxcsr: number;
}

/** What an exit handler returns: `'stop'` ends `runUntil`, anything else resumes. */
export type HandlerResult = void | 'stop' | Promise<void | 'stop'>;

/** Options of {@link Vcpu.run} (and, for the whole loop, {@link Vcpu.runUntil}). */
export interface RunOptions {
  /** Aborting kicks the vCPU; the call rejects with an {@link AbortError} (code `'ABORT_ERR'`). */
  signal?: AbortSignal;
  /** After this many milliseconds the vCPU is kicked and the call rejects with a {@link TimeoutError}. */
  timeoutMs?: number;
}

/** Handlers for {@link Vcpu.runUntil}. */
export interface RunHandlers extends RunOptions {
  /** Port I/O. Fill `exit.data` for IN. Without a handler, the loop stops at it. */
  io?(exit: IoExit): HandlerResult;
  /** MMIO (an access to an unmapped or read-only GPA). Without a handler, the loop stops at it. */
  mmio?(exit: MmioExit): HandlerResult;
  /**
   * Hypercalls routed to userspace. Default: KVM_HC_MAP_GPA_RANGE converts the range
   * (`vm.convert`) and returns 0; others stop the loop.
   */
  hypercall?(exit: HypercallExit): HandlerResult;
  /** KVM_EXIT_MEMORY_FAULT. Default: the VM's conversion policy (`vm.convertOnMemoryFault`). */
  memoryFault?(exit: MemoryFaultExit): HandlerResult;
  /** Use `runSync()` on the calling thread instead of the vCPU thread. */
  sync?: boolean;
  /** Stop after this many exits (default: no limit). */
  maxExits?: number;
}

const NO_CLEANUP = (): void => {};

/**
 * `KVM_MP_STATE_*` (include/uapi/linux/kvm.h), by name: what a vCPU is doing as
 * the in-kernel local APIC sees it. x86 uses the first six (and the SEV-ES
 * `'ap-reset-hold'`); the rest belong to other architectures.
 */
export const MpState = {
  /** KVM_MP_STATE_RUNNABLE: running (the only state without an in-kernel irqchip). */
  runnable: 0,
  /** KVM_MP_STATE_UNINITIALIZED: an application processor waiting for INIT. */
  uninitialized: 1,
  /** KVM_MP_STATE_INIT_RECEIVED: INIT received, waiting for SIPI. */
  'init-received': 2,
  /** KVM_MP_STATE_HALTED: executed HLT, waiting for an interrupt. */
  halted: 3,
  /** KVM_MP_STATE_SIPI_RECEIVED: SIPI received (set as INIT received with the SIPI pending). */
  'sipi-received': 4,
  /** KVM_MP_STATE_STOPPED (s390). */
  stopped: 5,
  /** KVM_MP_STATE_CHECK_STOP (s390). */
  'check-stop': 6,
  /** KVM_MP_STATE_OPERATING (s390). */
  operating: 7,
  /** KVM_MP_STATE_LOAD (s390). */
  load: 8,
  /** KVM_MP_STATE_AP_RESET_HOLD: an SEV-ES application processor parked by the guest. */
  'ap-reset-hold': 9,
  /** KVM_MP_STATE_SUSPENDED (arm64). */
  suspended: 10,
} as const;

/** A name of {@link MpState}. */
export type MpStateName = keyof typeof MpState;

/** The states KVM_SET_MP_STATE accepts on x86 (arch/x86/kvm/x86.c). */
const X86_MP_STATES: readonly MpStateName[] = ['runnable', 'uninitialized', 'init-received', 'halted', 'sipi-received', 'ap-reset-hold'];
const MP_STATE_NAMES = Object.keys(MpState) as MpStateName[];

const regNames = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const;
const segNames = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
const SREGS_SIZE = 312;
const FPU_SIZE = 416;
/** KVM_MAP_GPA_RANGE_ENCRYPTED: the guest asks for private memory. */
const MAP_GPA_RANGE_ENCRYPTED = 1n << 4n;
const EINTR = 4;
/** setTimeout's limit (2^31-1 ms). */
const MAX_TIMEOUT_MS = 0x7fffffff;
/**
 * Exits whose instruction KVM finishes on the next KVM_RUN (KVM_EXIT_IO, _HYPERCALL,
 * _MMIO, _X86_RDMSR, _X86_WRMSR): the vCPU's state must not be replaced before that.
 */
const COMPLETED_ON_NEXT_RUN = new Set([2, 3, 6, 29, 30]);

/** Validates `{ signal, timeoutMs }`. @internal */
export function runOptions(op: string, options: unknown): RunOptions {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object')
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options must be an object, got ${options === null ? 'null' : typeof options}`);
  const o = options as RunOptions;
  const out: RunOptions = {};
  if (o.signal !== undefined) {
    if (!(o.signal instanceof AbortSignal))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.signal must be an AbortSignal`);
    out.signal = o.signal;
  }
  if (o.timeoutMs !== undefined) {
    if (typeof o.timeoutMs !== 'number' || Number.isNaN(o.timeoutMs))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.timeoutMs must be a number of milliseconds, got ${typeof o.timeoutMs}`);
    if (!(o.timeoutMs > 0) || o.timeoutMs > MAX_TIMEOUT_MS)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: options.timeoutMs ${o.timeoutMs} is outside (0, ${MAX_TIMEOUT_MS}]`);
    out.timeoutMs = o.timeoutMs;
  }
  return out;
}

/** A run in flight on the vCPU thread. */
interface PendingRun {
  resolve(exit: VcpuExit): void;
  reject(error: unknown): void;
  /** Set when the run was kicked for a timeout or an abort: an `intr` exit rejects with it. */
  stop: Error | undefined;
  /** Clears the timer and the abort listener. */
  cleanup(): void;
}

function readSegment(b: Buffer, o: number): Segment {
  return {
    base: b.readBigUInt64LE(o),
    limit: b.readUInt32LE(o + 8),
    selector: b.readUInt16LE(o + 12),
    type: b[o + 14]!,
    present: b[o + 15]!,
    dpl: b[o + 16]!,
    db: b[o + 17]!,
    s: b[o + 18]!,
    l: b[o + 19]!,
    g: b[o + 20]!,
    avl: b[o + 21]!,
    unusable: b[o + 22]!,
  };
}

function writeSegment(b: Buffer, o: number, s: Segment): void {
  b.writeBigUInt64LE(BigInt(s.base), o);
  b.writeUInt32LE(s.limit >>> 0, o + 8);
  b.writeUInt16LE(s.selector & 0xffff, o + 12);
  const bytes = [s.type, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable];
  bytes.forEach((v, i) => (b[o + 14 + i] = v & 0xff));
}

const segmentLimits: Record<string, number> = {
  limit: 0xffffffff, selector: 0xffff, type: 0xff, present: 0xff, dpl: 0xff, db: 0xff,
  s: 0xff, l: 0xff, g: 0xff, avl: 0xff, unusable: 0xff,
};

/** Validates one field of a setSregs argument and merges it into the current value. */
function checkSregsField(op: string, key: string, current: unknown, value: unknown): unknown {
  if (key === 'interruptBitmap') {
    if (!Array.isArray(value) || value.length !== 4)
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: interruptBitmap must be four 64-bit words`);
    return value.map((w, i) => u64(w, op, `interruptBitmap[${i}]`));
  }
  if (current !== null && typeof current === 'object') {
    if (value === null || typeof value !== 'object')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: ${key} must be an object`);
    const merged: Record<string, unknown> = { ...(current as object) };
    for (const [f, v] of Object.entries(value)) {
      if (!(f in merged)) throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: unknown field '${key}.${f}'`);
      merged[f] = f === 'base' ? u64(v, op, `${key}.base`) : uint(v, op, `${key}.${f}`, key === 'gdt' || key === 'idt' ? 0xffff : segmentLimits[f]!);
    }
    return merged;
  }
  return u64(value, op, key);
}

/** Decodes struct kvm_sregs. @internal */
export function decodeSregs(b: Buffer): Sregs {
  const segs = Object.fromEntries(segNames.map((n, i) => [n, readSegment(b, i * 24)])) as Record<(typeof segNames)[number], Segment>;
  return {
    ...segs,
    gdt: { base: b.readBigUInt64LE(192), limit: b.readUInt16LE(200) },
    idt: { base: b.readBigUInt64LE(208), limit: b.readUInt16LE(216) },
    cr0: b.readBigUInt64LE(224),
    cr2: b.readBigUInt64LE(232),
    cr3: b.readBigUInt64LE(240),
    cr4: b.readBigUInt64LE(248),
    cr8: b.readBigUInt64LE(256),
    efer: b.readBigUInt64LE(264),
    apicBase: b.readBigUInt64LE(272),
    interruptBitmap: [0, 1, 2, 3].map((i) => b.readBigUInt64LE(280 + 8 * i)),
  };
}

/** Encodes struct kvm_sregs. @internal */
export function encodeSregs(s: Sregs, b: Buffer = Buffer.alloc(SREGS_SIZE)): Buffer {
  segNames.forEach((n, i) => writeSegment(b, i * 24, s[n]));
  b.writeBigUInt64LE(BigInt(s.gdt.base), 192);
  b.writeUInt16LE(s.gdt.limit & 0xffff, 200);
  b.writeBigUInt64LE(BigInt(s.idt.base), 208);
  b.writeUInt16LE(s.idt.limit & 0xffff, 216);
  (['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const).forEach((k, i) => b.writeBigUInt64LE(BigInt(s[k]), 224 + 8 * i));
  s.interruptBitmap.forEach((w, i) => b.writeBigUInt64LE(BigInt(w), 280 + 8 * i));
  return b;
}

/**
 * A vCPU (KVM_CREATE_VCPU) with its kvm_run mapping. `run()` issues KVM_RUN on the
 * vCPU's own native thread, so a spinning guest never blocks the event loop;
 * `runSync()` runs on the calling thread for tight scripted loops. A KVM_RUN that
 * fails with EFAULT and KVM_EXIT_MEMORY_FAULT is decoded as a `memory-fault` exit,
 * not thrown.
 *
 * @example
 * const vcpu = vm.createVcpu(0);
 * vcpu.setRegs({ rip: 0x1000n, rflags: 2n });
 * const exit = await vcpu.run();
 * if (exit.reason === 'io') console.log(exit.port, exit.data);
 */
export class Vcpu {
  static {
    guardReceivers(this, (o) => #fd in o, 'vcpu', 'vm.createVcpu()');
  }
  /** The VM. */
  readonly vm: Vm;
  /** The vCPU id (APIC id). */
  readonly id: number;
  #fd: number;
  #fdCell: FdCell;
  #runView: MemoryView;
  #run: Buffer;
  #runner: NativeVcpuRunner;
  #pending: PendingRun | undefined;
  #needsCompletion = false;
  readonly #regs = Buffer.alloc(144);
  readonly #sregs = Buffer.alloc(SREGS_SIZE);
  readonly #views: ViewSet;

  /** @internal */
  static create(vm: Vm, id: number, fd: number, mmapSize: number): Vcpu {
    return new Vcpu(vm, id, fd, mmapSize);
  }

  private constructor(vm: Vm, id: number, fd: number, mmapSize: number) {
    this.vm = vm;
    this.id = id;
    this.#fd = fd;
    this.#views = new ViewSet(`kvm_run of vCPU ${id}`);
    try {
      this.#runView = this.#views.adopt(native.mapFile(fd, 0, mmapSize, true), 0, mmapSize);
    } catch (e) {
      native.close(fd);
      throw explain(e, `vm.createVcpu(${id}): mapping kvm_run`);
    }
    this.#run = this.#runView.buffer;
    this.#fdCell = track(this, fd);
    try {
      // The runner holds its callback strongly; the callback holds this vCPU weakly,
      // so a forgotten vCPU can still be collected (and its runner stopped).
      const self = new WeakRef(this);
      this.#runner = new native.VcpuRunner(fd, (errno) => {
        const vcpu = self.deref();
        if (vcpu) vcpu.#onExit(errno);
      });
    } catch (e) {
      this.#views.releaseAll();
      closed(this.#fdCell);
      native.close(fd);
      throw explain(e, `vm.createVcpu(${id}): starting its runner`);
    }
  }

  /** The vCPU fd. Throws ERR_CLOSED after close. */
  get fd(): number {
    if (this.#fd < 0) throw closedError(`vCPU ${this.id}`, 'vcpu.fd');
    return this.#fd;
  }

  /** True after `close()`. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /**
   * Tunes the `run()` hand-off: how long the caller waits for a quick exit before
   * returning to the event loop, and how long the vCPU thread waits for the next
   * request before sleeping (microseconds; defaults 50 and 50; 0 disables).
   */
  setSpin(callerMicroseconds: number, threadMicroseconds: number = callerMicroseconds): void {
    const op = 'vcpu.setSpin';
    this.#check(op);
    const c = uint(callerMicroseconds, op, 'callerMicroseconds', 1_000_000);
    const t = uint(threadMicroseconds, op, 'threadMicroseconds', 1_000_000);
    this.#runner.setSpin(c * 1000, t * 1000);
  }

  /** True while an async `run()` is in flight. */
  get running(): boolean {
    return this.#pending !== undefined;
  }

  /** The kvm_run mapping, zero-copy (for raw access; exits are decoded from it). */
  get kvmRun(): Buffer {
    return this.#run;
  }

  #check(op: string): number {
    if (this.#fd < 0) throw closedError(`vCPU ${this.id}`, op);
    return this.#fd;
  }

  /**
   * Like #check, and refuses while `run()` is in flight: the kernel serializes vCPU
   * ioctls, so this one would block the event loop until the guest exits (and
   * nothing could kick it).
   */
  #idle(op: string): number {
    const fd = this.#check(op);
    if (this.#pending)
      throw new StateError('ERR_BUSY', `${op}: vCPU ${this.id} is running; kick() it and await run() first`);
    return fd;
  }

  /**
   * Like #idle, for calls that replace vCPU state. After an I/O, MMIO, MSR or
   * hypercall exit the kernel finishes the instruction on the next KVM_RUN, on
   * whatever state the vCPU has then: finish it now (KVM_RUN with immediate_exit, the
   * guest runs no further), so new registers are not corrupted by the old instruction.
   */
  #mutating(op: string): number {
    const fd = this.#idle(op);
    if (!this.#needsCompletion) return fd;
    const errno = this.#runner.completePending();
    this.#needsCompletion = false;
    if (errno === EINTR) return fd;
    if (errno !== 0)
      throw explain(new KvmError({ errno, syscall: 'ioctl', ioctl: 'KVM_RUN' }), `${op}: completing the previous exit`);
    // The instruction went on to another exit (string I/O that needs more rounds).
    const exit = decodeRun(this.#run, 0);
    this.#needsCompletion = COMPLETED_ON_NEXT_RUN.has(exit.rawReason);
    throw Object.assign(
      new StateError(
        'ERR_BUSY',
        `${op}: the instruction of the previous exit is not finished (it exited again with '${exit.reason}'); handle that exit (see error.exit) and run the vCPU before replacing its state`,
      ),
      { exit },
    );
  }

  /** KVM_GET_REGS. After an I/O or MMIO exit, the instruction it stopped on is not yet finished. */
  getRegs(): Regs {
    const fd = this.#idle('vcpu.getRegs');
    native.getRegs(fd, this.#regs);
    const out = {} as Regs;
    regNames.forEach((n, i) => (out[n] = this.#regs.readBigUInt64LE(8 * i)));
    return out;
  }

  /** KVM_SET_REGS. Fields not given keep their current values. */
  setRegs(regs: Partial<Regs>): void {
    const op = 'vcpu.setRegs';
    const fd = this.#mutating(op);
    if (regs === null || typeof regs !== 'object')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: regs must be an object`);
    native.getRegs(fd, this.#regs);
    for (const [k, v] of Object.entries(regs)) {
      const i = regNames.indexOf(k as (typeof regNames)[number]);
      if (i < 0) throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: unknown register '${k}'`);
      this.#regs.writeBigUInt64LE(u64(v, op, k), 8 * i);
    }
    try {
      native.setRegs(fd, this.#regs);
    } catch (e) {
      throw explain(e, op);
    }
  }

  /** KVM_GET_SREGS. */
  getSregs(): Sregs {
    native.getSregs(this.#idle('vcpu.getSregs'), this.#sregs);
    return decodeSregs(this.#sregs);
  }

  /** KVM_SET_SREGS. Fields not given keep their current values (segments merge field by field). */
  setSregs(sregs: Partial<{ [K in keyof Sregs]: Sregs[K] extends object ? Partial<Sregs[K]> : Sregs[K] }>): void {
    const op = 'vcpu.setSregs';
    const fd = this.#mutating(op);
    if (sregs === null || typeof sregs !== 'object')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: sregs must be an object`);
    native.getSregs(fd, this.#sregs);
    const current = decodeSregs(this.#sregs) as unknown as Record<string, unknown>;
    for (const [k, v] of Object.entries(sregs)) {
      if (!(k in current)) throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: unknown field '${k}'`);
      current[k] = checkSregsField(op, k, current[k], v);
    }
    encodeSregs(current as unknown as Sregs, this.#sregs);
    try {
      native.setSregs(fd, this.#sregs);
    } catch (e) {
      throw explain(e, op, { EINVAL: 'the kernel rejected the special register state (inconsistent CR0/CR4/EFER or segments)' });
    }
  }

  /** KVM_GET_FPU. */
  getFpu(): Fpu {
    const b = Buffer.alloc(FPU_SIZE);
    native.getFpu(this.#idle('vcpu.getFpu'), b);
    return {
      fpr: Array.from({ length: 8 }, (_, i) => Buffer.from(b.subarray(16 * i, 16 * i + 16))),
      fcw: b.readUInt16LE(128),
      fsw: b.readUInt16LE(130),
      ftwx: b[132]!,
      lastOpcode: b.readUInt16LE(134),
      lastIp: b.readBigUInt64LE(136),
      lastDp: b.readBigUInt64LE(144),
      xmm: Array.from({ length: 16 }, (_, i) => Buffer.from(b.subarray(152 + 16 * i, 168 + 16 * i))),
      mxcsr: b.readUInt32LE(408),
    };
  }

  /** KVM_SET_FPU. Fields not given keep their current values. */
  setFpu(fpu: Partial<Fpu>): void {
    const op = 'vcpu.setFpu';
    const fd = this.#mutating(op);
    if (fpu === null || typeof fpu !== 'object') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: fpu must be an object`);
    const f = { ...this.getFpu(), ...fpu };
    for (const [k, max] of [['fcw', 0xffff], ['fsw', 0xffff], ['ftwx', 0xff], ['lastOpcode', 0xffff], ['mxcsr', 0xffffffff]] as const)
      f[k] = uint(f[k], op, k, max);
    f.lastIp = u64(f.lastIp, op, 'lastIp');
    f.lastDp = u64(f.lastDp, op, 'lastDp');
    for (const [k, n] of [['fpr', 8], ['xmm', 16]] as const)
      if (!Array.isArray(f[k]) || f[k].length !== n || !f[k].every((r) => r instanceof Uint8Array && r.length === 16))
        throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: ${k} must be ${n} buffers of 16 bytes`);
    const b = Buffer.alloc(FPU_SIZE);
    f.fpr.forEach((r, i) => b.set(r.subarray(0, 16), 16 * i));
    b.writeUInt16LE(f.fcw, 128);
    b.writeUInt16LE(f.fsw, 130);
    b[132] = f.ftwx;
    b.writeUInt16LE(f.lastOpcode, 134);
    b.writeBigUInt64LE(f.lastIp, 136);
    b.writeBigUInt64LE(f.lastDp, 144);
    f.xmm.forEach((r, i) => b.set(r.subarray(0, 16), 152 + 16 * i));
    b.writeUInt32LE(f.mxcsr, 408);
    native.setFpu(fd, b);
  }

  /** KVM_GET_CPUID2: the CPUID table this vCPU shows its guest. */
  getCpuid(): CpuidEntry[] {
    const op = 'vcpu.getCpuid';
    const fd = this.#idle(op);
    try {
      return decodeCpuid(native.getCpuid(fd));
    } catch (e) {
      throw explain(e, op);
    }
  }

  /**
   * KVM_SET_CPUID2: the CPUID table the guest sees. Once the vCPU has run, the kernel
   * only accepts the table it already has (EINVAL otherwise): set it before the first run.
   *
   * @example
   * vcpu.setCpuid(withCpuidLeaf(kvm.getSupportedCpuid(), 0x40000000, 0, { ebx: 0x4b4d564b }));
   */
  setCpuid(entries: readonly CpuidEntry[]): void {
    const op = 'vcpu.setCpuid';
    const words = encodeCpuid(op, entries);
    const fd = this.#mutating(op);
    try {
      native.setCpuid(fd, words);
    } catch (e) {
      throw explain(e, `${op}(${entries.length} entries)`, {
        EINVAL: 'the kernel refused the table: after the first KVM_RUN only an identical table is accepted, or an entry is inconsistent',
        E2BIG: 'too many entries',
      });
    }
  }

  // --- MSRs, local APIC, MP state, guest debugging -----------------------------------------

  /**
   * KVM_GET_MSRS: the values of the MSRs `indices` (at most 255), in order. KVM
   * reads them in order and stops at the first it cannot; that is an
   * {@link MsrError} saying which, with the values read before it.
   *
   * @example
   * const [cs] = vcpu.getMsrs([Msr.SysenterCs]);   // { index: 0x174, data: 0n }
   */
  getMsrs(indices: readonly number[]): MsrEntry[] {
    const op = 'vcpu.getMsrs';
    const list = checkMsrIndices(op, indices);
    const fd = this.#idle(op);
    const data = new BigUint64Array(list.length);
    let n: number;
    try {
      n = native.getMsrs(fd, list, data);
    } catch (e) {
      throw explain(e, `${op}(${list.length} MSRs)`, { E2BIG: 'too many MSRs in one call' });
    }
    const entries = msrEntries(list, data, n);
    if (n < list.length) throw new MsrError(op, 'read', list.length, entries, list[n]!);
    return entries;
  }

  /**
   * KVM_SET_MSRS: writes the MSRs (at most 255), in order, and returns how many the
   * kernel wrote (all of them). KVM stops at the first it refuses: that is an
   * {@link MsrError} naming the MSR, with `applied` counting the ones written before
   * it (those stay written).
   *
   * @example
   * vcpu.setMsrs([{ index: Msr.SysenterCs, data: 0x10n }]);   // 1
   */
  setMsrs(entries: ReadonlyArray<{ index: number; data: number | bigint }>): number {
    const op = 'vcpu.setMsrs';
    const [indices, data] = checkMsrEntries(op, entries);
    const fd = this.#mutating(op);
    let n: number;
    try {
      n = native.setMsrs(fd, indices, data);
    } catch (e) {
      throw explain(e, `${op}(${indices.length} MSRs)`, { E2BIG: 'too many MSRs in one call' });
    }
    if (n < indices.length) throw new MsrError(op, 'write', indices.length, msrEntries(indices, data, n), indices[n]!);
    return n;
  }

  /**
   * KVM_GET_LAPIC: this vCPU's local APIC registers (needs the in-kernel irqchip).
   *
   * @example
   * const lapic = vcpu.getLapic();
   * lapic.id; lapic.lvt('lint0'); lapic.bytes;
   */
  getLapic(): LapicState {
    const op = 'vcpu.getLapic';
    const fd = this.#idle(op);
    this.vm.requireIrqchip(op, 'local APICs are part of the in-kernel irqchip');
    const state = new LapicState();
    try {
      native.getLapic(fd, state.bytes);
    } catch (e) {
      throw explain(e, op, { EINVAL: 'the vCPU has no in-kernel local APIC', ENXIO: 'the vCPU has no in-kernel local APIC' });
    }
    return state;
  }

  /**
   * KVM_SET_LAPIC: replaces this vCPU's local APIC registers (a {@link LapicState},
   * or its 1024 raw bytes). Needs the in-kernel irqchip.
   *
   * @example
   * const lapic = vcpu.getLapic();
   * lapic.setLvt('lint0', { masked: true });
   * vcpu.setLapic(lapic);
   */
  setLapic(state: LapicState | Uint8Array): void {
    const op = 'vcpu.setLapic';
    let bytes: Uint8Array;
    if (state instanceof LapicState) bytes = state.bytes;
    else if (state instanceof Uint8Array) {
      if (state.length !== LAPIC_STATE_SIZE)
        throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: state must be ${LAPIC_STATE_SIZE} bytes (struct kvm_lapic_state), got ${state.length}`);
      bytes = state;
    } else throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: state must be a LapicState or a Uint8Array of ${LAPIC_STATE_SIZE} bytes`);
    const fd = this.#mutating(op);
    this.vm.requireIrqchip(op, 'local APICs are part of the in-kernel irqchip');
    try {
      native.setLapic(fd, bytes);
    } catch (e) {
      throw explain(e, op, { EINVAL: 'the kernel refused the register page (an APIC ID or mode it does not accept)' });
    }
  }

  /**
   * KVM_GET_MP_STATE: what the vCPU is doing, by name (`'runnable'`, `'halted'`,
   * `'uninitialized'` for an application processor awaiting INIT, ...).
   *
   * @example
   * vcpu.getMpState();   // 'runnable'
   */
  getMpState(): MpStateName {
    const op = 'vcpu.getMpState';
    const fd = this.#idle(op);
    this.vm.requireCap(Cap.MpState, op);
    let n: number;
    try {
      n = native.getMpState(fd);
    } catch (e) {
      throw explain(e, op);
    }
    const name = MP_STATE_NAMES.find((k) => MpState[k] === n);
    if (!name) throw new StateError('ERR_UNKNOWN_STATE', `${op}: KVM_GET_MP_STATE reported state ${n}, which this library does not know`);
    return name;
  }

  /**
   * KVM_SET_MP_STATE. x86 takes `'runnable'`, `'uninitialized'`, `'init-received'`,
   * `'halted'`, `'sipi-received'` and `'ap-reset-hold'`; all but `'runnable'` need the
   * in-kernel irqchip (its local APIC is what wakes the vCPU).
   *
   * @example
   * vcpu.setMpState('halted');   // the vCPU waits for an interrupt
   */
  setMpState(state: MpStateName): void {
    const op = 'vcpu.setMpState';
    if (typeof state !== 'string' || !(state in MpState))
      throw new (typeof state === 'string' ? ArgumentRangeError : ArgumentTypeError)(
        typeof state === 'string' ? 'ERR_INVALID_ARG_VALUE' : 'ERR_INVALID_ARG_TYPE',
        `${op}: state must be one of ${X86_MP_STATES.map((n) => `'${n}'`).join(', ')}, got ${String(state)}`,
      );
    if (!X86_MP_STATES.includes(state))
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: '${state}' is not an x86 MP state (x86 takes ${X86_MP_STATES.map((n) => `'${n}'`).join(', ')})`);
    const fd = this.#mutating(op);
    this.vm.requireCap(Cap.MpState, op);
    if (state !== 'runnable') this.vm.requireIrqchip(op, `MP state '${state}' is kept by the in-kernel local APIC`);
    try {
      native.setMpState(fd, MpState[state]);
    } catch (e) {
      throw explain(e, `${op}('${state}')`, { EINVAL: 'the kernel does not allow this state now (an INIT or SMI is pending, or no in-kernel local APIC)' });
    }
  }

  /**
   * KVM_SET_GUEST_DEBUG: single-stepping (a `debug` exit after each instruction,
   * exception 1 with DR6.BS), software breakpoints (guest `int3` becomes a `debug`
   * exit, exception 3) and up to four hardware breakpoints (DR0..DR3; a hit is a
   * `debug` exit, exception 1). `setGuestDebug({})` turns it all off. The control
   * bits must be ones KVM_CAP_SET_GUEST_DEBUG2 lists, where the kernel reports it.
   *
   * @example
   * vcpu.setGuestDebug({ singleStep: true });
   * const exit = await vcpu.run();   // { reason: 'debug', exception: 1, pc: ... }
   * vcpu.setGuestDebug({ hardwareBreakpoints: [{ address: 0x1008n, type: 'exec' }] });
   */
  setGuestDebug(options: GuestDebugOptions): void {
    const op = 'vcpu.setGuestDebug';
    const { control, debugreg } = encodeGuestDebug(op, options);
    const fd = this.#idle(op);
    this.vm.requireCap(Cap.SetGuestDebug, op);
    const valid = this.vm.cap(Cap.SetGuestDebug2);
    if (valid > 0 && (control & ~valid) !== 0)
      throw new UnsupportedError(capName(Cap.SetGuestDebug2), valid, `${op} with control bits ${hex(control)}`);
    try {
      native.setGuestDebug(fd, control, debugreg);
    } catch (e) {
      throw explain(e, op, {
        EINVAL: 'the kernel does not accept these control bits or debug registers',
        EBUSY: 'an exception is pending in the vCPU',
      });
    }
  }

  /**
   * KVM_ENABLE_CAP on the vCPU fd. (VM-wide capabilities such as
   * KVM_CAP_EXIT_HYPERCALL are enabled with `vm.enableCap`.)
   */
  enableCap(cap: number, args: ReadonlyArray<number | bigint> = [], flags = 0): void {
    const op = 'vcpu.enableCap';
    enableCapOn(this.#idle(op), op, cap, args, flags, {
      EINVAL: 'the capability or its arguments are not supported by this vCPU',
    });
  }

  #decode(errno: number, op: string): VcpuExit {
    const exit = decodeRun(this.#run, errno);
    this.#needsCompletion = COMPLETED_ON_NEXT_RUN.has(exit.rawReason) && errno === 0;
    if (exit.reason === 'error') {
      this.#needsCompletion = false;
      throw explain(new KvmError({ errno, syscall: 'ioctl', ioctl: 'KVM_RUN' }), `${op} (vCPU ${this.id})`, {
        EFAULT: 'the guest touched memory whose userspace mapping is gone or inaccessible',
        ENOEXEC: 'the vCPU state is invalid for running',
        ENOSPC:
          this.vm.slots.length === 0
            ? 'the VM has no memory slot; add one covering the guest\'s code (vm.addMemorySlot) before running'
            : 'the kernel has no room for the guest\'s page tables or memory state',
        EINVAL: 'the vCPU state is invalid for running (registers, segments or CPUID inconsistent)',
      });
    }
    return exit;
  }

  #onExit(errno: number): void {
    const pending = this.#pending;
    this.#pending = undefined;
    if (!pending) return;
    pending.cleanup();
    if (this.#fd < 0) {
      pending.reject(closedError(`vCPU ${this.id}`, 'vcpu.run'));
      return;
    }
    let exit: VcpuExit;
    try {
      exit = this.#decode(errno, 'vcpu.run');
    } catch (e) {
      pending.reject(e);
      return;
    }
    // Stopped for a timeout or an abort (not an exit of the guest's own): say so.
    if (pending.stop && exit.reason === 'intr') pending.reject(pending.stop);
    else pending.resolve(exit);
  }

  /**
   * KVM_RUN on the vCPU's own thread. Resolves with the decoded exit; the event loop
   * keeps running meanwhile. `kick()` makes it return promptly with an `intr` exit.
   * With `timeoutMs` or `signal`, the vCPU is kicked when the time is up (or the
   * signal aborts) and the promise rejects with a {@link TimeoutError} (or an
   * {@link AbortError}); the guest is stopped where it was and can run again.
   */
  run(options?: RunOptions): Promise<VcpuExit> {
    const op = 'vcpu.run';
    let o: RunOptions;
    try {
      o = runOptions(op, options);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.#fd < 0) return Promise.reject(closedError(`vCPU ${this.id}`, op));
    if (this.#pending) return Promise.reject(new StateError('ERR_BUSY', `${op}: vCPU ${this.id} is already running`));
    const signal = o.signal;
    if (signal?.aborted) return Promise.reject(new AbortError(op, signal.reason));
    const errno = this.#runner.run();
    if (errno !== undefined) {
      // The exit arrived within the hand-off spin window.
      try {
        return Promise.resolve(this.#decode(errno, op));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return new Promise<VcpuExit>((resolve, reject) => {
      const pending: PendingRun = { resolve, reject, stop: undefined, cleanup: NO_CLEANUP };
      if (o.timeoutMs !== undefined || signal) {
        const stop = (error: Error) => {
          if (pending.stop || this.#pending !== pending) return;
          pending.stop = error;
          this.#runner.kick();
        };
        const timer = o.timeoutMs !== undefined ? setTimeout(() => stop(new TimeoutError(op, o.timeoutMs!)), o.timeoutMs) : undefined;
        const onAbort = () => stop(new AbortError(op, signal!.reason));
        signal?.addEventListener('abort', onAbort, { once: true });
        pending.cleanup = () => {
          if (timer !== undefined) clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
        };
      }
      this.#pending = pending;
    });
  }

  /**
   * KVM_RUN on the calling thread (blocks it until the guest exits). With
   * `timeoutMs`, a guest still running then is stopped and a {@link TimeoutError}
   * thrown; the vCPU can run again. A worker blocked here still terminates promptly.
   */
  runSync(options?: { timeoutMs?: number }): VcpuExit {
    const op = 'vcpu.runSync';
    const o = runOptions(op, options);
    if ((options as RunOptions | undefined)?.signal !== undefined)
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: options.signal cannot stop a synchronous run (nothing else runs on this thread); use run() or timeoutMs`);
    this.#check(op);
    if (this.#pending) throw new StateError('ERR_BUSY', `${op}: vCPU ${this.id} is already running on its thread`);
    const result = this.#runner.runSync(o.timeoutMs !== undefined ? Math.ceil(o.timeoutMs * 1e6) : 0);
    if (result === native.runTimedOut) {
      this.#needsCompletion = false;
      throw new TimeoutError(op, o.timeoutMs!);
    }
    return this.#decode(result, op);
  }

  /**
   * Stops a running `run()` promptly: it resolves with an `intr` exit. Returns false
   * when nothing was running.
   */
  kick(): boolean {
    if (this.#fd < 0 || !this.#pending) return false;
    return this.#runner.kick();
  }

  /**
   * Runs until the guest halts, a handler returns `'stop'`, an exit has no handler,
   * or `maxExits` is reached. Returns the exit that ended the loop. `timeoutMs` and
   * `signal` bound the whole loop (handlers included): when they end it, the vCPU is
   * kicked and the promise rejects with a {@link TimeoutError} or {@link AbortError}.
   */
  async runUntil(handlers: RunHandlers = {}): Promise<VcpuExit> {
    const op = 'vcpu.runUntil';
    if (handlers === null || typeof handlers !== 'object')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: handlers must be an object`);
    for (const key of ['io', 'mmio', 'hypercall', 'memoryFault'] as const)
      if (handlers[key] !== undefined && typeof handlers[key] !== 'function')
        throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: handlers.${key} must be a function`);
    if (handlers.sync !== undefined && typeof handlers.sync !== 'boolean')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: handlers.sync must be a boolean`);
    const max = handlers.maxExits === undefined ? Infinity : uint(handlers.maxExits, op, 'handlers.maxExits', Number.MAX_SAFE_INTEGER);
    if (max === 0) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: handlers.maxExits must be at least 1`);
    const o = runOptions(op, { signal: handlers.signal, timeoutMs: handlers.timeoutMs });
    if (handlers.sync && o.signal)
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: signal cannot stop a synchronous loop (sync: true); use timeoutMs`);
    const deadline = o.timeoutMs !== undefined ? Date.now() + o.timeoutMs : Infinity;
    const remaining = (): number | undefined => {
      if (deadline === Infinity) return undefined;
      const left = deadline - Date.now();
      if (left <= 0) throw new TimeoutError(op, o.timeoutMs!);
      return left;
    };
    for (let n = 0; ; n++) {
      if (o.signal?.aborted) throw new AbortError(op, o.signal.reason);
      let exit: VcpuExit;
      try {
        const left = remaining();
        exit = handlers.sync
          ? this.runSync(left === undefined ? undefined : { timeoutMs: left })
          : await this.run({ ...(left === undefined ? {} : { timeoutMs: left }), ...(o.signal ? { signal: o.signal } : {}) });
      } catch (e) {
        if (e instanceof TimeoutError) throw new TimeoutError(op, o.timeoutMs!);
        if (e instanceof AbortError) throw new AbortError(op, o.signal?.reason);
        throw e;
      }
      if (n + 1 >= max) return exit;
      let result: void | 'stop' = undefined;
      switch (exit.reason) {
        case 'io':
          if (!handlers.io) return exit;
          result = await handlers.io(exit);
          break;
        case 'mmio':
          if (!handlers.mmio) return exit;
          result = await handlers.mmio(exit);
          break;
        case 'hypercall':
          result = handlers.hypercall ? await handlers.hypercall(exit) : await this.#defaultHypercall(exit);
          break;
        case 'memory-fault':
          if (handlers.memoryFault) result = await handlers.memoryFault(exit);
          else await this.vm.convertOnMemoryFault(exit);
          break;
        default:
          return exit;
      }
      if (result === 'stop') return exit;
    }
  }

  async #defaultHypercall(exit: HypercallExit): Promise<void | 'stop'> {
    if (exit.nr !== BigInt(Hypercall.MapGpaRange)) return 'stop';
    const [gpa = 0n, pages = 0n, attrs = 0n] = exit.args;
    await this.vm.convert(gpa, pages * BigInt(PAGE_SIZE), attrs & MAP_GPA_RANGE_ENCRYPTED ? 'private' : 'shared');
    exit.setReturn(0n);
  }

  /**
   * KVM_PRE_FAULT_MEMORY: maps `[guestPhysAddr, +size)` into the guest's page tables
   * ahead of use. Needs KVM_CAP_PRE_FAULT_MEMORY.
   */
  preFault(guestPhysAddr: number | bigint, size: number | bigint): void {
    const op = 'vcpu.preFault';
    const gpa = u64(guestPhysAddr, op, 'guestPhysAddr');
    const n = u64(size, op, 'size');
    if (n === 0n) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: size must be greater than 0`);
    if (gpa % BigInt(PAGE_SIZE) || n % BigInt(PAGE_SIZE))
      throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: range ${hex(gpa)} + ${hex(n)} must be page-aligned (${PAGE_SIZE})`);
    if (gpa + n > 1n << 64n) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: range wraps past 2^64`);
    const fd = this.#idle(op);
    const have = this.vm.cap(Cap.PreFaultMemory);
    if (have <= 0) throw new UnsupportedError(capName(Cap.PreFaultMemory), have, op);
    // The kernel stops at the first page no slot covers (ENOENT) after faulting the
    // ones before it: refuse such a range whole, naming the gap.
    const gap = this.vm.slotTable.cover(0, gpa, n).find((p) => !p.slot);
    if (gap)
      throw new StateError(
        'ERR_UNMAPPED_GPA',
        `${op}: GPA ${hex(gap.guestPhysAddr)}..${hex(gap.guestPhysAddr + gap.size)} is not covered by any memory slot`,
      );
    try {
      native.preFaultMemory(fd, gpa, n);
    } catch (e) {
      throw explain(e, `${op}(${hex(gpa)}, ${hex(n)})`, {
        ENOENT: 'part of the range has no memory slot (one made outside this library was removed?)',
        EIO: 'the vCPU is in a mode that cannot map the range (e.g. SMM), or the range is not mappable',
      });
    }
  }

  /**
   * Closes the vCPU. Safe while `run()` is in flight: the guest is kicked, the thread
   * joined, and the pending promise rejects with ERR_CLOSED. Idempotent.
   */
  close(): void {
    if (this.#fd < 0) return;
    const pending = this.#pending;
    this.#pending = undefined;
    pending?.cleanup();
    this.#runner.close();
    this.#views.releaseAll();
    closed(this.#fdCell);
    native.close(this.#fd);
    this.#fd = -1;
    this.vm.forgetVcpu(this);
    pending?.reject(closedError(`vCPU ${this.id}`, 'vcpu.run'));
  }

  /** Same as `close()`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
