/// <reference types="node" preserve="true" />
/**
 * guest-memfd: drive the real Linux KVM guest memory interfaces from Node.js.
 * @packageDocumentation
 */
export { Kvm, defaultKvmPath, type CreateVmOptions } from './kvm/kvm';
export { Vm, type CreatePitOptions } from './kvm/vm';
export { EventFd, type EventFdOptions, type EventFdWaitOptions, type EventFdRegistration } from './kvm/eventfd';
export {
  IRQCHIP_GSI_COUNT,
  type IrqfdOptions,
  type IrqfdBinding,
  type IoeventfdOptions,
  type IoeventfdBinding,
} from './kvm/eventfd-bindings';
export { Msr, MsrError, MAX_MSRS_PER_CALL, type MsrEntry } from './kvm/msr';
export {
  LapicState,
  LapicRegister,
  LAPIC_STATE_SIZE,
  type LvtName,
  type LvtEntry,
  type LvtPatch,
  type LvtDeliveryMode,
  type LvtTimerMode,
} from './kvm/lapic';
export { GuestDebugFlag, type GuestDebugOptions, type HardwareBreakpoint, type BreakpointType } from './kvm/guest-debug';
export { GuestMemfd, type GuestMemfdOptions } from './memory/guest-memfd';
export { Memfd, Seal, type SealName, type MemfdOptions, type HugePageSize } from './memory/memfd';
export { MemoryFile, type FileStat } from './memory/memory-file';
export { MemoryView, type MemoryPolicyInfo } from './memory/memory-view';
export { numaNodes, MemoryPolicyMode, type MemoryPolicy, type MemoryPolicyModeName } from './memory/numa';
export { probeGuestMemfdMapping, type GuestMemfdMappingFeatures, type MappingFeature } from './memory/guest-memfd-probe';
export {
  Cap,
  capName,
  GuestMemfdFlag,
  MemoryAttribute,
  VmType,
  Hypercall,
  type Capabilities,
  type CapName,
  type VmTypeName,
} from './core/caps';
export { KvmError, UnsupportedError, ArgumentTypeError, ArgumentRangeError, StateError, TimeoutError, AbortError } from './core/errors';
export {
  Notifier,
  type NotifierListener,
  type NotifierEvent,
  type Unregister,
  type FileRangeEvent,
  type GpaRangeEvent,
  type BoundRange,
  type InvalidationCause,
  type PopulateCause,
  type ListenerErrorHandler,
} from './events/notifier';
export { PAGE_SIZE } from './core/validate';
export {
  MemorySlot,
  SlotFlag,
  type MemorySlotOptions,
  type UserMemoryRegion2,
  type UserspaceBacking,
  type SlotDescription,
  type SlotUserspace,
} from './memory/memory-slot';
export { GuestMemory } from './memory/guest-memory';
export { DirtyBitmap, type DirtyPage } from './memory/dirty-log';
export { AttributeMap, type AttributeRange, type MemoryState } from './events/attribute-map';
export {
  createMemoryLayout,
  parseLayout,
  renderMemoryMap,
  LayoutSchema,
  LayoutError,
  MemoryLayout,
  type LayoutSpec,
  type MemoryMap,
  type MemoryMapEntry,
} from './memory/layout';
export {
  ConversionError,
  type ConversionResult,
  type ConversionRequest,
  type GpaRange,
  type MemoryFault,
} from './events/conversion';
export { Vcpu, MpState, type MpStateName, type RunOptions, type Regs, type Sregs, type Segment, type Dtable, type Fpu, type RunHandlers, type HandlerResult } from './kvm/vcpu';
export {
  decodeExit,
  ExitReason,
  type VcpuExit,
  type IoExit,
  type MmioExit,
  type HltExit,
  type DebugExit,
  type HypercallExit,
  type MemoryFaultExit,
  type VcpuExitReason,
} from './kvm/exits';
export { loadRealMode, loadLongMode, loadProgram } from './guest/loader';
export { captureOutput, type CaptureOptions, type CapturedOutput } from './guest/console';
export { CpuidFlag, findCpuid, withCpuidLeaf, cpuidHasLongMode, type CpuidEntry } from './kvm/cpuid';
export {
  Assembler,
  AsmValue,
  Mem,
  mem,
  type AssemblerOptions,
  type Condition,
  type ControlRegister,
  type DebugRegister,
  type Displacement,
  type Gpr,
  type Immediate,
  type JumpOptions,
  type MemBuilder,
  type MemFactory,
  type MemSpec,
  type OperandSize,
  type Reg8,
  type Reg16,
  type Reg32,
  type Reg64,
  type RepCondPrefix,
  type RepPrefix,
  type SameSize,
  type Scale,
  type Target,
} from './guest/asm';
export * as guest from './guest/programs';
export type { GuestProgram, LongModeSetup } from './guest/programs';
