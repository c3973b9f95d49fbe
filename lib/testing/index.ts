/// <reference types="node" preserve="true" />
/**
 * `guest-memfd/testing`: what a test suite on a KVM-capable runner reaches for first.
 * Whether KVM is usable here (and why not), which VM type offers what a test needs
 * (found by asking the kernel, never by its version), skip reasons for test titles,
 * and a check that a test left no fd, mapping or vCPU thread behind.
 *
 * This module does not depend on a test framework. The vitest helpers built on it
 * (`describeKvm`, `testKvm`, fixtures) are in the ES module form of this entry:
 * `import { testKvm } from 'guest-memfd/testing'` from an ES module or a vitest file.
 *
 * @packageDocumentation
 */
import { readdirSync, readFileSync } from 'node:fs';
import { Cap, GuestMemfdFlag, MemoryAttribute, VmType, type VmTypeName } from '../core/caps';
import { ArgumentRangeError, ArgumentTypeError, TimeoutError } from '../core/errors';
import { hex } from '../core/validate';
import { native } from '../native';
import { defaultKvmPath, Kvm } from '../kvm/kvm';
import type { Vm } from '../kvm/vm';

/** What a test needs from a VM. Every field is answered by the running kernel. */
export interface VmRequirements {
  /** Only these VM types qualify (default: every type the host offers, `'default'` first). */
  readonly type?: VmTypeName | readonly VmTypeName[];
  /** KVM_CAP_GUEST_MEMFD: the VM can create guest_memfd files. */
  readonly guestMemfd?: boolean;
  /** GUEST_MEMFD_FLAG_MMAP in KVM_CAP_GUEST_MEMFD_FLAGS (implies `guestMemfd`). */
  readonly mmap?: boolean;
  /** GUEST_MEMFD_FLAG_INIT_SHARED in KVM_CAP_GUEST_MEMFD_FLAGS (implies `guestMemfd`). */
  readonly initShared?: boolean;
  /** KVM_MEMORY_ATTRIBUTE_PRIVATE in KVM_CAP_MEMORY_ATTRIBUTES: shared/private conversion (implies `guestMemfd`). */
  readonly privateMemory?: boolean;
  /** KVM_CAP_MEMORY_FAULT_INFO: KVM_EXIT_MEMORY_FAULT exits. */
  readonly memoryFaultInfo?: boolean;
  /** KVM_CAP_PRE_FAULT_MEMORY: `vcpu.preFault`. */
  readonly preFault?: boolean;
  /** KVM_CAP_READONLY_MEM: read-only slots. */
  readonly readonlyMemory?: boolean;
  /** KVM_CAP_USER_MEMORY2. */
  readonly userMemory2?: boolean;
  /**
   * A guest `vmcall` of KVM_HC_MAP_GPA_RANGE exits to userspace with
   * KVM_CAP_EXIT_HYPERCALL enabled. Found by running one (some KVM backends list the
   * capability but never exit).
   */
  readonly hypercallExit?: boolean;
  /** KVM_CAP_IRQCHIP: `vm.createIrqchip()` (in-kernel PIC, IOAPIC and local APICs). */
  readonly irqchip?: boolean;
  /** KVM_CAP_IRQFD: `vm.irqfd`. */
  readonly irqfd?: boolean;
  /** KVM_CAP_IOEVENTFD: `vm.ioeventfd`. */
  readonly ioeventfd?: boolean;
  /** KVM_CAP_SET_GUEST_DEBUG: `vcpu.setGuestDebug` (single-stepping). */
  readonly guestDebug?: boolean;
  /**
   * A hardware execution breakpoint (`setGuestDebug({ hardwareBreakpoints })`) ends
   * KVM_RUN with a `debug` exit. Found by running one (emulated CPUs may lack it).
   */
  readonly hardwareBreakpoints?: boolean;
  /**
   * A guest `int3` with `setGuestDebug({ softwareBreakpoints: true })` ends KVM_RUN
   * with a `debug` exit. Found by running one.
   */
  readonly softwareBreakpoints?: boolean;
  /** Raw capabilities: each must report at least the given value on the VM fd. */
  readonly capabilities?: Readonly<Record<number, number>>;
}

/** The outcome of {@link findVmType}: a type that qualifies, or why none does. */
export type VmTypeMatch =
  | { readonly type: VmTypeName; readonly reason?: undefined }
  | { readonly type?: undefined; readonly reason: string };

const unusable = new Map<string, string | undefined>();

/**
 * Why KVM cannot be used at `path` (default `$GMEM_KVM_PATH` or `/dev/kvm`), or
 * undefined when it can: opening it and creating a VM both work. Asked once per path.
 */
export function kvmUnavailable(path: string = defaultKvmPath()): string | undefined {
  if (typeof path !== 'string') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `kvmUnavailable: path must be a string`);
  if (unusable.has(path)) return unusable.get(path);
  let reason: string | undefined;
  try {
    using kvm = Kvm.open(path);
    kvm.createVm().close();
  } catch (e) {
    reason = `no usable KVM at ${path}: ${e instanceof Error ? e.message : String(e)}`;
  }
  unusable.set(path, reason);
  return reason;
}

function typesOffered(kvm: Kvm): VmTypeName[] {
  const bits = kvm.checkExtension(Cap.VmTypes) || 1;
  return (Object.keys(VmType) as VmTypeName[]).filter((t) => (bits >> VmType[t]) & 1);
}

/** What `vm` lacks of `needs`, one phrase per missing thing (empty: it qualifies). */
function lacking(vm: Vm, needs: VmRequirements): string[] {
  const out: string[] = [];
  const check = (cap: number) => vm.checkExtension(cap);
  const flags = BigInt(check(Cap.GuestMemfdFlags));
  const wantsGmem = needs.guestMemfd || needs.mmap || needs.initShared || needs.privateMemory;
  if (wantsGmem && check(Cap.GuestMemfd) <= 0) out.push('KVM_CAP_GUEST_MEMFD=0');
  else {
    if (needs.mmap && !(flags & GuestMemfdFlag.Mmap)) out.push(`no GUEST_MEMFD_FLAG_MMAP (KVM_CAP_GUEST_MEMFD_FLAGS=${hex(flags)})`);
    if (needs.initShared && !(flags & GuestMemfdFlag.InitShared))
      out.push(`no GUEST_MEMFD_FLAG_INIT_SHARED (KVM_CAP_GUEST_MEMFD_FLAGS=${hex(flags)})`);
  }
  if (needs.privateMemory) {
    const attrs = BigInt(check(Cap.MemoryAttributes));
    if (!(attrs & MemoryAttribute.Private)) out.push(`no KVM_MEMORY_ATTRIBUTE_PRIVATE (KVM_CAP_MEMORY_ATTRIBUTES=${hex(attrs)})`);
  }
  if (needs.memoryFaultInfo && check(Cap.MemoryFaultInfo) <= 0) out.push('KVM_CAP_MEMORY_FAULT_INFO=0');
  if (needs.preFault && check(Cap.PreFaultMemory) <= 0) out.push('KVM_CAP_PRE_FAULT_MEMORY=0');
  if (needs.readonlyMemory && check(Cap.ReadonlyMem) <= 0) out.push('KVM_CAP_READONLY_MEM=0');
  if (needs.userMemory2 && check(Cap.UserMemory2) <= 0) out.push('KVM_CAP_USER_MEMORY2=0');
  if (needs.irqchip && check(Cap.Irqchip) <= 0) out.push('KVM_CAP_IRQCHIP=0');
  if (needs.irqfd && check(Cap.Irqfd) <= 0) out.push('KVM_CAP_IRQFD=0');
  if (needs.ioeventfd && check(Cap.Ioeventfd) <= 0) out.push('KVM_CAP_IOEVENTFD=0');
  if ((needs.guestDebug || needs.hardwareBreakpoints || needs.softwareBreakpoints) && check(Cap.SetGuestDebug) <= 0) out.push('KVM_CAP_SET_GUEST_DEBUG=0');
  for (const [cap, min] of Object.entries(needs.capabilities ?? {})) {
    const value = check(Number(cap));
    if (value < min) out.push(`capability ${cap} reports ${value} (< ${min})`);
  }
  if (out.length === 0 && needs.hypercallExit) {
    const why = hypercallExitMissing(vm);
    if (why) out.push(why);
  }
  if (out.length === 0 && needs.hardwareBreakpoints) {
    const why = breakpointMissing(vm, 'hardware');
    if (why) out.push(why);
  }
  if (out.length === 0 && needs.softwareBreakpoints) {
    const why = breakpointMissing(vm, 'software');
    if (why) out.push(why);
  }
  return out;
}

/**
 * Runs a real-mode guest (`nop; int3; nop; hlt` at 0x1000) under a hardware
 * execution breakpoint on its second byte, or with software breakpoints on, and
 * says why KVM_RUN did not end with the `debug` exit at 0x1001, if it did not.
 */
function breakpointMissing(vm: Vm, kind: 'hardware' | 'software'): string | undefined {
  using probeVm = vm.kvm.createVm({ type: vm.type });
  probeVm.addMemorySlot({ guestPhysAddr: 0, size: 0x10000, userspace: 'anonymous' });
  probeVm.memory.write(0x1000, Uint8Array.from([0x90, kind === 'software' ? 0xcc : 0x90, 0x90, 0xf4, 0xeb, 0xfd]));
  const vcpu = probeVm.createVcpu(0);
  vcpu.setSregs({ cs: { base: 0n, selector: 0 } });
  vcpu.setRegs({ rip: 0x1000n, rflags: 2n });
  vcpu.setGuestDebug(kind === 'hardware' ? { hardwareBreakpoints: [{ address: 0x1001n }] } : { softwareBreakpoints: true });
  let got: string;
  try {
    const exit = vcpu.runSync({ timeoutMs: 1000 });
    if (exit.reason === 'debug' && exit.pc === 0x1001n) return undefined;
    got = exit.reason === 'debug' ? `a debug exit at ${hex(exit.pc)}` : `'${exit.reason}'`;
  } catch (e) {
    if (!(e instanceof TimeoutError)) throw e;
    got = 'no exit within 1 s';
  }
  return `a ${kind} breakpoint does not end KVM_RUN with a debug exit here (KVM_RUN gave ${got})`;
}

/**
 * Runs a real-mode `vmcall` of KVM_HC_MAP_GPA_RANGE (eax=12, one page at 0x1000)
 * with KVM_CAP_EXIT_HYPERCALL enabled and says why it did not exit to userspace, if
 * it did not. The guest halts right after the call; a kernel that neither exits nor
 * returns to the guest is stopped by the time limit.
 */
function hypercallExitMissing(vm: Vm): string | undefined {
  const bit = 1 << 12;
  const offered = vm.checkExtension(Cap.ExitHypercall);
  if (!(offered & bit)) return `KVM_CAP_EXIT_HYPERCALL=${hex(offered)} lacks KVM_HC_MAP_GPA_RANGE`;
  // A throwaway VM of the same type: the probe must not change the caller's.
  using probeVm = vm.kvm.createVm({ type: vm.type });
  probeVm.enableCap(Cap.ExitHypercall, [bit]);
  probeVm.addMemorySlot({ guestPhysAddr: 0, size: 0x10000, userspace: 'anonymous' });
  const code = Uint8Array.from([
    0x66, 0xb8, 12, 0, 0, 0, //       mov eax, 12 (KVM_HC_MAP_GPA_RANGE)
    0x66, 0xbb, 0, 0x10, 0, 0, //     mov ebx, 0x1000 (gpa)
    0x66, 0xb9, 1, 0, 0, 0, //        mov ecx, 1 (pages)
    0x66, 0x31, 0xd2, //              xor edx, edx (attributes: shared)
    0x0f, 0x01, 0xc1, //              vmcall
    0xf4, 0xeb, 0xfd, //              hlt; jmp $-3
  ]);
  probeVm.memory.write(0x1000, code);
  const vcpu = probeVm.createVcpu(0);
  vcpu.setSregs({ cs: { base: 0n, selector: 0 } });
  vcpu.setRegs({ rip: 0x1000n, rflags: 2n });
  let got: string;
  try {
    got = vcpu.runSync({ timeoutMs: 1000 }).reason;
  } catch (e) {
    if (!(e instanceof TimeoutError)) throw e;
    got = 'no exit within 1 s';
  }
  return got === 'hypercall' ? undefined : `a guest vmcall does not exit to userspace here (KVM_RUN gave ${got === 'no exit within 1 s' ? got : `'${got}'`})`;
}

const matches = new Map<string, VmTypeMatch>();

function requirementKey(path: string, needs: VmRequirements): string {
  const type = needs.type === undefined ? [] : Array.isArray(needs.type) ? [...needs.type] : [needs.type];
  return JSON.stringify([path, type, Object.entries(needs).filter(([k]) => k !== 'type').sort()]);
}

function checkRequirements(needs: unknown): VmRequirements {
  if (needs === undefined) return {};
  if (needs === null || typeof needs !== 'object' || Array.isArray(needs))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', 'findVmType: needs must be an object of requirements');
  const known = new Set(['type', 'guestMemfd', 'mmap', 'initShared', 'privateMemory', 'memoryFaultInfo', 'preFault', 'readonlyMemory', 'userMemory2', 'hypercallExit', 'irqchip', 'irqfd', 'ioeventfd', 'guestDebug', 'hardwareBreakpoints', 'softwareBreakpoints', 'capabilities']);
  for (const [k, v] of Object.entries(needs)) {
    if (!known.has(k)) throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `findVmType: unknown requirement '${k}'`);
    if (k === 'type') {
      const list = Array.isArray(v) ? v : [v];
      for (const t of list)
        if (typeof t !== 'string' || !(t in VmType))
          throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `findVmType: needs.type ${String(t)} is not one of ${Object.keys(VmType).join(', ')}`);
    } else if (k === 'capabilities') {
      if (v === null || typeof v !== 'object') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', 'findVmType: needs.capabilities must be an object');
    } else if (v !== undefined && typeof v !== 'boolean')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `findVmType: needs.${k} must be a boolean`);
  }
  return needs as VmRequirements;
}

/**
 * The first VM type (in the order of {@link VmType}, `'default'` first) whose VMs
 * offer everything in `needs`, or the reason no type does, naming what each type
 * lacks. Capabilities are asked of a fresh VM of each type (answers differ by type);
 * results are cached per device and requirements.
 *
 * @example
 * const m = findVmType({ privateMemory: true });
 * if (m.type) using vm = kvm.createVm({ type: m.type }); else console.log(m.reason);
 */
export function findVmType(needs?: VmRequirements, path: string = defaultKvmPath()): VmTypeMatch {
  const n = checkRequirements(needs);
  const key = requirementKey(path, n);
  const cached = matches.get(key);
  if (cached) return cached;
  const result = searchVmType(n, path);
  matches.set(key, result);
  return result;
}

function searchVmType(needs: VmRequirements, path: string): VmTypeMatch {
  const why = kvmUnavailable(path);
  if (why) return { reason: why };
  using kvm = Kvm.open(path);
  const offered = typesOffered(kvm);
  const allowed = needs.type === undefined ? offered : (Array.isArray(needs.type) ? needs.type : [needs.type]) as VmTypeName[];
  const notes: string[] = [];
  for (const type of allowed) {
    if (!offered.includes(type)) {
      notes.push(`${type}: not in KVM_CAP_VM_TYPES`);
      continue;
    }
    let vm: Vm;
    try {
      vm = kvm.createVm({ type });
    } catch (e) {
      notes.push(`${type}: cannot be created (${e instanceof Error ? e.message : String(e)})`);
      continue;
    }
    try {
      const missing = lacking(vm, needs);
      if (missing.length === 0) return { type };
      notes.push(`${type}: ${missing.join(', ')}`);
    } finally {
      vm.close();
    }
  }
  return { reason: `no VM type here offers what this needs (${notes.join('; ')})` };
}

/**
 * Why a test with these needs cannot run here, or undefined when it can: KVM is
 * unusable, or no VM type offers them. For `skipIf` conditions and titles.
 */
export function unmetRequirements(needs?: VmRequirements, path: string = defaultKvmPath()): string | undefined {
  return findVmType(needs, path).reason;
}

/** `title`, with `[skipped: reason]` appended when there is a reason. */
export function titleWithReason(title: string, reason: string | undefined): string {
  return reason ? `${title} [skipped: ${reason}]` : title;
}

/** Threads of this process running a vCPU loop (the addon names them `gmem-vcpu`). */
export function vcpuThreadCount(): number {
  let n = 0;
  for (const t of readdirSync('/proc/self/task')) {
    try {
      if (readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim() === 'gmem-vcpu') n++;
    } catch {
      // the thread ended while we looked
    }
  }
  return n;
}

/** What this process holds, for a before/after comparison. */
export interface ResourceSnapshot {
  /** Open fds of the process (/proc/self/fd). */
  readonly fds: number;
  /** fds the addon owns (created by this library and not yet closed). */
  readonly ownedFds: number;
  /** Mappings the addon owns (views, slot memory, kvm_run pages). */
  readonly mappings: number;
  /** vCPU threads of the process. */
  readonly vcpuThreads: number;
}

/** Counts what the process holds now. */
export function resourceSnapshot(): ResourceSnapshot {
  return {
    fds: readdirSync('/proc/self/fd').length,
    ownedFds: native.ownedFdCount(),
    mappings: native.mappingCount(),
    vcpuThreads: vcpuThreadCount(),
  };
}

/**
 * What grew since `before`, one line per resource (empty when nothing leaked).
 * vCPU threads are joined when their vCPU closes, so they are compared as they are.
 */
export function resourceLeaks(before: ResourceSnapshot, after: ResourceSnapshot = resourceSnapshot()): string[] {
  const out: string[] = [];
  const names: Record<keyof ResourceSnapshot, string> = {
    fds: 'open fds',
    ownedFds: 'fds owned by guest-memfd',
    mappings: 'mappings owned by guest-memfd',
    vcpuThreads: 'vCPU threads',
  };
  for (const k of Object.keys(names) as (keyof ResourceSnapshot)[])
    if (after[k] > before[k]) out.push(`${names[k]}: ${before[k]} before, ${after[k]} after`);
  return out;
}

/** Throws an Error listing what grew since `before` (fds, mappings, vCPU threads). */
export function assertNoLeaks(before: ResourceSnapshot, after: ResourceSnapshot = resourceSnapshot()): void {
  const leaks = resourceLeaks(before, after);
  if (leaks.length) throw Object.assign(new Error(`resources left behind: ${leaks.join('; ')}`), { code: 'ERR_RESOURCE_LEAK' });
}
