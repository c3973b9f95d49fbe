/**
 * Memory slots: a guest-physical range bound to its shared backing (userspace
 * memory) and, optionally, a guest_memfd range for private memory
 * (KVM_SET_USER_MEMORY_REGION2).
 */
import { Cap } from '../core/caps';
import { DirtyBitmap } from './dirty-log';
import { ArgumentRangeError, ArgumentTypeError, explain, StateError } from '../core/errors';
import { GuestMemfd } from './guest-memfd';
import { MemoryFile, type FileBinding } from './memory-file';
import { MemoryView, ViewSet } from './memory-view';
import { native } from '../native';
import {
  invalidate,
  invalidateSync,
  populate,
  populateSync,
  quiet,
  rollBack,
  type BoundRange,
  type Delivery,
  type InvalidationCause,
} from '../events/notifier';
import { bool, fileNumber, hex, options as readOptions, PAGE_SIZE, u64, uint, given } from '../core/validate';
import type { Vm } from '../kvm/vm';
import { guardReceivers } from '../core/receiver';

/** The largest Buffer Node allows (4 GiB on Node 20). */
const MAX_BUFFER = 2 ** 32;

/** KVM_MEM_* slot flags. */
export const SlotFlag = {
  /** KVM_MEM_LOG_DIRTY_PAGES. */
  LogDirtyPages: 1 << 0,
  /** KVM_MEM_READONLY. */
  Readonly: 1 << 1,
  /** KVM_MEM_GUEST_MEMFD. */
  GuestMemfd: 1 << 2,
} as const;

/** The shared backing of a slot, as `addMemorySlot` accepts it. */
export type UserspaceBacking = MemoryFile | MemoryView | 'anonymous';

/** Options of `vm.addMemorySlot`. */
export interface MemorySlotOptions {
  /** First guest physical address; page-aligned. */
  guestPhysAddr: number | bigint;
  /** Size in bytes; positive, page-aligned. */
  size: number | bigint;
  /**
   * Shared backing: a Memfd or GuestMemfd (mapped for the slot's lifetime at
   * `userspaceOffset`), a MemoryView (used as is, pinned while the slot exists), or
   * `'anonymous'` process memory. Default: the guest_memfd's own mapping when it is
   * mappable and initially shared, else anonymous memory.
   */
  userspace?: UserspaceBacking;
  /** Offset in the userspace file (for Memfd/GuestMemfd backings; default 0). */
  userspaceOffset?: number | bigint;
  /** Private memory: a range of a guest_memfd of this VM. */
  guestMemfd?: { file: GuestMemfd; offset?: number | bigint };
  /** KVM_MEM_READONLY: guest writes exit as MMIO. */
  readonly?: boolean;
  /** KVM_MEM_LOG_DIRTY_PAGES: track guest writes for `getDirtyLog()`. */
  logDirtyPages?: boolean;
  /** Explicit slot id; otherwise the lowest free id. */
  slot?: number;
  /** Address space id (x86: 1 is SMM), where KVM_CAP_MULTI_ADDRESS_SPACE > 1. */
  addressSpace?: number;
}

/** The raw KVM_SET_USER_MEMORY_REGION2 argument, for `vm.setUserMemoryRegion2`. */
export interface UserMemoryRegion2 {
  /** Slot field: (address space << 16) | slot id. */
  slot: number;
  /** KVM_MEM_* flags. */
  flags: number;
  /** `guest_phys_addr`: first guest physical address; page-aligned. */
  guestPhysAddr: number | bigint;
  /** 0 deletes the slot. */
  memorySize: number | bigint;
  /** `userspace_addr`: host virtual address of the shared backing. */
  userspaceAddr: number | bigint;
  /** guest_memfd fd (or a GuestMemfd) when flags has KVM_MEM_GUEST_MEMFD. */
  guestMemfd?: number | GuestMemfd;
  /** `guest_memfd_offset`: offset of the slot's private memory in the guest_memfd. */
  guestMemfdOffset?: number | bigint;
}

/** A plain description of a slot, for memory maps. */
export interface SlotDescription {
  /** Slot id within its address space (the low 16 bits of the kernel's slot field). */
  readonly slot: number;
  /** Address space id (the high 16 bits of the kernel's slot field). */
  readonly addressSpace: number;
  /** First guest physical address of the slot. */
  readonly guestPhysAddr: bigint;
  /** Size of the slot in bytes. */
  readonly size: bigint;
  /** The slot's KVM_MEM_* flags by name (`'log-dirty-pages'`, `'readonly'`, `'guest-memfd'`). */
  readonly flags: readonly string[];
  /**
   * Shared backing: `kind` (`'memfd'`, `'guest_memfd'`, `'view'` or `'anonymous'`), the
   * file's description if any, the offset in it, and the host address (`userspace_addr`).
   */
  readonly userspace: { readonly kind: string; readonly file?: string; readonly offset: number; readonly address: bigint };
  /** Private backing, if any: the guest_memfd's description and `guest_memfd_offset`. */
  readonly guestMemfd?: { readonly file: string; readonly offset: number };
}

/** How a slot holds its userspace (shared) memory. */
export interface SlotUserspace {
  /** What backs it: a memfd or guest_memfd the slot mapped, a view given to it, or anonymous memory. */
  readonly kind: 'memfd' | 'guest_memfd' | 'view' | 'anonymous';
  /** The file, or null for anonymous memory (and views of it). */
  readonly file: MemoryFile | null;
  /** Offset of the slot's memory in the file. */
  readonly offset: number;
  /** The mapping the kernel was given (`userspace_addr` is its address). */
  readonly view: MemoryView;
  /** True when the slot created the mapping (and releases it on removal). */
  readonly owned: boolean;
}
type Userspace = SlotUserspace;

/**
 * A memory slot of a VM. Created by `vm.addMemorySlot`, removed by
 * `vm.removeMemorySlot`. While it exists its backings cannot be unmapped or closed.
 */
export class MemorySlot {
  static {
    guardReceivers(this, (o) => #removed in o, 'slot', 'vm.addMemorySlot()');
  }
  /** The VM. */
  readonly vm: Vm;
  /** Slot id within its address space. */
  readonly id: number;
  /** Address space id. */
  readonly addressSpace: number;
  /** Size in bytes. */
  readonly size: bigint;
  /** KVM_MEM_* flags. */
  readonly flags: number;
  /** Private memory range, if any. */
  readonly guestMemfd: { readonly file: GuestMemfd; readonly offset: number } | undefined;
  #guestPhysAddr: bigint;
  #userspace: Userspace;
  #removed = false;
  /** @internal */
  readonly bindings: FileBinding[] = [];

  /** @internal */
  static create(
    vm: Vm,
    id: number,
    addressSpace: number,
    guestPhysAddr: bigint,
    size: bigint,
    flags: number,
    userspace: Userspace,
    guestMemfd: { file: GuestMemfd; offset: number } | undefined,
  ): MemorySlot {
    return new MemorySlot(vm, id, addressSpace, guestPhysAddr, size, flags, userspace, guestMemfd);
  }

  /** Made by the library only. */
  private constructor(
    vm: Vm,
    id: number,
    addressSpace: number,
    guestPhysAddr: bigint,
    size: bigint,
    flags: number,
    userspace: Userspace,
    guestMemfd: { file: GuestMemfd; offset: number } | undefined,
  ) {
    this.vm = vm;
    this.id = id;
    this.addressSpace = addressSpace;
    this.#guestPhysAddr = guestPhysAddr;
    this.size = size;
    this.flags = flags;
    this.#userspace = userspace;
    this.guestMemfd = guestMemfd;
  }

  /** First guest physical address. */
  get guestPhysAddr(): bigint {
    return this.#guestPhysAddr;
  }

  /** @internal */
  set guestPhysAddrInternal(gpa: bigint) {
    this.#guestPhysAddr = gpa;
  }

  /** The kernel's slot field: (address space << 16) | id. */
  get kernelSlot(): number {
    return (this.addressSpace << 16) | this.id;
  }

  /** The userspace (shared) backing: what it is, its file and offset, and its view. */
  get userspace(): Readonly<Userspace> {
    return this.#userspace;
  }

  /** Address of the userspace memory in this process. */
  get userspaceAddr(): bigint {
    return this.#userspace.view.address;
  }

  /** KVM_MEM_READONLY is set. */
  get readonly(): boolean {
    return (this.flags & SlotFlag.Readonly) !== 0;
  }

  /** KVM_MEM_LOG_DIRTY_PAGES is set. */
  get logDirtyPages(): boolean {
    return (this.flags & SlotFlag.LogDirtyPages) !== 0;
  }

  /** True once removed from its VM. */
  get removed(): boolean {
    return this.#removed;
  }

  /** @internal */
  markRemoved(): void {
    this.#removed = true;
  }

  /**
   * KVM_GET_DIRTY_LOG: the pages the guest wrote since the previous call (the call
   * resets the log). The slot must have been added with `logDirtyPages: true`.
   */
  getDirtyLog(): DirtyBitmap {
    const op = 'slot.getDirtyLog';
    if (this.#removed) throw new StateError('ERR_CLOSED', `${op}: slot ${this.id} was removed`);
    if (!this.logDirtyPages)
      throw new StateError('ERR_INVALID_STATE', `${op}: slot ${this.id} was added without logDirtyPages: true`);
    const pages = Number(this.size / BigInt(PAGE_SIZE));
    const bitmap = new DirtyBitmap(this.#guestPhysAddr, pages, PAGE_SIZE);
    try {
      native.getDirtyLog(this.vm.checkOpen(op), this.kernelSlot, bitmap.words);
    } catch (e) {
      throw explain(e, `${op}() of slot ${this.id}`);
    }
    return bitmap;
  }

  /** A plain description (for memory maps and logs). */
  describe(): SlotDescription {
    const flags = Object.entries(SlotFlag)
      .filter(([, bit]) => this.flags & bit)
      .map(([name]) => name.replace(/[A-Z]/g, (c, i) => (i ? '-' : '') + c.toLowerCase()));
    const u = this.#userspace;
    return {
      slot: this.id,
      addressSpace: this.addressSpace,
      guestPhysAddr: this.#guestPhysAddr,
      size: this.size,
      flags,
      userspace: {
        kind: u.kind,
        ...(u.file ? { file: (u.file as MemoryFile).description } : {}),
        offset: u.offset,
        address: u.view.address,
      },
      ...(this.guestMemfd ? { guestMemfd: { file: this.guestMemfd.file.description, offset: this.guestMemfd.offset } } : {}),
    };
  }

  /** @internal */
  releaseUserspace(): void {
    const u = this.#userspace;
    u.view.unpin();
    if (u.owned) u.view.release();
  }
}

/** Everything `addMemorySlot` decided before touching the kernel. @internal */
interface SlotPlan {
  id: number;
  addressSpace: number;
  guestPhysAddr: bigint;
  size: bigint;
  flags: number;
  guestMemfd: { file: GuestMemfd; offset: number } | undefined;
  userspace: UserspaceBacking;
  userspaceOffset: number;
}

function slotError(code: string, message: string, op = 'vm.addMemorySlot'): StateError {
  return new StateError(code, `${op}: ${message}`);
}

function range(gpa: bigint, size: bigint): string {
  return `${hex(gpa)}..${hex(gpa + size)}`;
}

/** Validates options against the VM's capabilities and slot table. @internal */
export function planSlot(vm: Vm, options: MemorySlotOptions, op = 'vm.addMemorySlot'): SlotPlan {
  vm.checkOpen(op);
  const o = readOptions<MemorySlotOptions>(options, op);
  if (o.guestPhysAddr === undefined) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.guestPhysAddr is required`);
  if (o.size === undefined) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.size is required`);
  const gpa = u64(o.guestPhysAddr, op, 'options.guestPhysAddr');
  const size = u64(o.size, op, 'options.size');
  if (size === 0n) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: options.size must be greater than 0`);
  if (gpa % BigInt(PAGE_SIZE) !== 0n)
    throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: options.guestPhysAddr ${hex(gpa)} is not page-aligned (${PAGE_SIZE})`);
  if (size % BigInt(PAGE_SIZE) !== 0n)
    throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: options.size ${hex(size)} is not page-aligned (${PAGE_SIZE})`);
  if (gpa + size > 1n << 64n)
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: GPA range ${range(gpa, size)} wraps past 2^64`);
  const bits = vm.physicalAddressBits();
  if (bits !== undefined && gpa + size > 1n << BigInt(bits))
    throw new ArgumentRangeError(
      'ERR_OUT_OF_RANGE',
      `${op}: GPA range ${range(gpa, size)} ends past the ${bits}-bit guest physical address space (CPUID 0x80000008 of this host's KVM, what its vCPUs see): a guest could never reach it`,
    );
  const readonly = bool(o.readonly, false, op, 'options.readonly');
  const logDirty = bool(o.logDirtyPages, false, op, 'options.logDirtyPages');

  const spaces = Math.max(1, vm.cap(Cap.MultiAddressSpace));
  const addressSpace = uint(given(o.addressSpace, 0), op, 'options.addressSpace', spaces - 1);
  const nrSlots = vm.requireCap(Cap.NrMemslots, 'memory slots');

  let gmem: { file: GuestMemfd; offset: number } | undefined;
  if (o.guestMemfd !== undefined) {
    const g = readOptions<{ file: GuestMemfd; offset?: number | bigint }>(o.guestMemfd, op, 'options.guestMemfd');
    if (!(g.file instanceof GuestMemfd))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.guestMemfd.file must be a GuestMemfd`);
    vm.requireCap(Cap.UserMemory2, 'a guest_memfd slot (KVM_SET_USER_MEMORY_REGION2)');
    vm.requireCap(Cap.GuestMemfd, 'a guest_memfd slot');
    const file = g.file;
    if (file.closed) throw new StateError('ERR_CLOSED', `${op}: options.guestMemfd.file ${file.description} is closed`);
    if (file.owner !== vm)
      throw slotError('ERR_FOREIGN_GUEST_MEMFD', `${file.description} belongs to another VM; a guest_memfd binds only to the VM that created it (the kernel says EINVAL)`);
    const offset = fileNumber(given(g.offset, 0), op, 'options.guestMemfd.offset');
    if (offset % PAGE_SIZE !== 0)
      throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: options.guestMemfd.offset ${hex(offset)} is not page-aligned (${PAGE_SIZE})`);
    if (BigInt(offset) + size > BigInt(file.size))
      throw new ArgumentRangeError(
        'ERR_OUT_OF_RANGE',
        `${op}: guest_memfd range ${hex(offset)}..${hex(BigInt(offset) + size)} ends past the end of ${file.description} (size ${hex(file.size)})`,
      );
    for (const b of file.bindings) {
      if (b.role !== 'private') continue;
      const end = b.fileOffset + Number(b.size);
      if (offset < end && Number(BigInt(offset) + size) > b.fileOffset)
        throw slotError(
          'ERR_GUEST_MEMFD_BOUND',
          `${file.description} range ${hex(offset)}..${hex(BigInt(offset) + size)} overlaps ${hex(b.fileOffset)}..${hex(end)}, already bound by slot ${b.slot} (GPA ${range(b.guestPhysAddr, b.size)}); a guest_memfd range binds once`,
        );
    }
    if (readonly) throw slotError('ERR_INVALID_ARG_VALUE', 'options.readonly cannot be combined with guestMemfd: KVM refuses KVM_MEM_READONLY for guest_memfd slots');
    if (logDirty)
      throw slotError('ERR_INVALID_ARG_VALUE', 'options.logDirtyPages cannot be combined with guestMemfd: KVM refuses KVM_MEM_LOG_DIRTY_PAGES for guest_memfd slots');
    gmem = { file, offset };
  }
  if (readonly) vm.requireCap(Cap.ReadonlyMem, 'a read-only slot');

  const table = vm.slotTable;
  let id: number;
  if (o.slot !== undefined) {
    id = uint(o.slot, op, 'options.slot', nrSlots - 1);
    const taken = table.get(addressSpace, id);
    if (taken)
      throw slotError('ERR_SLOT_IN_USE', `slot id ${id} is already in use (GPA ${range(taken.guestPhysAddr, taken.size)})`);
  } else {
    const free = table.inSpace(addressSpace).length >= nrSlots ? undefined : table.freeId(addressSpace, nrSlots);
    if (free === undefined)
      throw slotError('ERR_NO_SLOTS', `all ${nrSlots} slots (KVM_CAP_NR_MEMSLOTS) of address space ${addressSpace} are in use`);
    id = free;
  }
  const overlap = table.overlapping(addressSpace, gpa, size)[0];
  if (overlap)
    throw slotError(
      'ERR_SLOT_OVERLAP',
      `GPA range ${range(gpa, size)} overlaps slot ${overlap.id} (GPA ${range(overlap.guestPhysAddr, overlap.size)})`,
    );
  const reserved = addressSpace === 0 ? vm.reservedOverlap(gpa, size) : undefined;
  if (reserved) throw slotError('ERR_SLOT_OVERLAP', `GPA range ${range(gpa, size)} overlaps ${reserved}, which KVM keeps for itself`);

  let userspace = o.userspace;
  if (userspace === undefined)
    // A mappable guest_memfd is its own shared memory (checked below); otherwise anonymous memory.
    userspace = gmem?.file.mmapable ? gmem.file : 'anonymous';
  let userspaceOffset = 0;
  const userspaceFile = userspace instanceof MemoryView ? userspace.file : userspace;
  if (userspaceFile instanceof GuestMemfd && userspaceFile.owner !== vm)
    throw slotError(
      'ERR_FOREIGN_GUEST_MEMFD',
      `options.userspace ${userspaceFile.description} belongs to another VM; a guest_memfd backs only the VM that created it`,
    );
  if (userspace instanceof MemoryFile) {
    userspaceOffset =
      o.userspaceOffset !== undefined
        ? fileNumber(o.userspaceOffset, op, 'options.userspaceOffset')
        : userspace === gmem?.file
          ? gmem.offset
          : 0;
    if (userspace.closed) throw new StateError('ERR_CLOSED', `${op}: options.userspace ${userspace.description} is closed`);
    if (BigInt(userspaceOffset) + size > BigInt(userspace.size))
      throw new ArgumentRangeError(
        'ERR_OUT_OF_RANGE',
        `${op}: userspace range ${hex(userspaceOffset)}..${hex(BigInt(userspaceOffset) + size)} ends past the end of ${userspace.description} (size ${hex(userspace.size)})`,
      );
  } else if (userspace instanceof MemoryView) {
    if (!userspace.mapped) throw new StateError('ERR_CLOSED', `${op}: options.userspace is an unmapped view`);
    if (userspace.slotOwned)
      throw new StateError(
        'ERR_IN_USE',
        `${op}: options.userspace is another slot's own mapping, released with that slot; pass its file (or a view of your own) instead`,
      );
    if (BigInt(userspace.length) < size)
      throw new ArgumentRangeError(
        'ERR_OUT_OF_RANGE',
        `${op}: options.userspace view is ${hex(userspace.length)} bytes, smaller than the slot (${hex(size)})`,
      );
    if (o.userspaceOffset !== undefined)
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: options.userspaceOffset applies to file backings, not views`);
  } else if (userspace !== 'anonymous') {
    throw new ArgumentTypeError(
      'ERR_INVALID_ARG_TYPE',
      `${op}: options.userspace must be a Memfd, GuestMemfd, MemoryView or 'anonymous'`,
    );
  } else if (o.userspaceOffset !== undefined) {
    throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: options.userspaceOffset applies to file backings, not anonymous memory`);
  }
  // A guest_memfd created with mmap is its own shared memory: KVM maps the guest from
  // it and ignores any other userspace memory (a "gmem-only" slot, Linux 6.18+), so
  // writes through another backing would never reach the guest.
  if (gmem && gmem.file.mmapable && !gmem.file.initShared)
    throw slotError(
      'ERR_INVALID_ARG_VALUE',
      `options.guestMemfd.file ${gmem.file.description} was created with mmap but without initShared: KVM would map the guest from it, and its pages start private to it, so no host mapping could reach them; create it with initShared (its own shared memory) or without mmap (private memory beside a shared backing)`,
    );
  if (gmem && gmem.file.mmapable) {
    const sameFile = userspaceFile === gmem.file;
    const at = userspace instanceof MemoryView ? userspace.offset : userspaceOffset;
    if (!sameFile || at !== gmem.offset)
      throw slotError(
        'ERR_INVALID_ARG_VALUE',
        `options.userspace must be ${gmem.file.description} itself at offset ${hex(gmem.offset)} (or a view of it there, or left out): a guest_memfd created with mmap is its own shared memory, KVM maps the guest from it and ignores any other userspace memory, so ${sameFile ? `offset ${hex(at)}` : 'other memory'} would never reach the guest`,
      );
  }
  // A slot's own mapping is also the host's view of it: one Buffer.
  if (!(userspace instanceof MemoryView) && size > BigInt(MAX_BUFFER))
    throw new ArgumentRangeError(
      'ERR_OUT_OF_RANGE',
      `${op}: options.size ${hex(size)} exceeds the largest mapping this library gives a slot (${hex(MAX_BUFFER)}, the largest Buffer); use several slots`,
    );
  if (!gmem && !vm.cap(Cap.UserMemory2)) vm.requireCap(Cap.UserMemory, 'memory slots');

  let flags = 0;
  if (gmem) flags |= SlotFlag.GuestMemfd;
  if (readonly) flags |= SlotFlag.Readonly;
  if (logDirty) flags |= SlotFlag.LogDirtyPages;
  return { id, addressSpace, guestPhysAddr: gpa, size, flags, guestMemfd: gmem, userspace, userspaceOffset };
}

/** Maps (or pins) the userspace memory a plan names. @internal */
function acquireUserspace(plan: SlotPlan): Userspace {
  const u = plan.userspace;
  const length = Number(plan.size);
  let result: Userspace;
  if (u === 'anonymous') {
    const set = new ViewSet(`anonymous memory of slot ${plan.id}`);
    let mapping;
    try {
      mapping = native.mapAnonymous(length);
    } catch (e) {
      throw explain(e, `vm.addMemorySlot: mapping ${hex(length)} bytes of anonymous memory`);
    }
    result = { kind: 'anonymous', file: null, offset: 0, view: set.adopt(mapping, 0, length), owned: true };
  } else if (u instanceof MemoryView) {
    result = { kind: 'view', file: (u.file as MemoryFile | null) ?? null, offset: u.offset, view: u, owned: false };
  } else {
    result = {
      kind: u instanceof GuestMemfd ? 'guest_memfd' : 'memfd',
      file: u,
      offset: plan.userspaceOffset,
      view: u.map(plan.userspaceOffset, length),
      owned: true,
    };
  }
  if (result.owned) result.view.markSlotOwned();
  result.view.pin();
  return result;
}

/** The kernel's reasons for refusing a slot, per errno. @internal */
export const slotReasons: Partial<Record<string, string>> = {
  EEXIST: 'the GPA range overlaps a slot the kernel already has (one made outside this library?)',
  EINVAL:
    'the kernel refused the region: unaligned address or size, a guest_memfd range already bound or from another VM, flags it does not support for this slot, or a GPA beyond what the CPU can address',
  ENOMEM: 'out of memory for the slot',
  EFAULT: 'the userspace address range is not valid in this process',
};

/** Issues the kernel call that creates (or re-creates) a slot. @internal */
export function setRegion(vm: Vm, slot: MemorySlot | SlotPlan, userspaceAddr: bigint, op: string): void {
  const fd = vm.checkOpen(op);
  const kernelSlot = ((slot.addressSpace << 16) | slot.id) >>> 0;
  const g = slot.guestMemfd;
  try {
    if (g || vm.cap(Cap.UserMemory2) > 0)
      native.setUserMemoryRegion2(fd, kernelSlot, slot.flags, slot.guestPhysAddr, slot.size, userspaceAddr, g?.offset ?? 0, g ? g.file.fd : 0);
    else native.setUserMemoryRegion(fd, kernelSlot, slot.flags, slot.guestPhysAddr, slot.size, userspaceAddr);
  } catch (e) {
    throw explain(e, `${op}(slot ${slot.id}, GPA ${range(slot.guestPhysAddr, slot.size)})`, slotReasons);
  }
}

/** Deletes a slot in the kernel (memory_size 0). @internal */
function deleteRegion(vm: Vm, slot: MemorySlot, op: string): void {
  const fd = vm.checkOpen(op);
  try {
    if (slot.guestMemfd || vm.cap(Cap.UserMemory2) > 0)
      native.setUserMemoryRegion2(fd, slot.kernelSlot >>> 0, 0, slot.guestPhysAddr, 0, 0, 0, 0);
    else native.setUserMemoryRegion(fd, slot.kernelSlot >>> 0, 0, slot.guestPhysAddr, 0, 0);
  } catch (e) {
    throw explain(e, `${op}(slot ${slot.id})`);
  }
}

/**
 * A slot's hold on a file range. A class, not an object literal: a literal with a
 * getter is built by a slow runtime path on every slot add.
 */
class SlotBinding implements FileBinding {
  readonly vm: Vm;
  readonly slot: number;
  readonly size: bigint;
  readonly #owner: MemorySlot;
  constructor(
    owner: MemorySlot,
    readonly fileOffset: number,
    readonly role: 'userspace' | 'private',
  ) {
    this.#owner = owner;
    this.vm = owner.vm;
    this.slot = owner.id;
    this.size = owner.size;
  }
  /** Follows the slot when it moves. */
  get guestPhysAddr(): bigint {
    return this.#owner.guestPhysAddr;
  }
}

/** Adds a slot: validate, ask populate listeners (synchronously), map, kernel, then record. @internal */
/** True when nobody can hear a slot-wide event: no listener on the VM or either backing. */
function unheard(vm: Vm, userspace: MemoryFile | null, guestMemfd: MemoryFile | undefined): boolean {
  return vm.notifier.size === 0 && !(userspace?.listened ?? false) && !(guestMemfd?.listened ?? false);
}

export function addSlot(vm: Vm, options: MemorySlotOptions): MemorySlot {
  const plan = planSlot(vm, options);
  // The common case: no listener anywhere, no event to build.
  if (unheard(vm, plannedUserspace(plan).file, plan.guestMemfd?.file)) return commitSlot(vm, plan);
  const populating = slotDeliveries(vm, { ...plan, userspace: plannedUserspace(plan) }, 'slot-added');
  if (!quiet(populating)) populateSync(populating, 'vm.addMemorySlot', 'vm.addMemorySlotAsync');
  return commitSlot(vm, plan);
}

/**
 * Adds a slot after awaiting every populate listener (a throw or a rejection vetoes,
 * and whoever accepted hears the rollback). Listeners run before anything is mapped;
 * the plan is checked again once they are done. @internal
 */
export async function addSlotAsync(vm: Vm, options: MemorySlotOptions): Promise<MemorySlot> {
  const op = 'vm.addMemorySlotAsync';
  const plan = planSlot(vm, options, op);
  const populating = slotDeliveries(vm, { ...plan, userspace: plannedUserspace(plan) }, 'slot-added');
  if (quiet(populating)) return commitSlot(vm, plan);
  const accepted = await populate(populating, { keep: true });
  let again: SlotPlan;
  try {
    // Listeners were awaited: the VM, the files or the GPA range may have changed.
    again = planSlot(vm, options, op);
    if (again.id !== plan.id || again.addressSpace !== plan.addressSpace)
      throw slotError('ERR_SLOT_IN_USE', `slot id ${plan.id} was taken while populate listeners ran`, op);
    return commitSlot(vm, again);
  } catch (e) {
    await rollBack(accepted);
    throw e;
  }
}

/** Maps the userspace memory, creates the slot in the kernel and records it. */
function commitSlot(vm: Vm, plan: SlotPlan): MemorySlot {
  const userspace = acquireUserspace(plan);
  try {
    setRegion(vm, plan, userspace.view.address, 'vm.addMemorySlot');
  } catch (e) {
    userspace.view.unpin();
    if (userspace.owned) userspace.view.release();
    throw e;
  }
  const slot = MemorySlot.create(vm, plan.id, plan.addressSpace, plan.guestPhysAddr, plan.size, plan.flags, userspace, plan.guestMemfd);
  vm.slotTable.insert(slot);
  if (userspace.file) slot.bindings.push(new SlotBinding(slot, userspace.offset, 'userspace'));
  if (plan.guestMemfd) slot.bindings.push(new SlotBinding(slot, plan.guestMemfd.offset, 'private'));
  for (const b of slot.bindings) (b.role === 'private' ? plan.guestMemfd!.file : userspace.file!).bind(b);
  return slot;
}

/** What a slot-wide event needs to know: the GPA range and the two backings. @internal */
interface SlotExtentRef {
  readonly id: number;
  readonly guestPhysAddr: bigint;
  readonly size: bigint;
  /** The shared backing's file and offset (null file for anonymous memory). */
  readonly userspace: { readonly file: MemoryFile | null; readonly offset: number };
  readonly guestMemfd: { readonly file: GuestMemfd; readonly offset: number } | undefined;
}

/** The userspace file and offset a plan will bind, before anything is mapped. */
function plannedUserspace(plan: SlotPlan): SlotExtentRef['userspace'] {
  const u = plan.userspace;
  if (u instanceof MemoryFile) return { file: u, offset: plan.userspaceOffset };
  if (u instanceof MemoryView) return { file: u.file as MemoryFile | null, offset: u.offset };
  return { file: null, offset: 0 };
}

/** The events of a slot-wide change: the VM's GPA view and each file's view. @internal */
export function slotDeliveries(vm: Vm, slot: SlotExtentRef, cause: InvalidationCause | 'slot-added'): Delivery[] {
  const ranges: BoundRange[] = [{ slot: slot.id, guestPhysAddr: slot.guestPhysAddr, size: slot.size }];
  const out: Delivery[] = [[vm.notifier, { vm, guestPhysAddr: slot.guestPhysAddr, size: slot.size, cause, ranges }]];
  const { file, offset } = slot.userspace;
  if (file) out.push([file.notifier, { file, offset, length: Number(slot.size), cause, ranges }]);
  const g = slot.guestMemfd;
  // A guest_memfd that is also the shared backing hears the event once.
  if (g && g.file !== file)
    out.push([g.file.notifier, { file: g.file, offset: g.offset, length: Number(slot.size), cause, ranges }]);
  return out;
}

function forgetSlot(vm: Vm, slot: MemorySlot): void {
  vm.slotTable.delete(slot);
  slot.markRemoved();
  for (const b of slot.bindings) (b.role === 'private' ? slot.guestMemfd!.file : slot.userspace.file!).unbind(b);
  slot.bindings.length = 0;
  slot.releaseUserspace();
}

/** Checks that `slot` is a live slot of `vm`. @internal */
export function ownSlot(vm: Vm, slot: unknown, op: string): MemorySlot {
  if (!(slot instanceof MemorySlot)) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: slot must be a MemorySlot`);
  if (slot.vm !== vm) throw new StateError('ERR_FOREIGN_SLOT', `${op}: slot ${slot.id} belongs to another VM`);
  if (slot.removed) throw new StateError('ERR_CLOSED', `${op}: slot ${slot.id} was already removed`);
  return slot;
}

/** Removes a slot: invalidateStart → kernel delete → unmap/unpin → invalidateEnd. @internal */
export async function removeSlot(vm: Vm, slot: MemorySlot, cause: InvalidationCause = 'slot-removed'): Promise<void> {
  const op = 'vm.removeMemorySlot';
  vm.checkOpen(op);
  const run = () => {
    if (slot.removed) return;
    deleteRegion(vm, slot, op);
    forgetSlot(vm, slot);
  };
  if (unheard(vm, slot.userspace.file, slot.guestMemfd?.file)) return run();
  const deliveries = slotDeliveries(vm, slot, cause);
  if (quiet(deliveries)) run();
  else await invalidate(deliveries, run);
}

/** The VM's close path: listeners are told synchronously. @internal */
export function removeSlotSync(vm: Vm, slot: MemorySlot): void {
  const deliveries = slotDeliveries(vm, slot, 'close');
  const run = () => {
    try {
      deleteRegion(vm, slot, 'vm.close');
    } finally {
      forgetSlot(vm, slot);
    }
  };
  if (quiet(deliveries)) run();
  else invalidateSync(deliveries, run);
}

/**
 * Moves a slot to a new GPA. Plain slots move in place (KVM_MR_MOVE keeps the
 * memory); guest_memfd slots are immutable in the kernel, so they are deleted and
 * re-created with the same id and backings. @internal
 */
export async function moveSlot(vm: Vm, slot: MemorySlot, newGpa: number | bigint): Promise<MemorySlot> {
  const op = 'vm.moveMemorySlot';
  const gpa = u64(newGpa, op, 'guestPhysAddr');
  if (gpa % BigInt(PAGE_SIZE) !== 0n)
    throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: guestPhysAddr ${hex(gpa)} is not page-aligned (${PAGE_SIZE})`);
  if (gpa === slot.guestPhysAddr) return slot;
  const clash = vm.slotTable.overlapping(slot.addressSpace, gpa, slot.size).find((s) => s !== slot);
  if (clash)
    throw new StateError(
      'ERR_SLOT_OVERLAP',
      `${op}: GPA range ${range(gpa, slot.size)} overlaps slot ${clash.id} (GPA ${range(clash.guestPhysAddr, clash.size)})`,
    );
  const reserved = slot.addressSpace === 0 ? vm.reservedOverlap(gpa, slot.size) : undefined;
  if (reserved) throw new StateError('ERR_SLOT_OVERLAP', `${op}: GPA range ${range(gpa, slot.size)} overlaps ${reserved}, which KVM keeps for itself`);
  await populate(
    slotDeliveries(vm, { id: slot.id, guestPhysAddr: gpa, size: slot.size, userspace: slot.userspace, guestMemfd: slot.guestMemfd }, 'slot-added'),
  );
  const old = slot.guestPhysAddr;
  await invalidate(slotDeliveries(vm, slot, 'slot-removed'), () => {
    const fd = vm.checkOpen(op);
    // Listeners were awaited: the slot or the target range may have changed since.
    ownSlot(vm, slot, op);
    const late = vm.slotTable.overlapping(slot.addressSpace, gpa, slot.size).find((s) => s !== slot);
    if (late)
      throw new StateError(
        'ERR_SLOT_OVERLAP',
        `${op}: GPA range ${range(gpa, slot.size)} overlaps slot ${late.id} (GPA ${range(late.guestPhysAddr, late.size)}), added while listeners ran`,
      );
    vm.slotTable.delete(slot);
    try {
      if (slot.guestMemfd) {
        deleteRegion(vm, slot, op);
        slot.guestPhysAddrInternal = gpa;
        try {
          setRegion(vm, slot, slot.userspaceAddr, op);
        } catch (e) {
          // Put the slot back where it was; if even that fails, it is gone.
          slot.guestPhysAddrInternal = old;
          try {
            setRegion(vm, slot, slot.userspaceAddr, op);
          } catch {
            forgetSlot(vm, slot);
            throw e;
          }
          throw e;
        }
      } else {
        try {
          native.setUserMemoryRegion2(fd, slot.kernelSlot >>> 0, slot.flags, gpa, slot.size, slot.userspaceAddr, 0, 0);
        } catch (e) {
          throw explain(e, `${op}(slot ${slot.id}, ${hex(old)} → ${hex(gpa)})`, slotReasons);
        }
        slot.guestPhysAddrInternal = gpa;
      }
    } finally {
      if (!slot.removed) vm.slotTable.insert(slot);
    }
  });
  return slot;
}

/** Raw KVM_SET_USER_MEMORY_REGION2: no checks beyond types, no bookkeeping. @internal */
export function rawRegion2(vm: Vm, region: UserMemoryRegion2): void {
  const op = 'vm.setUserMemoryRegion2';
  const fd = vm.checkOpen(op);
  const r = readOptions<UserMemoryRegion2>(region, op, 'region');
  const slot = uint(r.slot, op, 'region.slot', 0xffffffff);
  const flags = uint(given(r.flags, 0), op, 'region.flags', 0xffffffff);
  const gpa = u64(r.guestPhysAddr, op, 'region.guestPhysAddr');
  const size = u64(r.memorySize, op, 'region.memorySize');
  const uaddr = u64(given(r.userspaceAddr, 0), op, 'region.userspaceAddr');
  const gfd = r.guestMemfd instanceof GuestMemfd ? r.guestMemfd.fd : uint(given(r.guestMemfd, 0), op, 'region.guestMemfd', 0x7fffffff);
  const goff = u64(given(r.guestMemfdOffset, 0), op, 'region.guestMemfdOffset');
  const tracked = vm.slotTable.get(slot >>> 16, slot & 0xffff);
  if (tracked)
    throw new StateError(
      'ERR_SLOT_IN_USE',
      `${op}: slot ${slot & 0xffff} (address space ${slot >>> 16}) is managed by vm.addMemorySlot; change it with moveMemorySlot/removeMemorySlot so the library's record stays true`,
    );
  try {
    native.setUserMemoryRegion2(fd, slot, flags, gpa, size, uaddr, goff, gfd);
  } catch (e) {
    throw explain(e, `${op}(slot ${slot}, GPA ${range(gpa, size)}, flags ${hex(flags)})`, slotReasons);
  }
}

