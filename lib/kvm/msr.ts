/**
 * Model-specific registers: the entries KVM_GET_MSRS / KVM_SET_MSRS carry (struct
 * kvm_msr_entry), names for a few well-known indices, and the error of a partial
 * transfer (KVM handles entries in order and stops at the first it cannot).
 */
import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import { hex, u64, uint } from '../core/validate';

/** Indices of some architectural MSRs (Intel SDM vol. 4, AMD APM vol. 2). */
export const Msr = {
  /** IA32_TIME_STAMP_COUNTER. */
  Tsc: 0x10,
  /** IA32_APIC_BASE. */
  ApicBase: 0x1b,
  /** IA32_SYSENTER_CS. */
  SysenterCs: 0x174,
  /** IA32_SYSENTER_ESP. */
  SysenterEsp: 0x175,
  /** IA32_SYSENTER_EIP. */
  SysenterEip: 0x176,
  /** IA32_PAT. */
  Pat: 0x277,
  /** IA32_EFER. */
  Efer: 0xc0000080,
  /** IA32_STAR: SYSCALL segment selectors. */
  Star: 0xc0000081,
  /** IA32_LSTAR: 64-bit SYSCALL target. */
  Lstar: 0xc0000082,
  /** IA32_FMASK: SYSCALL RFLAGS mask. */
  SyscallMask: 0xc0000084,
  /** IA32_FS_BASE. */
  FsBase: 0xc0000100,
  /** IA32_GS_BASE. */
  GsBase: 0xc0000101,
  /** IA32_KERNEL_GS_BASE. */
  KernelGsBase: 0xc0000102,
  /** IA32_TSC_AUX: what RDTSCP and RDPID return. */
  TscAux: 0xc0000103,
} as const;

/** One MSR as struct kvm_msr_entry carries it. */
export interface MsrEntry {
  /** `index`: the MSR number (ECX of RDMSR/WRMSR). */
  readonly index: number;
  /** `data`: the 64-bit value. */
  readonly data: bigint;
}

/** arch/x86/kvm/x86.c MAX_IO_MSRS: one KVM_GET/SET_MSRS call carries fewer entries than this. */
export const MAX_MSRS_PER_CALL = 255;

/**
 * KVM_GET_MSRS or KVM_SET_MSRS handled only some of the entries: KVM processes them
 * in order and stops at the first it cannot (an MSR it does not know, a value with
 * reserved bits set, one userspace may not write). `applied` counts the entries
 * handled, `index` is the MSR that stopped it, and for a read `entries` holds the
 * values read before it. Entries after the failing one were not attempted.
 */
export class MsrError extends Error {
  /** Always `'ERR_MSR_PARTIAL'`. */
  readonly code = 'ERR_MSR_PARTIAL';
  /** How many entries the kernel handled (read or wrote) before stopping. */
  readonly applied: number;
  /** The MSR the kernel stopped at. */
  readonly index: number;
  /** Its position in the request. */
  readonly position: number;
  /** For a read: the entries read before the failure (for a write: those written). */
  readonly entries: readonly MsrEntry[];

  /**
   * `operation` names the call, `direction` what it did, `requested` how many
   * entries it asked for, `entries` those handled, `failed` the MSR it stopped at.
   */
  constructor(operation: string, direction: 'read' | 'write', requested: number, entries: readonly MsrEntry[], failed: number) {
    super(
      `${operation}: the kernel ${direction === 'write' ? 'wrote' : 'read'} ${entries.length} of ${requested} MSRs and stopped at MSR ${hex(failed)} (entry ${entries.length}): ` +
        (direction === 'write'
          ? 'KVM does not know it, the value has reserved bits set, or userspace may not write it'
          : 'KVM does not know it (see kvm.msrIndexList()) or cannot read it for this vCPU') +
        '; the entries after it were not attempted',
    );
    this.name = 'MsrError';
    this.applied = entries.length;
    this.index = failed;
    this.position = entries.length;
    this.entries = entries;
  }
}

/** Checks a list of MSR indices. @internal */
export function checkMsrIndices(op: string, indices: unknown): Uint32Array {
  if (!Array.isArray(indices))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: indices must be an array of MSR numbers`);
  if (indices.length > MAX_MSRS_PER_CALL)
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${indices.length} MSRs exceed the ${MAX_MSRS_PER_CALL} KVM takes in one call`);
  return Uint32Array.from(indices, (v, i) => uint(v, op, `indices[${i}]`, 0xffffffff));
}

/** Checks MSR entries to write: `[indices, data]` for the native call. @internal */
export function checkMsrEntries(op: string, entries: unknown): [Uint32Array, BigUint64Array] {
  if (!Array.isArray(entries))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: entries must be an array of { index, data }`);
  if (entries.length > MAX_MSRS_PER_CALL)
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${entries.length} MSRs exceed the ${MAX_MSRS_PER_CALL} KVM takes in one call`);
  const indices = new Uint32Array(entries.length);
  const data = new BigUint64Array(entries.length);
  entries.forEach((e: unknown, i) => {
    if (e === null || typeof e !== 'object')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: entries[${i}] must be an object { index, data }`);
    const entry = e as Record<string, unknown>;
    indices[i] = uint(entry['index'], op, `entries[${i}].index`, 0xffffffff);
    data[i] = u64(entry['data'], op, `entries[${i}].data`);
  });
  return [indices, data];
}

/** Pairs indices with the values read. @internal */
export function msrEntries(indices: Uint32Array, data: BigUint64Array, count: number): MsrEntry[] {
  const out: MsrEntry[] = [];
  for (let i = 0; i < count; i++) out.push({ index: indices[i]!, data: data[i]! });
  return out;
}
