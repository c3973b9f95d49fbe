/**
 * A KVM virtual machine: its guest_memfd files, memory slots, attribute map,
 * notifier and vCPUs.
 */
import {
  Cap,
  capName,
  decodeCapabilities,
  GuestMemfdFlag,
  guestMemfdFlagNames,
  MemoryAttribute,
  type Capabilities,
  type VmTypeName,
} from '../core/caps';
import { ArgumentRangeError, ArgumentTypeError, closedError, explain, StateError, UnsupportedError } from '../core/errors';
import { GuestMemfd, type GuestMemfdOptions } from '../memory/guest-memfd';
import type { Kvm } from './kvm';
import { native } from '../native';
import { closed, track, type FdCell } from '../core/ownership';
import { Notifier, type GpaRangeEvent } from '../events/notifier';
import { AttributeMap } from '../events/attribute-map';
import { GuestMemory } from '../memory/guest-memory';
import {
  addSlot,
  addSlotAsync,
  MemorySlot,
  moveSlot,
  ownSlot,
  rawRegion2,
  removeSlot,
  removeSlotSync,
  type MemorySlotOptions,
  type UserMemoryRegion2,
} from '../memory/memory-slot';
import { SlotTable } from '../memory/slot-table';
import { enableCapOn } from './enable-cap';
import { Vcpu } from './vcpu';
import { cpuidForVcpu, findCpuid, type CpuidEntry } from './cpuid';
import {
  checkDisjoint,
  checkRequest,
  ConversionError,
  convertRanges,
  coverageError,
  discardError,
  faultRequest,
  type ConversionBackend,
  type ConversionContext,
  type ConversionPiece,
  type ConversionRequest,
  type ConversionResult,
  type GpaRange,
  type MemoryFault,
} from '../events/conversion';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../memory/memory-file';
import { bool, hex, options as readOptions, pageLength, PAGE_SIZE, u64, uint } from '../core/validate';
import type { EventFd } from './eventfd';
import {
  checkIoeventfd,
  checkIrqfd,
  EventFdBindings,
  IRQCHIP_GSI_COUNT,
  type IoeventfdBinding,
  type IoeventfdOptions,
  type IrqfdBinding,
  type IrqfdOptions,
} from './eventfd-bindings';
import { guardReceivers, invalidThis } from '../core/receiver';


// Hot calls bound once: a load from the addon's exports object costs more than the call.
const { checkExtension, createGuestMemfd } = native;

/** madvise(2) advice that frees private anonymous pages. */
const MADV_DONTNEED = 4;
const PAGE_MASK = 0xfffn;
const FLAG_MMAP = Number(GuestMemfdFlag.Mmap);
const FLAG_INIT_SHARED = Number(GuestMemfdFlag.InitShared);
/** The four combinations of the named flags, as the bigints files report. */
const FLAG_BIGINTS = [0n, 1n, 2n, 3n];
const KVM_PIT_SPEAKER_DUMMY = 1;
const KVM_IRQFD_FLAG_DEASSIGN = 1;
const KVM_IRQFD_FLAG_RESAMPLE = 2;
const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
const KVM_IOEVENTFD_FLAG_PIO = 2;
const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;
/** KVM_SET_TSS_ADDR takes three pages, which must end within the first 4 GiB. */
const TSS_PAGES = 3n;
const FOUR_GIB = 1n << 32n;

/** Options of `vm.createPit`. */
export interface CreatePitOptions {
  /** KVM_PIT_SPEAKER_DUMMY: KVM also emulates port 0x61 (the PC speaker's gate), as QEMU asks. Default false. */
  speakerDummy?: boolean;
}

/** A guest-physical range KVM takes for itself (the TSS or identity map pages). */
interface ReservedRange {
  readonly what: string;
  readonly guestPhysAddr: bigint;
  readonly size: bigint;
}
/**
 * A VM (KVM_CREATE_VM). Closing it closes everything it created (vCPUs, memory
 * slots, guest_memfd files, detaching their views), so `using vm = ...` cleans up a
 * whole setup.
 */
export class Vm {
  static {
    guardReceivers(this, (o) => #fd in o, 'vm', 'kvm.createVm()', ['checkExtension']);
  }
  /** The KVM device this VM was created from. */
  readonly kvm: Kvm;
  /** The VM type it was created with. */
  readonly type: VmTypeName;
  /** Listeners for guest-physical ranges of this VM: populate, invalidateStart/End. */
  readonly notifier: Notifier<GpaRangeEvent<Vm>>;
  /**
   * The shared/private state of every guest physical address, as set through this
   * VM (the kernel has no "get attributes": this map is the record).
   */
  readonly attributes = new AttributeMap();
  /** Host access to guest physical memory through the slots' shared backings. */
  readonly memory: GuestMemory;
  /** @internal */
  readonly slotTable = new SlotTable<MemorySlot>();
  #fd: number;
  #fdCell: FdCell;
  /**
   * Open guest_memfd files, each knowing its index (swap-remove): a Set would hash
   * every new file and rehash as it grows and shrinks, on every create and close.
   */
  readonly #files: GuestMemfd[] = [];
  /** KVM_CHECK_EXTENSION answers by capability number (small integers). */
  readonly #capCache: Array<number | undefined> = [];
  readonly #vcpus = new Map<number, Vcpu>();
  /** Ids of vCPUs closed here: the kernel keeps a VM's vCPUs until the VM goes. */
  readonly #retiredVcpus = new Set<number>();
  #physBits: number | undefined | null = null;
  /** vCPUs ever created: KVM keeps closed ones until the VM goes, and orders count them. */
  #vcpusCreated = 0;
  #irqchip = false;
  #pit = false;
  #tss: ReservedRange | undefined;
  #identityMap: ReservedRange | undefined;
  readonly #eventfds = new EventFdBindings(this);

  /** @internal */
  static create(kvm: Kvm, fd: number, type: VmTypeName): Vm {
    return new Vm(kvm, fd, type);
  }

  private constructor(kvm: Kvm, fd: number, type: VmTypeName) {
    this.kvm = kvm;
    this.#fd = fd;
    this.type = type;
    this.#fdCell = track(this, fd);
    this.notifier = Notifier.create<GpaRangeEvent<Vm>>(() => this.populatedRanges());
    this.memory = GuestMemory.create({
      slotTable: this.slotTable,
      checkOpen: (op) => this.checkOpen(op),
      privateRanges: (gpa, size) => {
        if (this.attributes.count === 0 || size === 0n) return [];
        // The map is page-granular: widen an unaligned access to the pages it touches.
        const start = gpa & ~PAGE_MASK;
        const end = (gpa + size + PAGE_MASK) & ~PAGE_MASK;
        return this.attributes.differing(start, end - start, 0n).filter((r) => r.state === 'private');
      },
    });
  }

  /** The VM's fd cell, parent of its guest_memfd files' cells. @internal */
  get fdCell(): FdCell {
    return this.#fdCell;
  }

  /** The VM fd. Throws ERR_CLOSED after close. */
  get fd(): number {
    return this.checkOpen('vm.fd');
  }

  /** True after `close()`. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /** @internal */
  checkOpen(operation: string): number {
    if (this.#fd < 0) throw closedError('the VM', operation);
    return this.#fd;
  }

  /**
   * What a replaying VM listener is told is populated now: every slot's GPA range,
   * split by shared/private state. @internal
   */
  protected populatedRanges(): GpaRangeEvent<Vm>[] {
    const out: GpaRangeEvent<Vm>[] = [];
    for (const slot of this.slotTable.all()) {
      for (const r of this.attributes.ranges(slot.guestPhysAddr, slot.guestPhysAddr + slot.size, { includeShared: true })) {
        out.push({
          vm: this,
          guestPhysAddr: r.guestPhysAddr,
          size: r.size,
          cause: 'replay',
          state: r.state,
          ranges: [{ slot: slot.id, guestPhysAddr: r.guestPhysAddr, size: r.size }],
        });
      }
    }
    return out;
  }

  /**
   * Adds a memory slot (KVM_SET_USER_MEMORY_REGION2, or KVM_SET_USER_MEMORY_REGION
   * where USER_MEMORY2 is missing and no guest_memfd is asked for). Every rule the
   * kernel enforces is checked first, with an error naming both parties of a clash.
   * The slot keeps its backings alive: they cannot be unmapped or closed under it.
   *
   * @example
   * const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 << 20, userspace: ram,
   *                                 guestMemfd: { file: gmem, offset: 0 } });
   */
  addMemorySlot(options: MemorySlotOptions): MemorySlot {
    return addSlot(this, options);
  }

  /**
   * {@link Vm.addMemorySlot}, awaiting `populate` listeners first: an async listener
   * can veto (reject), and whoever had accepted hears the rollback. The synchronous
   * form refuses async populate listeners (ERR_ASYNC_LISTENER) since it cannot wait.
   *
   * @example
   * vm.notifier.register({ async populate(e) { await cache.reserve(e.guestPhysAddr, e.size); } });
   * const slot = await vm.addMemorySlotAsync({ guestPhysAddr: 0, size: 2 << 20, userspace: ram });
   */
  addMemorySlotAsync(options: MemorySlotOptions): Promise<MemorySlot> {
    return addSlotAsync(this, options);
  }

  /**
   * Removes a slot. Listeners of the VM and of the slot's files hear a
   * `'slot-removed'` invalidation of its range around the kernel call; then the
   * slot's own mappings are unmapped and its backings released.
   */
  removeMemorySlot(slot: MemorySlot): Promise<void> {
    let s: MemorySlot;
    try {
      s = ownSlot(this, slot, 'vm.removeMemorySlot');
    } catch (e) {
      return Promise.reject(e);
    }
    return removeSlot(this, s);
  }

  /**
   * Moves a slot to another GPA. Plain slots move in place (KVM_MR_MOVE, the memory
   * stays); guest_memfd slots are immutable in the kernel, so they are deleted and
   * re-created with the same id and backings. Returns the slot.
   */
  moveMemorySlot(slot: MemorySlot, guestPhysAddr: number | bigint): Promise<MemorySlot> {
    let s: MemorySlot;
    try {
      s = ownSlot(this, slot, 'vm.moveMemorySlot');
    } catch (e) {
      return Promise.reject(e);
    }
    return moveSlot(this, s, guestPhysAddr);
  }

  /**
   * KVM_SET_MEMORY_ATTRIBUTES, the raw ioctl: sets `attributes` on
   * `[guestPhysAddr, +size)` and, once the kernel accepts, records them in
   * `vm.attributes`. Nothing is populated or discarded: use {@link Vm.convert} for that.
   * The attribute bits must be ones KVM_CAP_MEMORY_ATTRIBUTES reports for this VM.
   */
  setMemoryAttributes(guestPhysAddr: number | bigint, size: number | bigint, attributes: number | bigint): void {
    const op = 'vm.setMemoryAttributes';
    const fd = this.checkOpen(op);
    const gpa = u64(guestPhysAddr, op, 'guestPhysAddr');
    const n = u64(size, op, 'size');
    const attrs = u64(attributes, op, 'attributes');
    checkRequest(op, { guestPhysAddr: gpa, size: n, to: 'shared' });
    const supported = BigInt(this.cap(Cap.MemoryAttributes));
    if (supported === 0n || (attrs & ~supported) !== 0n)
      throw new UnsupportedError(capName(Cap.MemoryAttributes), supported, `memory attributes ${hex(attrs)}`);
    try {
      native.setMemoryAttributes(fd, gpa, n, attrs);
    } catch (e) {
      throw explain(e, `${op}(${hex(gpa)}, ${hex(n)}, ${hex(attrs)})`, {
        EINVAL: 'unaligned range, unsupported attribute bits, or a range outside what the VM can map',
        EAGAIN: 'the kernel asks to retry (memory is being changed concurrently)',
      });
    }
    this.attributes.set(gpa, n, attrs);
  }

  #conversionSupported(op: string): void {
    const supported = BigInt(this.cap(Cap.MemoryAttributes));
    if ((supported & MemoryAttribute.Private) === 0n)
      throw new UnsupportedError(
        capName(Cap.MemoryAttributes),
        supported,
        `${op} (shared/private conversion needs KVM_MEMORY_ATTRIBUTE_PRIVATE)`,
      );
  }

  /**
   * Converts `[guestPhysAddr, +size)` to private or shared: populate listeners first
   * (a veto changes nothing), then invalidateStart for the stale side, the attribute
   * ioctl, the discard of the stale copy, and invalidateEnd. Only sub-ranges whose
   * state differs are touched. The range must be covered by guest_memfd slots.
   *
   * @throws UnsupportedError when this VM lacks KVM_MEMORY_ATTRIBUTE_PRIVATE (checked before anything changes)
   * @throws ConversionError when the kernel refuses part-way (says what was applied)
   */
  convert(guestPhysAddr: number | bigint, size: number | bigint, to: 'private' | 'shared'): Promise<ConversionResult> {
    let quick: ConversionResult | undefined;
    try {
      quick = this.#convertUnheard(guestPhysAddr, size, to);
    } catch (e) {
      return Promise.reject(e);
    }
    return quick ? Promise.resolve(quick) : this.convertMany([{ guestPhysAddr, size, to }]);
  }

  /**
   * The common case of {@link Vm.convert} without the engine's machinery: one range
   * inside one guest_memfd slot whose two copies are separate, no listener on the VM
   * or either file, and the whole range in the other state. The same checks, calls
   * and order as the engine (attributes, the map, the discard of the stale copy).
   * Returns undefined, having changed nothing, when the case does not apply.
   */
  #convertUnheard(guestPhysAddr: number | bigint, size: number | bigint, to: 'private' | 'shared'): ConversionResult | undefined {
    const op = 'vm.convert';
    const fd = this.checkOpen(op);
    const gpa = u64(guestPhysAddr, op, 'guestPhysAddr');
    const n = u64(size, op, 'size');
    checkRequest(op, { guestPhysAddr: gpa, size: n, to });
    this.#conversionSupported(op);
    const slot = this.slotTable.at(0, gpa);
    const g = slot?.guestMemfd;
    if (!slot || !g || gpa + n > slot.guestPhysAddr + slot.size || this.notifier.size > 0) return undefined;
    const u = slot.userspace;
    if (u.file === g.file || u.file?.listened || g.file.listened) return undefined;
    const target = to === 'private' ? MemoryAttribute.Private : MemoryAttribute.Shared;
    const differ = this.attributes.differing(gpa, n, target);
    if (differ.length === 0) return { converted: [], unchangedBytes: n };
    if (differ.length !== 1 || differ[0]!.guestPhysAddr !== gpa || differ[0]!.size !== n) return undefined;
    const delta = Number(gpa - slot.guestPhysAddr);
    try {
      native.setMemoryAttributesMany(fd, BigUint64Array.of(gpa, n, target));
    } catch (e) {
      throw new ConversionError(e, [], { guestPhysAddr: gpa, size: n }, []);
    }
    this.attributes.set(gpa, n, target);
    try {
      if (to === 'private') this.#discardShared(slot, u.file ? u.offset + delta : delta, n);
      else this.#discardPrivate(slot, g.offset + delta, n);
    } catch (e) {
      throw discardError(e);
    }
    return { converted: [{ guestPhysAddr: gpa, size: n, to }], unchangedBytes: 0n };
  }

  /** Drops a slot's shared copy at `offset` (in its file, or its anonymous mapping). */
  #discardShared(slot: MemorySlot, offset: number, size: bigint): void {
    const file = slot.userspace.file;
    if (file) native.fallocate(file.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, size);
    // Anonymous slot memory is a private mapping: MADV_REMOVE needs a shared one,
    // MADV_DONTNEED frees the pages and they read back as zeros.
    else native.madvise(slot.userspace.view.address + BigInt(offset), size, MADV_DONTNEED);
  }

  /** Drops a slot's private copy at `offset` in its guest_memfd. */
  #discardPrivate(slot: MemorySlot, offset: number, size: bigint): void {
    native.fallocate(slot.guestMemfd!.file.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, size);
  }

  /**
   * Several conversions in one batch: one native crossing per direction. Arguments
   * are checked first (a bad one is named whatever the host can do), then the
   * capability, then the coverage.
   */
  async convertMany(
    requests: ReadonlyArray<{ guestPhysAddr: number | bigint; size: number | bigint; to: 'private' | 'shared' }>,
  ): Promise<ConversionResult> {
    const op = Array.isArray(requests) && requests.length === 1 ? 'vm.convert' : 'vm.convertMany';
    this.checkOpen(op);
    if (!Array.isArray(requests))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: requests must be an array of { guestPhysAddr, size, to }`);
    const checked: ConversionRequest[] = requests.map((r: unknown, i) => {
      const where = requests.length === 1 ? op : `${op}[${i}]`;
      if (r === null || typeof r !== 'object')
        throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${where}: each request must be an object { guestPhysAddr, size, to }`);
      const o = r as Record<string, unknown>;
      const req = { guestPhysAddr: u64(o['guestPhysAddr'], where, 'guestPhysAddr'), size: u64(o['size'], where, 'size'), to: o['to'] };
      checkRequest(where, req as ConversionRequest);
      return req as ConversionRequest;
    });
    checkDisjoint(op, checked);
    this.#conversionSupported(op);
    return convertRanges(this.#conversionContext(op), checked);
  }

  /**
   * The memory-fault policy (QEMU's kvm_convert_memory): given a
   * KVM_EXIT_MEMORY_FAULT, converts the faulting pages to the state the guest
   * accessed them in.
   */
  convertOnMemoryFault(fault: MemoryFault): Promise<ConversionResult> {
    const op = 'vm.convertOnMemoryFault';
    try {
      if (fault === null || typeof fault !== 'object')
        throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: fault must be a memory-fault exit { gpa, size, private }`);
      const gpa = u64(fault.gpa, op, 'fault.gpa');
      const size = u64(fault.size, op, 'fault.size');
      if (typeof fault.private !== 'boolean')
        throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: fault.private must be a boolean`);
      if (gpa + size > 1n << 64n) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: fault range wraps past 2^64`);
      const r = faultRequest({ gpa, size, private: fault.private });
      return this.convert(r.guestPhysAddr, r.size, r.to);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** The conversion engine's view of this VM. @internal */
  #conversionContext(op: string): ConversionContext {
    const vm = this;
    // The slots each piece was planned on. Listeners are awaited between planning
    // and the kernel call, so a slot may be removed (and its id reused) meanwhile:
    // never act on whatever holds the id now.
    const planned = new Map<number, MemorySlot>();
    const slotOf = (id: number): MemorySlot => {
      const slot = planned.get(id);
      if (!slot || slot.removed || vm.slotTable.get(0, id) !== slot)
        throw new StateError('ERR_CLOSED', `${op}: slot ${id} was removed while the conversion's listeners ran`);
      return slot;
    };
    const backend: ConversionBackend = {
      recheck(): void {
        vm.checkOpen(op);
        for (const id of planned.keys()) slotOf(id);
      },
      setAttributes(ranges: readonly GpaRange[], attributes: bigint): void {
        const triples = new BigUint64Array(ranges.length * 3);
        ranges.forEach((r, i) => {
          triples[3 * i] = r.guestPhysAddr;
          triples[3 * i + 1] = r.size;
          triples[3 * i + 2] = attributes;
        });
        native.setMemoryAttributesMany(vm.checkOpen(op), triples);
      },
      discardShared(piece: ConversionPiece): void {
        vm.#discardShared(slotOf(piece.slot), piece.shared.offset, piece.size);
      },
      revokeShared(piece: ConversionPiece): void {
        // The guest_memfd is its own shared backing: once private, its pages fault
        // with SIGBUS through any mapping. Detach the views over them first (the
        // slot's own mapping stays; vm.memory refuses private ranges).
        const slot = slotOf(piece.slot);
        slot.guestMemfd!.file.views.releaseOverlapping(piece.private.offset, Number(piece.size));
      },
      discardPrivate(piece: ConversionPiece): void {
        vm.#discardPrivate(slotOf(piece.slot), piece.private.offset, piece.size);
      },
    };
    return {
      vm: this,
      notifier: this.notifier,
      attributes: this.attributes,
      backend,
      pieces: (range) => this.#conversionPieces(op, range, planned),
    };
  }

  #conversionPieces(op: string, range: GpaRange, planned: Map<number, MemorySlot>): ConversionPiece[] {
    const gaps: string[] = [];
    const pieces: ConversionPiece[] = [];
    for (const p of this.slotTable.cover(0, range.guestPhysAddr, range.size)) {
      const span = () => `${hex(p.guestPhysAddr)}..${hex(p.guestPhysAddr + p.size)}`;
      if (!p.slot) {
        gaps.push(`${span()} (no slot)`);
        continue;
      }
      const g = p.slot.guestMemfd;
      if (!g) {
        gaps.push(`${span()} (slot ${p.slot.id} has no guest_memfd)`);
        continue;
      }
      planned.set(p.slot.id, p.slot);
      const delta = Number(p.guestPhysAddr - p.slot.guestPhysAddr);
      const u = p.slot.userspace;
      const sharedOffset = u.offset + delta;
      const privateOffset = g.offset + delta;
      pieces.push({
        slot: p.slot.id,
        guestPhysAddr: p.guestPhysAddr,
        size: p.size,
        shared: { file: u.file, offset: u.file ? sharedOffset : delta },
        private: { file: g.file, offset: privateOffset },
        inPlace: u.file === g.file && sharedOffset === privateOffset,
      });
    }
    if (gaps.length) throw coverageError(op, gaps);
    return pieces;
  }

  /** Every slot, by address space then GPA. */
  get slots(): readonly MemorySlot[] {
    return this.slotTable.all();
  }

  /** The slot containing `guestPhysAddr` (address space 0 unless given), if any. */
  slotAt(guestPhysAddr: number | bigint, addressSpace = 0): MemorySlot | undefined {
    const gpa = u64(guestPhysAddr, 'vm.slotAt', 'guestPhysAddr');
    const space = uint(addressSpace, 'vm.slotAt', 'addressSpace', 0xffff);
    return this.slotTable.at(space, gpa);
  }

  /**
   * The raw escape hatch: KVM_SET_USER_MEMORY_REGION2 exactly as given. No checks
   * beyond types and no bookkeeping (slots made this way are invisible to
   * `vm.slots`); the kernel's errno comes back as KvmError.
   */
  setUserMemoryRegion2(region: UserMemoryRegion2): void {
    rawRegion2(this, region);
  }

  /**
   * KVM_CHECK_EXTENSION on the VM fd. Answers can differ from the system fd's (they
   * depend on the VM type), so ask the VM.
   */
  checkExtension(cap: number): number {
    if (typeof this !== 'object' || this === null || !(#fd in this)) throw invalidThis('vm.checkExtension', 'Vm', 'kvm.createVm()', this);
    const c = uint(cap, 'vm.checkExtension', 'cap', 0xffffffff);
    return checkExtension(this.checkOpen('vm.checkExtension'), c);
  }

  /**
   * Guest physical address bits vCPUs of this host get (CPUID 0x80000008 EAX[7:0] of
   * KVM_GET_SUPPORTED_CPUID), or undefined where the table has no such leaf. @internal
   */
  physicalAddressBits(): number | undefined {
    if (this.#physBits === null) {
      let bits: number | undefined;
      try {
        const leaf = findCpuid(this.kvm.getSupportedCpuid(), 0x80000008);
        bits = leaf && (leaf.eax & 0xff) >= 32 ? leaf.eax & 0xff : undefined;
      } catch {
        bits = undefined;
      }
      this.#physBits = bits;
    }
    return this.#physBits;
  }

  /** A VM capability, asked once: a VM's answers do not change during its life. @internal */
  cap(cap: number): number {
    let value = this.#capCache[cap];
    if (value === undefined) {
      value = native.checkExtension(this.checkOpen('vm.checkExtension'), cap);
      this.#capCache[cap] = value;
    }
    return value;
  }

  /** Throws {@link UnsupportedError} unless `cap` is non-zero for this VM. @internal */
  requireCap(cap: number, needed: string): number {
    const value = this.cap(cap);
    if (value <= 0) throw new UnsupportedError(capName(cap), value, needed);
    return value;
  }

  /** This VM's guest-memory capabilities, decoded. */
  capabilities(): Capabilities {
    const fd = this.checkOpen('vm.capabilities');
    return decodeCapabilities((cap) => native.checkExtension(fd, cap));
  }

  /**
   * KVM_CREATE_GUEST_MEMFD with named flags, checked against this VM's
   * KVM_CAP_GUEST_MEMFD and KVM_CAP_GUEST_MEMFD_FLAGS first. The fd is made
   * close-on-exec.
   */
  createGuestMemfd(options: GuestMemfdOptions): GuestMemfd {
    const op = 'vm.createGuestMemfd';
    this.checkOpen(op);
    const o = readOptions<GuestMemfdOptions>(options, op);
    if (o.size === undefined) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.size is required`);
    const size = pageLength(o.size, op, 'options.size');
    // Flags as a small number on this path; the file reports them as bigint.
    let flags = 0;
    if (bool(o.mmap, false, op, 'options.mmap')) flags |= FLAG_MMAP;
    if (bool(o.initShared, false, op, 'options.initShared')) flags |= FLAG_INIT_SHARED;
    this.requireCap(Cap.GuestMemfd, 'guest_memfd');
    if (flags !== 0) {
      const supported = this.cap(Cap.GuestMemfdFlags);
      if ((flags & ~supported) !== 0) {
        const names = guestMemfdFlagNames(BigInt(supported));
        const wanted = [o.mmap && 'mmap', o.initShared && 'initShared'].filter(Boolean).join(' + ');
        const err = new UnsupportedError(capName(Cap.GuestMemfdFlags), BigInt(supported), `guest_memfd flags ${wanted} (${hex(flags)})`);
        err.message += `; supported: ${names.length ? names.join(', ') : 'none'}`;
        throw err;
      }
    }
    return this.#adoptGuestMemfd(this.#createGuestMemfd(op, size, flags), size, FLAG_BIGINTS[flags]!);
  }

  /**
   * The raw escape hatch: KVM_CREATE_GUEST_MEMFD with any size and flags, no checks
   * beyond types. Kernel refusals arrive as KvmError.
   */
  createGuestMemfdRaw(size: number | bigint, flags: number | bigint = 0n): GuestMemfd {
    const op = 'vm.createGuestMemfdRaw';
    this.checkOpen(op);
    const s = u64(size, op, 'size');
    const f = u64(flags, op, 'flags');
    const fd = this.#createGuestMemfd(op, s, f);
    return this.#adoptGuestMemfd(fd, Number(s), f);
  }

  #createGuestMemfd(op: string, size: number | bigint, flags: number | bigint): number {
    try {
      return createGuestMemfd(this.#fd, size, flags);
    } catch (e) {
      throw explain(e, `${op}(size ${hex(size)}, flags ${hex(flags)})`, {
        EINVAL: 'the size must be a positive multiple of the page size and the flags ones this VM supports',
        ENOTTY: 'this kernel has no guest_memfd',
      });
    }
  }

  #adoptGuestMemfd(fd: number, size: number, flags: bigint): GuestMemfd {
    const file = GuestMemfd.create(this, fd, size, flags);
    file.listIndex = this.#files.push(file) - 1;
    return file;
  }

  /** @internal */
  forgetGuestMemfd(file: GuestMemfd): void {
    const i = file.listIndex;
    if (i < 0 || this.#files[i] !== file) return;
    const last = this.#files.pop()!;
    if (last !== file) {
      this.#files[i] = last;
      last.listIndex = i;
    }
    file.listIndex = -1;
  }

  /** The guest_memfd files this VM created that are still open. */
  get guestMemfds(): readonly GuestMemfd[] {
    return [...this.#files];
  }

  /**
   * Closes everything this VM created, then the VM fd. Idempotent. Every part is
   * attempted even if one fails; failures come back together as an AggregateError
   * (code ERR_CLOSE_INCOMPLETE) after the VM fd is closed. Its irqfds and
   * ioeventfds go with it (the eventfds stay open, no longer in use).
   */
  close(): void {
    if (this.#fd < 0) return;
    const errors: unknown[] = [];
    const attempt = (fn: () => void) => {
      try {
        fn();
      } catch (e) {
        errors.push(e);
      }
    };
    for (const vcpu of [...this.#vcpus.values()]) attempt(() => vcpu.close());
    for (const slot of this.slotTable.all().reverse()) attempt(() => removeSlotSync(this, slot));
    for (const file of this.#files.slice()) attempt(() => file.close());
    closed(this.#fdCell);
    native.close(this.#fd);
    this.#fd = -1;
    // The kernel released every irqfd and ioeventfd with the VM.
    attempt(() => this.#eventfds.clear());
    this.kvm.forgetVm(this);
    if (errors.length)
      throw Object.assign(new AggregateError(errors, `vm.close: the VM is closed, but ${errors.length} of its parts failed to close`), {
        code: 'ERR_CLOSE_INCOMPLETE',
      });
  }

  // --- interrupt controllers, timers and KVM's private pages ---------------------------

  /** True once `createIrqchip()` succeeded: the PIC, IOAPIC and local APICs are in the kernel. */
  get hasIrqchip(): boolean {
    return this.#irqchip;
  }

  /** True once `createPit()` succeeded. */
  get hasPit(): boolean {
    return this.#pit;
  }

  /** The address given to `setTssAddr`, if any. */
  get tssAddr(): bigint | undefined {
    return this.#tss?.guestPhysAddr;
  }

  /** The address given to `setIdentityMapAddr`, if any. */
  get identityMapAddr(): bigint | undefined {
    return this.#identityMap?.guestPhysAddr;
  }

  /** Throws ERR_NO_IRQCHIP unless `createIrqchip()` ran. @internal */
  requireIrqchip(op: string, why: string): void {
    if (!this.#irqchip)
      throw new StateError('ERR_NO_IRQCHIP', `${op}: ${why}; call vm.createIrqchip() first (before creating vCPUs)`);
  }

  /**
   * KVM_CREATE_IRQCHIP: an in-kernel 8259 PIC pair, IOAPIC and a local APIC per vCPU.
   * The guest's accesses to them no longer exit, interrupts are raised with
   * `irqLine` or an irqfd, and a guest `hlt` waits in the kernel for an interrupt
   * instead of exiting. KVM creates each vCPU's local APIC with the vCPU, so this must
   * come before the first `createVcpu` (even one since closed: KVM keeps it).
   *
   * @example
   * using vm = kvm.createVm();
   * vm.createIrqchip();
   * const vcpu = vm.createVcpu(0);
   */
  createIrqchip(): void {
    const op = 'vm.createIrqchip';
    const fd = this.checkOpen(op);
    this.requireCap(Cap.Irqchip, 'an in-kernel irqchip (KVM_CREATE_IRQCHIP)');
    if (this.#irqchip) throw new StateError('ERR_EXISTS', `${op}: this VM already has an in-kernel irqchip`);
    if (this.#vcpusCreated > 0)
      throw new StateError(
        'ERR_VCPUS_EXIST',
        `${op}: ${this.#vcpusCreated} vCPU(s) were already created; KVM gives each vCPU its local APIC when it is created, so the irqchip must come first`,
      );
    try {
      native.createIrqchip(fd);
    } catch (e) {
      throw explain(e, op, { EEXIST: 'the VM already has an irqchip (made outside this library?)', EINVAL: 'vCPUs exist already' });
    }
    this.#irqchip = true;
  }

  /**
   * KVM_CREATE_PIT2: an in-kernel 8254 timer on ports 0x40..0x43, wired to IRQ 0.
   * Needs the in-kernel irqchip first (its PIC receives the timer's interrupt); one
   * per VM.
   *
   * @example
   * vm.createIrqchip();
   * vm.createPit({ speakerDummy: true });
   */
  createPit(options?: CreatePitOptions): void {
    const op = 'vm.createPit';
    const fd = this.checkOpen(op);
    const o = readOptions<CreatePitOptions>(options, op);
    const flags = bool(o.speakerDummy, false, op, 'options.speakerDummy') ? KVM_PIT_SPEAKER_DUMMY : 0;
    this.requireCap(Cap.Pit2, 'an in-kernel PIT (KVM_CREATE_PIT2)');
    this.requireIrqchip(op, 'the PIT delivers its interrupt through the in-kernel PIC');
    if (this.#pit) throw new StateError('ERR_EXISTS', `${op}: this VM already has an in-kernel PIT`);
    try {
      native.createPit2(fd, flags);
    } catch (e) {
      throw explain(e, op, { EEXIST: 'the VM already has a PIT (made outside this library?)', ENOENT: 'the VM has no in-kernel PIC' });
    }
    this.#pit = true;
  }

  /**
   * KVM_IRQ_LINE (KVM_IRQ_LINE_STATUS where KVM_CAP_IRQ_INJECT_STATUS is offered):
   * sets the level of interrupt line `irq` (a GSI, 0..23: PIC inputs 0..15, IOAPIC
   * pins 0..23) of the in-kernel irqchip. An edge-triggered interrupt is a raise then
   * a lower. Returns the kernel's status where it reports one: above 0 delivered (to
   * that many CPUs), 0 coalesced with one still pending, below 0 masked or ignored.
   *
   * @example
   * vm.irqLine(5, true);
   * vm.irqLine(5, false);
   */
  irqLine(irq: number, level: boolean | 0 | 1): number | undefined {
    const op = 'vm.irqLine';
    const fd = this.checkOpen(op);
    const gsi = uint(irq, op, 'irq', 0xffffffff);
    if (gsi >= IRQCHIP_GSI_COUNT)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: irq ${gsi} has no route: the in-kernel irqchip's default routing covers GSIs 0..${IRQCHIP_GSI_COUNT - 1}`);
    if (level !== true && level !== false && level !== 0 && level !== 1)
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: level must be a boolean (or 0 or 1), got ${String(level)}`);
    this.requireIrqchip(op, 'interrupt lines belong to the in-kernel irqchip');
    try {
      return native.irqLine(fd, gsi, level ? 1 : 0, this.cap(Cap.IrqInjectStatus) > 0);
    } catch (e) {
      throw explain(e, `${op}(${gsi}, ${level ? 1 : 0})`, { ENXIO: 'the VM has no in-kernel irqchip' });
    }
  }

  #reservedCheck(op: string, what: string, gpa: bigint, size: bigint, other: ReservedRange | undefined): void {
    const slot = this.slotTable.overlapping(0, gpa, size)[0];
    if (slot)
      throw new StateError(
        'ERR_SLOT_OVERLAP',
        `${op}: the ${what} ${hex(gpa)}..${hex(gpa + size)} overlaps slot ${slot.id} (GPA ${hex(slot.guestPhysAddr)}..${hex(slot.guestPhysAddr + slot.size)}); KVM needs pages no slot covers`,
      );
    if (other && gpa < other.guestPhysAddr + other.size && other.guestPhysAddr < gpa + size)
      throw new StateError('ERR_SLOT_OVERLAP', `${op}: the ${what} ${hex(gpa)}..${hex(gpa + size)} overlaps the ${other.what} ${hex(other.guestPhysAddr)}..${hex(other.guestPhysAddr + other.size)}`);
  }

  /**
   * KVM_SET_TSS_ADDR: three pages of guest-physical space below 4 GiB, outside every
   * memory slot, that KVM uses for real-mode emulation on Intel hosts without
   * unrestricted guest support (elsewhere KVM accepts and ignores it). Set once;
   * slots added later must avoid the range.
   *
   * @example
   * vm.setTssAddr(0xfffbd000);
   */
  setTssAddr(addr: number | bigint): void {
    const op = 'vm.setTssAddr';
    const fd = this.checkOpen(op);
    const a = u64(addr, op, 'addr');
    const size = TSS_PAGES * BigInt(PAGE_SIZE);
    if (a % BigInt(PAGE_SIZE) !== 0n) throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: addr ${hex(a)} is not page-aligned (${PAGE_SIZE})`);
    if (a + size > FOUR_GIB)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: addr ${hex(a)}: the three TSS pages must end within the first 4 GiB (addr at most ${hex(FOUR_GIB - size)})`);
    this.requireCap(Cap.SetTssAddr, op);
    if (this.#tss) throw new StateError('ERR_EXISTS', `${op}: the TSS address is already set (${hex(this.#tss.guestPhysAddr)}); KVM takes it once`);
    this.#reservedCheck(op, 'TSS range', a, size, this.#identityMap);
    try {
      native.setTssAddr(fd, a);
    } catch (e) {
      throw explain(e, `${op}(${hex(a)})`, { EINVAL: 'the three pages must lie below 4 GiB', EEXIST: 'the range is taken (a slot, or a TSS set before)' });
    }
    this.#tss = { what: 'TSS range', guestPhysAddr: a, size };
  }

  /**
   * KVM_SET_IDENTITY_MAP_ADDR: the guest-physical page (below 4 GiB, outside every
   * memory slot) where KVM keeps the identity page table it needs on Intel hosts
   * without unrestricted guest support. KVM refuses it once a vCPU exists.
   *
   * @example
   * vm.setIdentityMapAddr(0xfffbc000);
   */
  setIdentityMapAddr(addr: number | bigint): void {
    const op = 'vm.setIdentityMapAddr';
    const fd = this.checkOpen(op);
    const a = u64(addr, op, 'addr');
    const size = BigInt(PAGE_SIZE);
    if (a % size !== 0n) throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: addr ${hex(a)} is not page-aligned (${PAGE_SIZE})`);
    if (a + size > FOUR_GIB) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: addr ${hex(a)}: the page must lie within the first 4 GiB`);
    this.requireCap(Cap.SetIdentityMapAddr, op);
    if (this.#vcpusCreated > 0)
      throw new StateError('ERR_VCPUS_EXIST', `${op}: ${this.#vcpusCreated} vCPU(s) were already created; KVM takes the identity map address only before the first`);
    this.#reservedCheck(op, 'identity map page', a, size, this.#tss);
    try {
      native.setIdentityMapAddr(fd, a);
    } catch (e) {
      throw explain(e, `${op}(${hex(a)})`, { EINVAL: 'vCPUs exist already', EEXIST: 'the page is taken' });
    }
    this.#identityMap = { what: 'identity map page', guestPhysAddr: a, size };
  }

  /** The TSS or identity-map range `[gpa, gpa+size)` overlaps, if any (address space 0). @internal */
  reservedOverlap(gpa: bigint, size: bigint): string | undefined {
    for (const r of [this.#tss, this.#identityMap])
      if (r && gpa < r.guestPhysAddr + r.size && r.guestPhysAddr < gpa + size)
        return `the ${r.what} ${hex(r.guestPhysAddr)}..${hex(r.guestPhysAddr + r.size)} (${r === this.#tss ? 'vm.setTssAddr' : 'vm.setIdentityMapAddr'})`;
    return undefined;
  }

  // --- eventfd bindings ------------------------------------------------------------------

  /** The irqfds bound to this VM. */
  get irqfds(): readonly IrqfdBinding[] {
    return this.#eventfds.irqfds;
  }

  /** The ioeventfds bound to this VM. */
  get ioeventfds(): readonly IoeventfdBinding[] {
    return this.#eventfds.ioeventfds;
  }

  /**
   * KVM_IRQFD: writing `eventfd` raises `gsi` of the in-kernel irqchip (an edge: the
   * line is raised and lowered), without a syscall into this process. With
   * `{ resample }` it is level-triggered instead (see {@link IrqfdOptions.resample}).
   * `{ deassign: true }` removes the binding. Needs the in-kernel irqchip; one GSI per
   * eventfd per VM. While bound, the eventfd (and a resample eventfd) cannot be
   * closed; closing the VM drops the binding.
   *
   * @example
   * using irq = EventFd.create();
   * vm.irqfd(irq, 5);
   * irq.write();                       // the guest takes IRQ 5
   * vm.irqfd(irq, 5, { deassign: true });
   */
  irqfd(eventfd: EventFd, gsi: number, options?: IrqfdOptions): void {
    const op = 'vm.irqfd';
    const fd = this.checkOpen(op);
    const r = checkIrqfd(op, eventfd, gsi, options);
    this.requireCap(Cap.Irqfd, 'irqfds (KVM_IRQFD)');
    if (r.resample) this.requireCap(Cap.IrqfdResample, 'a level-triggered irqfd (KVM_IRQFD_FLAG_RESAMPLE)');
    this.requireIrqchip(op, 'an irqfd raises a line of the in-kernel irqchip');
    this.#eventfds.checkIrqfd(op, r);
    const flags = (r.deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0) | (r.resample ? KVM_IRQFD_FLAG_RESAMPLE : 0);
    try {
      native.irqfd(fd, r.eventfd.fd, r.gsi, flags, r.resample ? r.resample.fd : 0);
    } catch (e) {
      throw explain(e, `${op}(eventfd ${r.eventfd.fd}, GSI ${r.gsi}${r.deassign ? ', deassign' : ''})`, {
        EBUSY: 'the eventfd is already an irqfd of this VM',
        EINVAL: 'the VM has no in-kernel irqchip, or the flags are not supported',
      });
    }
    if (r.deassign) this.#eventfds.removeIrqfd(r.eventfd);
    else this.#eventfds.addIrqfd(r);
  }

  /**
   * KVM_IOEVENTFD: a guest write to `addr` (an MMIO GPA, or a port with `pio: true`)
   * of width `len` (and value `datamatch`, if given) signals `eventfd` inside KVM
   * instead of exiting to userspace, so the vCPU keeps running. An MMIO address must
   * not be backed by a memory slot (guest writes would just go to memory).
   * `{ deassign: true }` with the same fields removes it. Bindings that the kernel
   * would refuse as overlapping (EEXIST) are refused first, naming the other one.
   *
   * @example
   * using doorbell = EventFd.create();
   * vm.ioeventfd({ addr: 0x50, len: 1, pio: true, eventfd: doorbell });
   * await doorbell.wait();             // the guest wrote port 0x50
   */
  ioeventfd(options: IoeventfdOptions): void {
    const op = 'vm.ioeventfd';
    const fd = this.checkOpen(op);
    const r = checkIoeventfd(op, options);
    this.requireCap(Cap.Ioeventfd, 'ioeventfds (KVM_IOEVENTFD)');
    if (r.len === 0 && !r.deassign) this.requireCap(Cap.IoeventfdNoLength, 'an ioeventfd of any width (len 0)');
    this.#eventfds.checkIoeventfd(op, r);
    const flags =
      (r.datamatch !== undefined ? KVM_IOEVENTFD_FLAG_DATAMATCH : 0) | (r.pio ? KVM_IOEVENTFD_FLAG_PIO : 0) | (r.deassign ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0);
    try {
      native.ioeventfd(fd, r.datamatch ?? 0n, r.addr, r.len, r.eventfd.fd, flags);
    } catch (e) {
      throw explain(e, `${op}(${r.pio ? 'PIO' : 'MMIO'} ${hex(r.addr)}, len ${r.len}${r.deassign ? ', deassign' : ''})`, {
        EEXIST: 'an ioeventfd at this address already matches such writes',
        ENOENT: 'no such ioeventfd to deassign',
        ENOSPC: 'the VM has no room for more I/O devices on this bus',
        EINVAL: 'the length, flags or address are not accepted',
      });
    }
    if (r.deassign) this.#eventfds.removeIoeventfd(r);
    else this.#eventfds.addIoeventfd(r);
  }

  /**
   * KVM_CREATE_VCPU with its kvm_run mapping, then KVM_SET_CPUID2. Ids must be unique
   * and below KVM_CAP_MAX_VCPUS. By default the vCPU gets every leaf
   * KVM_GET_SUPPORTED_CPUID reports, with its own APIC id (as a VMM sets it: mainline
   * KVM refuses 64-bit state until CPUID offers long mode); `cpuid` gives another
   * table, or `false` leaves the kernel's empty one.
   */
  createVcpu(id: number, options?: { cpuid?: readonly CpuidEntry[] | false }): Vcpu {
    const op = 'vm.createVcpu';
    const fd = this.checkOpen(op);
    const max = this.cap(Cap.MaxVcpus) || this.cap(Cap.NrVcpus) || 1;
    const n = uint(id, op, 'id', max - 1);
    const o = readOptions<{ cpuid?: readonly CpuidEntry[] | false }>(options, op);
    if (o.cpuid !== undefined && o.cpuid !== false && !Array.isArray(o.cpuid))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.cpuid must be an array of CPUID entries or false`);
    if (this.#vcpus.has(n)) throw new StateError('ERR_IN_USE', `${op}: vCPU ${n} already exists`);
    if (this.#retiredVcpus.has(n))
      throw new StateError(
        'ERR_IN_USE',
        `${op}: vCPU id ${n} belonged to a vCPU closed earlier; the kernel keeps a VM's vCPUs until the VM closes, so the id cannot be reused (pick another)`,
      );
    const cpuid = o.cpuid === false ? undefined : (o.cpuid ?? cpuidForVcpu(this.kvm.getSupportedCpuid(), n));
    let vcpuFd: number;
    try {
      vcpuFd = native.createVcpu(fd, n);
    } catch (e) {
      throw explain(e, `${op}(${n})`, {
        EEXIST: `vCPU ${n} already exists in the kernel (it was created before, maybe outside this library)`,
        EINVAL: 'id out of range',
      });
    }
    this.#vcpusCreated++;
    const vcpu = Vcpu.create(this, n, vcpuFd, this.kvm.vcpuMmapSize());
    this.#vcpus.set(n, vcpu);
    if (cpuid) {
      try {
        vcpu.setCpuid(cpuid);
      } catch (e) {
        vcpu.close();
        throw e;
      }
    }
    return vcpu;
  }

  /** @internal */
  forgetVcpu(vcpu: Vcpu): void {
    if (this.#vcpus.get(vcpu.id) === vcpu) this.#vcpus.delete(vcpu.id);
    this.#retiredVcpus.add(vcpu.id);
  }

  /** The open vCPUs, by id. */
  get vcpus(): readonly Vcpu[] {
    return [...this.#vcpus.values()].sort((a, b) => a.id - b.id);
  }

  /**
   * KVM_ENABLE_CAP on the VM fd, e.g. KVM_CAP_EXIT_HYPERCALL with the bit of
   * KVM_HC_MAP_GPA_RANGE so the guest's conversion requests exit to userspace.
   */
  enableCap(cap: number, args: ReadonlyArray<number | bigint> = [], flags = 0): void {
    const op = 'vm.enableCap';
    enableCapOn(this.checkOpen(op), op, cap, args, flags, {
      EINVAL: 'the capability or its arguments are not supported by this VM',
    });
    // Enabling can change what the VM reports for the capability.
    this.#capCache[cap] = undefined;
  }

  /** Same as `close()`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
