/**
 * guest-memfd: drive the real Linux KVM guest memory interfaces from Node.js.
 * @packageDocumentation
 */
export { Kvm, defaultKvmPath, type CreateVmOptions } from './kvm';
export { Vm } from './vm';
export { GuestMemfd, type GuestMemfdOptions } from './guest-memfd';
export { Memfd, Seal, type SealName, type MemfdOptions, type HugePageSize } from './memfd';
export { MemoryFile, type FileStat } from './memory-file';
export { MemoryView } from './memory-view';
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
} from './caps';
export { KvmError, UnsupportedError, ArgumentTypeError, ArgumentRangeError, StateError } from './errors';
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
} from './notifier';
export { PAGE_SIZE } from './validate';
export {
  MemorySlot,
  SlotFlag,
  type MemorySlotOptions,
  type UserMemoryRegion2,
  type UserspaceBacking,
  type SlotDescription,
} from './memory-slot';
export { GuestMemory } from './guest-memory';
export { DirtyBitmap, type DirtyPage } from './dirty-log';
export { AttributeMap, type AttributeRange, type MemoryState } from './attribute-map';
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
} from './layout';
export {
  ConversionError,
  type ConversionResult,
  type ConversionRequest,
  type GpaRange,
  type MemoryFault,
} from './conversion';
export { Vcpu, type Regs, type Sregs, type Segment, type Dtable, type Fpu, type RunHandlers, type HandlerResult } from './vcpu';
export {
  decodeExit,
  ExitReason,
  type VcpuExit,
  type IoExit,
  type MmioExit,
  type HltExit,
  type HypercallExit,
  type MemoryFaultExit,
  type VcpuExitReason,
} from './exits';
export { loadRealMode, loadLongMode, loadProgram } from './guest';
export * as guest from './guest-code';
export type { GuestProgram, LongModeSetup } from './guest-code';
