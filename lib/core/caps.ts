import { ArgumentRangeError, ArgumentTypeError } from './errors';

/**
 * KVM capability numbers (include/uapi/linux/kvm.h) and the decoding of everything
 * guest-memory related that KVM_CHECK_EXTENSION reports.
 */

/**
 * Capability numbers as the kernel defines them (`KVM_CAP_*`), for
 * `kvm.checkExtension(Cap.GuestMemfd)` and `vm.checkExtension(...)`.
 */
export const Cap = {
  /** KVM_CAP_IRQCHIP: KVM_CREATE_IRQCHIP (in-kernel PIC, IOAPIC and local APICs). */
  Irqchip: 0,
  /** KVM_CAP_USER_MEMORY: KVM_SET_USER_MEMORY_REGION. */
  UserMemory: 3,
  /** KVM_CAP_SET_TSS_ADDR: KVM_SET_TSS_ADDR. */
  SetTssAddr: 4,
  /** KVM_CAP_NR_VCPUS: recommended vCPU count. */
  NrVcpus: 9,
  /** KVM_CAP_NR_MEMSLOTS: memory slots per address space. */
  NrMemslots: 10,
  /** KVM_CAP_MP_STATE: KVM_GET/SET_MP_STATE. */
  MpState: 14,
  /** KVM_CAP_SET_GUEST_DEBUG: KVM_SET_GUEST_DEBUG. */
  SetGuestDebug: 23,
  /** KVM_CAP_IRQ_INJECT_STATUS: KVM_IRQ_LINE_STATUS reports what became of an interrupt. */
  IrqInjectStatus: 26,
  /** KVM_CAP_IRQFD: KVM_IRQFD. */
  Irqfd: 32,
  /** KVM_CAP_PIT2: KVM_CREATE_PIT2. */
  Pit2: 33,
  /** KVM_CAP_IOEVENTFD: KVM_IOEVENTFD. */
  Ioeventfd: 36,
  /** KVM_CAP_SET_IDENTITY_MAP_ADDR: KVM_SET_IDENTITY_MAP_ADDR. */
  SetIdentityMapAddr: 37,
  /** KVM_CAP_MAX_VCPUS. */
  MaxVcpus: 66,
  /** KVM_CAP_READONLY_MEM: KVM_MEM_READONLY slots. */
  ReadonlyMem: 81,
  /** KVM_CAP_IRQFD_RESAMPLE: KVM_IRQFD_FLAG_RESAMPLE (level-triggered irqfds). */
  IrqfdResample: 82,
  /** KVM_CAP_IOEVENTFD_NO_LENGTH: ioeventfds of length 0 (any write to the address). */
  IoeventfdNoLength: 100,
  /** KVM_CAP_MULTI_ADDRESS_SPACE: number of address spaces (SMM on x86). */
  MultiAddressSpace: 118,
  /** KVM_CAP_IMMEDIATE_EXIT: kvm_run.immediate_exit. */
  ImmediateExit: 136,
  /** KVM_CAP_GET_MSR_FEATURES: KVM_GET_MSR_FEATURE_INDEX_LIST and KVM_GET_MSRS on the system fd. */
  GetMsrFeatures: 153,
  /** KVM_CAP_SET_GUEST_DEBUG2: the KVM_GUESTDBG_* control bits KVM_SET_GUEST_DEBUG accepts. */
  SetGuestDebug2: 195,
  /** KVM_CAP_EXIT_HYPERCALL: bitmap of hypercalls that exit to userspace. */
  ExitHypercall: 201,
  /** KVM_CAP_USER_MEMORY2: KVM_SET_USER_MEMORY_REGION2. */
  UserMemory2: 231,
  /** KVM_CAP_MEMORY_FAULT_INFO: KVM_EXIT_MEMORY_FAULT details. */
  MemoryFaultInfo: 232,
  /** KVM_CAP_MEMORY_ATTRIBUTES: attributes KVM_SET_MEMORY_ATTRIBUTES accepts. */
  MemoryAttributes: 233,
  /** KVM_CAP_GUEST_MEMFD: KVM_CREATE_GUEST_MEMFD. */
  GuestMemfd: 234,
  /** KVM_CAP_VM_TYPES: bitmap of VM types KVM_CREATE_VM accepts. */
  VmTypes: 235,
  /** KVM_CAP_PRE_FAULT_MEMORY: KVM_PRE_FAULT_MEMORY. */
  PreFaultMemory: 236,
  /** KVM_CAP_GUEST_MEMFD_FLAGS: guest_memfd flags this VM accepts. */
  GuestMemfdFlags: 244,
} as const;

/** A capability name of {@link Cap}. */
export type CapName = keyof typeof Cap;

const capKernelNames: Record<number, string> = {
  0: 'KVM_CAP_IRQCHIP',
  3: 'KVM_CAP_USER_MEMORY',
  4: 'KVM_CAP_SET_TSS_ADDR',
  9: 'KVM_CAP_NR_VCPUS',
  10: 'KVM_CAP_NR_MEMSLOTS',
  14: 'KVM_CAP_MP_STATE',
  23: 'KVM_CAP_SET_GUEST_DEBUG',
  26: 'KVM_CAP_IRQ_INJECT_STATUS',
  32: 'KVM_CAP_IRQFD',
  33: 'KVM_CAP_PIT2',
  36: 'KVM_CAP_IOEVENTFD',
  37: 'KVM_CAP_SET_IDENTITY_MAP_ADDR',
  66: 'KVM_CAP_MAX_VCPUS',
  81: 'KVM_CAP_READONLY_MEM',
  82: 'KVM_CAP_IRQFD_RESAMPLE',
  100: 'KVM_CAP_IOEVENTFD_NO_LENGTH',
  118: 'KVM_CAP_MULTI_ADDRESS_SPACE',
  136: 'KVM_CAP_IMMEDIATE_EXIT',
  153: 'KVM_CAP_GET_MSR_FEATURES',
  195: 'KVM_CAP_SET_GUEST_DEBUG2',
  201: 'KVM_CAP_EXIT_HYPERCALL',
  231: 'KVM_CAP_USER_MEMORY2',
  232: 'KVM_CAP_MEMORY_FAULT_INFO',
  233: 'KVM_CAP_MEMORY_ATTRIBUTES',
  234: 'KVM_CAP_GUEST_MEMFD',
  235: 'KVM_CAP_VM_TYPES',
  236: 'KVM_CAP_PRE_FAULT_MEMORY',
  244: 'KVM_CAP_GUEST_MEMFD_FLAGS',
};

/**
 * The kernel's name for a capability number, e.g. `'KVM_CAP_GUEST_MEMFD'`
 * (`'KVM_CAP_<n>'` for one this library does not name). `cap` must be an integer
 * 0..2^32-1 (a number or bigint).
 */
export function capName(cap: number): string {
  if (typeof cap !== 'number' && typeof cap !== 'bigint')
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `capName: cap must be a number, got a value of type ${cap === null ? 'null' : typeof cap}`);
  const n = Number(cap);
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff)
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `capName: cap ${String(cap)} is not a capability number (an integer 0..2^32-1)`);
  return Object.hasOwn(capKernelNames, n) ? capKernelNames[n]! : `KVM_CAP_${n}`;
}

/** guest_memfd creation flags (`GUEST_MEMFD_FLAG_*`). */
export const GuestMemfdFlag = {
  /** GUEST_MEMFD_FLAG_MMAP: the file can be mmap()ed by userspace. */
  Mmap: 1n << 0n,
  /** GUEST_MEMFD_FLAG_INIT_SHARED: pages start shared (host-accessible). */
  InitShared: 1n << 1n,
} as const;

/** KVM_SET_MEMORY_ATTRIBUTES attribute bits (`KVM_MEMORY_ATTRIBUTE_*`). */
export const MemoryAttribute = {
  /** Shared: no attribute bit set. */
  Shared: 0n,
  /** KVM_MEMORY_ATTRIBUTE_PRIVATE. */
  Private: 1n << 3n,
} as const;

/** x86 VM types for KVM_CREATE_VM (`KVM_X86_*_VM`). */
export const VmType = {
  /** KVM_X86_DEFAULT_VM: an ordinary VM. */
  default: 0,
  /** KVM_X86_SW_PROTECTED_VM: private memory without hardware protection (for development and testing). */
  'sw-protected': 1,
  /** KVM_X86_SEV_VM: AMD SEV. */
  sev: 2,
  /** KVM_X86_SEV_ES_VM: AMD SEV-ES. */
  'sev-es': 3,
  /** KVM_X86_SNP_VM: AMD SEV-SNP. */
  'sev-snp': 4,
  /** KVM_X86_TDX_VM: Intel TDX. */
  tdx: 5,
} as const;

/** A VM type name accepted by `kvm.createVm({ type })`. */
export type VmTypeName = keyof typeof VmType;

/** Hypercalls (`KVM_HC_*`) that KVM_CAP_EXIT_HYPERCALL can route to userspace. */
export const Hypercall = {
  /** KVM_HC_MAP_GPA_RANGE: the guest asks to convert a range shared/private. */
  MapGpaRange: 12,
} as const;

/** Names the set bits of `value` using `table` (unknown bits as `bit N`). */
function bitNames(value: bigint, table: Record<string, bigint>): string[] {
  const names: string[] = [];
  let rest = value;
  for (const [name, bit] of Object.entries(table)) {
    if (bit !== 0n && (value & bit) === bit) {
      names.push(name);
      rest &= ~bit;
    }
  }
  for (let i = 0n; rest !== 0n; i++, rest >>= 1n) if (rest & 1n) names.push(`bit ${i}`);
  return names;
}

/** Names of GUEST_MEMFD_FLAG_* bits (`'mmap'`, `'init-shared'`, `bit N` for unknown ones). */
export function guestMemfdFlagNames(flags: bigint): string[] {
  return bitNames(flags, { mmap: GuestMemfdFlag.Mmap, 'init-shared': GuestMemfdFlag.InitShared });
}

/**
 * Guest-memory capabilities as one host (or one VM) reports them. Every field comes
 * from KVM_CHECK_EXTENSION; nothing is inferred from the kernel version.
 */
export interface Capabilities {
  /** KVM_CAP_USER_MEMORY2. */
  readonly userMemory2: boolean;
  /** KVM_CAP_GUEST_MEMFD. */
  readonly guestMemfd: boolean;
  /** KVM_CAP_GUEST_MEMFD_FLAGS, raw and named (`'mmap'`, `'init-shared'`). */
  readonly guestMemfdFlags: { readonly raw: bigint; readonly names: readonly string[] };
  /** KVM_CAP_MEMORY_ATTRIBUTES, raw and named (`'private'`). */
  readonly memoryAttributes: { readonly raw: bigint; readonly names: readonly string[] };
  /** KVM_CAP_VM_TYPES as names of {@link VmType}. */
  readonly vmTypes: readonly string[];
  /** KVM_CAP_PRE_FAULT_MEMORY. */
  readonly preFaultMemory: boolean;
  /** KVM_CAP_MEMORY_FAULT_INFO. */
  readonly memoryFaultInfo: boolean;
  /** KVM_CAP_NR_MEMSLOTS. */
  readonly nrMemslots: number;
  /** KVM_CAP_READONLY_MEM. */
  readonly readonlyMem: boolean;
  /** KVM_CAP_MULTI_ADDRESS_SPACE (1 when absent). */
  readonly addressSpaces: number;
  /** KVM_CAP_EXIT_HYPERCALL, raw and named (`'map-gpa-range'`). */
  readonly exitHypercall: { readonly raw: bigint; readonly names: readonly string[] };
  /** The raw KVM_CHECK_EXTENSION answer for each capability above, by kernel name. */
  readonly raw: Readonly<Record<string, number>>;
}

/** Decodes capabilities through a KVM_CHECK_EXTENSION function. @internal */
export function decodeCapabilities(check: (cap: number) => number): Capabilities {
  const raw: Record<string, number> = {};
  const ask = (cap: number): number => {
    const value = check(cap);
    raw[capName(cap)] = value;
    return value;
  };
  const gmemFlags = BigInt(ask(Cap.GuestMemfdFlags));
  const attrs = BigInt(ask(Cap.MemoryAttributes));
  const vmTypes = BigInt(ask(Cap.VmTypes));
  const hypercalls = BigInt(ask(Cap.ExitHypercall));
  const spaces = ask(Cap.MultiAddressSpace);
  return {
    userMemory2: ask(Cap.UserMemory2) > 0,
    guestMemfd: ask(Cap.GuestMemfd) > 0,
    guestMemfdFlags: { raw: gmemFlags, names: guestMemfdFlagNames(gmemFlags) },
    memoryAttributes: { raw: attrs, names: bitNames(attrs, { private: MemoryAttribute.Private }) },
    vmTypes: Object.entries(VmType)
      .filter(([, n]) => (vmTypes >> BigInt(n)) & 1n)
      .map(([name]) => name),
    preFaultMemory: ask(Cap.PreFaultMemory) > 0,
    memoryFaultInfo: ask(Cap.MemoryFaultInfo) > 0,
    nrMemslots: ask(Cap.NrMemslots),
    readonlyMem: ask(Cap.ReadonlyMem) > 0,
    addressSpaces: spaces > 0 ? spaces : 1,
    exitHypercall: {
      raw: hypercalls,
      names: bitNames(hypercalls, { 'map-gpa-range': 1n << BigInt(Hypercall.MapGpaRange) }),
    },
    raw,
  };
}
