/**
 * What guest_memfd and memfd files have in common: one owned fd, zero-copy views,
 * fallocate-based allocation and hole punching, and a notifier that hears about every
 * discard before and after it happens.
 */
import { ArgumentRangeError, ArgumentTypeError, closedError, explain, StateError } from '../core/errors';
import { native } from '../native';
import { closed, track, type FdCell } from '../core/ownership';
import { MemoryView, ViewSet } from './memory-view';
import {
  invalidate,
  invalidateSync,
  Notifier,
  quiet,
  type BoundRange,
  type Delivery,
  type FileRangeEvent,
  type GpaRangeEvent,
  type InvalidationCause,
} from '../events/notifier';
import { fileNumber, hex } from '../core/validate';
import { guardReceivers, invalidThis } from '../core/receiver';

/** fallocate(2) mode bits. @internal */
export const FALLOC_FL_KEEP_SIZE = 0x01;
/** @internal */
export const FALLOC_FL_PUNCH_HOLE = 0x02;

/** What `stat()` reports about a guest memory file. */
export interface FileStat {
  /** File size in bytes (st_size). */
  readonly size: number;
  /** Bytes of memory actually allocated to the file (st_blocks × 512). */
  readonly allocatedBytes: number;
  /** Preferred I/O block size (st_blksize). */
  readonly blockSize: number;
  /** Inode number. */
  readonly inode: number;
}

/** A slot's use of a range of a file. @internal */
export interface FileBinding {
  readonly vm: { readonly notifier: Notifier<GpaRangeEvent<any>> };
  readonly slot: number;
  readonly guestPhysAddr: bigint;
  readonly size: bigint;
  readonly fileOffset: number;
  /** 'userspace': the slot's shared backing; 'private': its guest_memfd range. */
  readonly role: 'userspace' | 'private';
}

const statScratch = new Float64Array(5);
// Hot calls bound once: a load from the addon's exports object costs more than the call.
const { fallocate, close: closeFd } = native;

/**
 * Base class of {@link GuestMemfd} and {@link Memfd}. Not constructed directly.
 */
export abstract class MemoryFile {
  static {
    guardReceivers(this, (o) => #fd in o, 'file', 'Memfd.create() or vm.createGuestMemfd()', ['punchHole']);
  }
  #fd: number;
  #fdCell: FdCell;
  #bindings: Set<FileBinding> | undefined;
  #size: number;
  #disposeWhenUnbound = false;
  #shrinkingTo: number | undefined;
  // Created on first use: most files are made, used and closed without either.
  #notifier: Notifier<FileRangeEvent<MemoryFile>> | undefined;
  #views: ViewSet | undefined;
  // What the punch fast path needs, asked of the subclass once (it never changes).
  #hot = { granule: 0, guards: false };

  /** @internal */
  protected constructor(fd: number, size: number, parentCell?: FdCell) {
    this.#fd = fd;
    this.#size = size;
    this.#fdCell = track(this, fd, parentCell);
  }

  /** Listeners for discards (and populates) of this file's ranges. */
  get notifier(): Notifier<FileRangeEvent<MemoryFile>> {
    return (this.#notifier ??= Notifier.create(() => this.populatedRanges()));
  }

  /** True when a listener is registered on this file (without creating the notifier). @internal */
  get listened(): boolean {
    return this.#notifier !== undefined && this.#notifier.size > 0;
  }

  /** The slots using this file. @internal */
  get bindings(): Set<FileBinding> {
    return (this.#bindings ??= new Set());
  }

  /** True while a memory slot uses the file. @internal */
  get bound(): boolean {
    return this.#bindings !== undefined && this.#bindings.size > 0;
  }

  /** The views handed out. @internal */
  get views(): ViewSet {
    return (this.#views ??= new ViewSet(this.description, this));
  }

  /** True when nobody can hear a discard: no listener and no slot. @internal */
  protected get unobserved(): boolean {
    return (this.#notifier === undefined || this.#notifier.size === 0) && !this.bound;
  }

  /** What the file is, for messages: `guest_memfd (fd 12)`. */
  abstract get description(): string;

  /** Allocation and punch granule: the page size, or the huge page size. */
  abstract get granule(): number;

  /** fallocate mode used by `allocate()`. @internal */
  protected abstract get allocateMode(): number;

  /** Called after the fd is closed. @internal */
  protected onClosed(): void {}

  /**
   * Refuses a discard that would make a live mapping fault with SIGBUS. Nothing to
   * check for ordinary files (a punched page refaults as zeros). @internal
   */
  protected checkDiscard(_op: string, _offset: number, _length: number): void {}

  /** True when checkDiscard has something to check (the punch fast path skips it otherwise). @internal */
  protected get guardsDiscards(): boolean {
    return false;
  }

  /** Refuses an allocation the file cannot make. @internal */
  protected checkAllocate(_op: string): void {}

  /** Forgets what the punch fast path learnt (after a change of `guardsDiscards`). @internal */
  protected relearn(): void {
    this.#hot = { granule: 0, guards: false };
  }

  /** Checks that mapping this range cannot SIGBUS, preparing it if needed. @internal */
  protected abstract prepareMap(offset: number, length: number): void;

  /** The file descriptor. Throws ERR_CLOSED after close. */
  get fd(): number {
    if (this.#fd < 0) throw closedError(this.description, `${this.kind}.fd`);
    return this.#fd;
  }

  /** True after `close()`. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /** File size in bytes (while a shrink is under way, the size it is shrinking to). */
  get size(): number {
    return this.#shrinkingTo !== undefined && this.#shrinkingTo < this.#size ? this.#shrinkingTo : this.#size;
  }

  /**
   * Announces (or ends, with undefined) a shrink in progress, so nothing maps or
   * binds the doomed tail while listeners are awaited. @internal
   */
  protected set shrinkingTo(size: number | undefined) {
    this.#shrinkingTo = size;
  }

  /** @internal */
  protected setSize(size: number): void {
    this.#size = size;
  }

  /** @internal */
  protected checkOpen(operation: string): number {
    if (this.#fd < 0) throw closedError(this.description, operation);
    return this.#fd;
  }

  #learn(): { granule: number; guards: boolean } {
    this.#hot = { granule: this.granule, guards: this.guardsDiscards };
    return this.#hot;
  }

  /** The range rule: non-empty, aligned to `granule`, inside the file. */
  #fits(o: number, n: number, granule: number): boolean {
    return (
      Number.isSafeInteger(o) && Number.isSafeInteger(n) && o >= 0 && n > 0 &&
      o % granule === 0 && n % granule === 0 && o + n <= this.size
    );
  }

  /** Validates `[offset, offset+length)` against granule and size. @internal */
  protected range(op: string, offset: unknown, length: unknown, granule = this.granule): [number, number] {
    const o = fileNumber(offset, op, 'offset');
    const n = fileNumber(length, op, 'length');
    if (this.#fits(o, n, granule)) return [o, n];
    // Otherwise say which part of the rule broke.
    if (o % granule !== 0)
      throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: offset ${hex(o)} is not aligned to ${granule} bytes`);
    if (n === 0) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: length must be greater than 0`);
    if (n % granule !== 0)
      throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: length ${hex(n)} is not a multiple of ${granule} bytes`);
    if (o + n > this.size)
      throw new ArgumentRangeError(
        'ERR_OUT_OF_RANGE',
        `${op}: range ${hex(o)}..${hex(o + n)} ends past the end of ${this.description} (size ${hex(this.size)})`,
      );
    return [o, n];
  }

  /**
   * Maps `[offset, offset+length)` (default: the whole file) shared and writable, as a
   * zero-copy {@link MemoryView}. Windows let you view files larger than one Buffer
   * can address (4 GiB on Node 20).
   */
  map(offset: number | bigint = 0, length?: number | bigint): MemoryView {
    const op = `${this.kind}.map`;
    this.checkOpen(op);
    const o = fileNumber(offset, op, 'offset');
    if (length === undefined && o >= this.size)
      throw new ArgumentRangeError(
        'ERR_OUT_OF_RANGE',
        `${op}: offset ${hex(o)} is at or past the end of ${this.description} (size ${hex(this.size)})`,
      );
    const [start, n] = this.range(op, o, length === undefined ? this.size - o : length, native.pageSize);
    if (n > MAX_VIEW)
      throw new ArgumentRangeError(
        'ERR_OUT_OF_RANGE',
        `${op}: length ${hex(n)} exceeds the largest Buffer (${hex(MAX_VIEW)}); map a window instead`,
      );
    this.prepareMap(start, n);
    let mapping;
    try {
      mapping = native.mapFile(this.#fd, start, n, true);
    } catch (e) {
      throw explain(e, `${op}(${hex(start)}, ${hex(n)})`, this.mapReasons);
    }
    return this.views.adopt(mapping, start, n);
  }

  /** Kernel refusals of mmap, explained per errno. @internal */
  protected get mapReasons(): Partial<Record<string, string>> {
    return {};
  }

  /** `'guest_memfd'` or `'memfd'`, for messages. @internal */
  protected abstract get kind(): string;

  /** The same as `kind`, for the views of this file. @internal */
  get fileKind(): string {
    return this.kind;
  }

  /**
   * Allocates backing memory for `[offset, offset+length)` (fallocate). The range must
   * lie inside the file and be aligned to {@link MemoryFile.granule}.
   */
  allocate(offset: number | bigint, length: number | bigint): void {
    const op = `${this.kind}.allocate`;
    const fd = this.checkOpen(op);
    const [o, n] = this.range(op, offset, length);
    this.checkAllocate(op);
    try {
      native.fallocate(fd, this.allocateMode, o, n);
    } catch (e) {
      throw explain(e, `${op}(${hex(o)}, ${hex(n)})`, {
        ENOSPC: 'no memory left to back the range (for hugetlb: no free huge pages reserved)',
        ENOMEM: 'out of memory',
        EOPNOTSUPP: 'this file does not support fallocate allocation',
      });
    }
  }

  /**
   * Discards `[offset, offset+length)`: the memory is freed and reads back as zeros.
   * Listeners of this file (and of every VM whose slots bind the range) hear
   * `invalidateStart` before the punch and `invalidateEnd` after it.
   */
  punchHole(offset: number | bigint, length: number | bigint): Promise<void> {
    if (typeof this !== 'object' || this === null || !(#fd in this))
      return Promise.reject(invalidThis('file.punchHole', 'MemoryFile', 'Memfd.create() or vm.createGuestMemfd()', this));
    // The common case without the general path's allocations: open, unobserved,
    // plain numbers that pass the same rule range() applies.
    if (
      this.#fd >= 0 &&
      typeof offset === 'number' &&
      typeof length === 'number' &&
      this.#fits(offset, length, this.#hot.granule || this.#learn().granule) &&
      !this.#hot.guards &&
      (this.#notifier === undefined || this.#notifier.size === 0) &&
      (this.#bindings === undefined || this.#bindings.size === 0)
    ) {
      try {
        this.#punch(this.#fd, offset, length);
        return RESOLVED;
      } catch (e) {
        return Promise.reject(e);
      }
    }
    const op = `${this.kind}.punchHole`;
    let fd: number, o: number, n: number;
    try {
      fd = this.checkOpen(op);
      [o, n] = this.range(op, offset, length);
      this.checkDiscard(op, o, n);
      if (this.unobserved) {
        // Nobody can be listening: no dispatch machinery on this hot path.
        this.#punch(fd, o, n);
        return RESOLVED;
      }
    } catch (e) {
      return Promise.reject(e);
    }
    return this.discard(o, n, 'punch-hole', () => {
      // Listeners were awaited: the file may be closed (and its fd number reused by
      // another file), or a view mapped over a hugetlb range. Check again, by object.
      const now = this.checkOpen(op);
      this.checkDiscard(op, o, n);
      this.#punch(now, o, n);
    });
  }

  #punch(fd: number, offset: number, length: number): void {
    try {
      fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    } catch (e) {
      throw explain(e, `${this.kind}.punchHole(${hex(offset)}, ${hex(length)})`, {
        EPERM: 'the file is sealed against writes (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE), perhaps by another process holding its fd',
      });
    }
  }

  /**
   * Punches many ranges in one native call (`[offset, length]` pairs). All ranges are
   * validated first; listeners hear one start/end pair per range.
   */
  async punchHoles(ranges: ReadonlyArray<readonly [number | bigint, number | bigint]>): Promise<void> {
    const op = `${this.kind}.punchHoles`;
    this.checkOpen(op);
    if (!Array.isArray(ranges))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: ranges must be an array of [offset, length] pairs`);
    const pairs = new BigUint64Array(ranges.length * 2);
    const checked: Array<[number, number]> = [];
    ranges.forEach((r, i) => {
      const [o, n] = this.range(`${op}[${i}]`, r?.[0], r?.[1]);
      this.checkDiscard(`${op}[${i}]`, o, n);
      pairs[2 * i] = BigInt(o);
      pairs[2 * i + 1] = BigInt(n);
      checked.push([o, n]);
    });
    const run = () => {
      // Listeners may have been awaited: the same checks again, on the open file.
      const now = this.checkOpen(op);
      checked.forEach(([o, n], i) => this.checkDiscard(`${op}[${i}]`, o, n));
      try {
        native.fallocateMany(now, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, pairs);
      } catch (e) {
        throw explain(e, `${op}: range ${(e as { applied?: number }).applied ?? 0} of ${ranges.length}`);
      }
    };
    if (this.unobserved) return run();
    const deliveries = checked.flatMap(([o, n]) => this.deliveries(o, n, 'punch-hole'));
    await invalidate(deliveries, run);
  }

  /** Runs a discard of a file range between invalidateStart and invalidateEnd. @internal */
  discard<T>(offset: number, length: number, cause: InvalidationCause, operation: () => T): Promise<T> {
    const deliveries = this.deliveries(offset, length, cause);
    if (quiet(deliveries)) {
      try {
        return Promise.resolve(operation());
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return invalidate(deliveries, operation);
  }

  /**
   * The bindings as events name them: a slot whose shared and private backing are
   * the same range of this file (a guest_memfd that is its own shared memory) binds
   * it twice, but is one slot to tell. @internal
   */
  #distinctBindings(): FileBinding[] {
    if (!this.#bindings || this.#bindings.size < 2) return this.#bindings ? [...this.#bindings] : [];
    const seen = new Map<object, Set<string>>();
    const out: FileBinding[] = [];
    for (const b of this.#bindings) {
      let keys = seen.get(b.vm);
      if (!keys) seen.set(b.vm, (keys = new Set()));
      const key = `${b.slot}@${b.fileOffset}`;
      if (keys.has(key)) continue;
      keys.add(key);
      out.push(b);
    }
    return out;
  }

  /** The file event and the GPA event of every bound VM for a range. @internal */
  deliveries(offset: number, length: number, cause: InvalidationCause): Delivery[] {
    const ranges = this.boundRanges(offset, length);
    const out: Delivery[] = [[this.notifier, { file: this, offset, length, cause, ranges }]];
    for (const b of this.#distinctBindings()) {
      const piece = clip(b, offset, length);
      if (piece)
        out.push([
          b.vm.notifier,
          { vm: b.vm, guestPhysAddr: piece.guestPhysAddr, size: piece.size, cause, ranges: [piece] },
        ]);
    }
    return out;
  }

  /** GPA ranges of slots bound to `[offset, offset+length)`. @internal */
  boundRanges(offset: number, length: number): BoundRange[] {
    const out: BoundRange[] = [];
    for (const b of this.#distinctBindings()) {
      const piece = clip(b, offset, length);
      if (piece) out.push(piece);
    }
    return out.sort((a, b) => (a.guestPhysAddr < b.guestPhysAddr ? -1 : 1));
  }

  /** What a replaying listener is told is populated now: the bound ranges. @internal */
  protected populatedRanges(): FileRangeEvent<MemoryFile>[] {
    return this.#distinctBindings().map((b) => ({
      file: this as MemoryFile,
      offset: b.fileOffset,
      length: Number(b.size),
      cause: 'replay' as const,
      ranges: [{ slot: b.slot, guestPhysAddr: b.guestPhysAddr, size: b.size }],
    }));
  }

  /** fstat(2) of the file. */
  stat(): FileStat {
    const fd = this.checkOpen(`${this.kind}.stat`);
    native.fstat(fd, statScratch);
    // Another holder of the fd may have resized the file: the kernel's answer wins.
    if (this.#shrinkingTo === undefined && statScratch[0] !== this.#size) this.#size = statScratch[0]!;
    return {
      size: statScratch[0]!,
      allocatedBytes: statScratch[1]! * 512,
      blockSize: statScratch[2]!,
      inode: statScratch[4]!,
    };
  }

  /** Registers a slot's use of this file. @internal */
  bind(binding: FileBinding): void {
    this.bindings.add(binding);
  }

  /** Drops a slot's use; closes the file if it was disposed while bound. @internal */
  unbind(binding: FileBinding): void {
    this.bindings.delete(binding);
    if (this.bindings.size === 0 && this.#disposeWhenUnbound) this.close();
  }

  /** @internal */
  protected inUseMessage(op: string): string {
    const slots = [...new Set(this.#distinctBindings().map((b) => `slot ${b.slot} (GPA ${hex(b.guestPhysAddr)}..${hex(b.guestPhysAddr + b.size)})`))];
    return `${op}: ${this.description} is bound by ${slots.join(', ')}; remove the slot${slots.length > 1 ? 's' : ''} first (or close the VM)`;
  }

  /**
   * Closes the file: listeners hear a `'close'` discard of the whole file, every view
   * is detached and unmapped, then the fd is closed. Idempotent. Refused while a
   * memory slot binds the file. Listener promises are not awaited here; use
   * {@link MemoryFile.closeAsync} for that.
   */
  close(): void {
    if (this.#fd < 0) return;
    if (this.bound) throw new StateError('ERR_IN_USE', this.inUseMessage(`${this.kind}.close`));
    if (this.unobserved) this.#release();
    else invalidateSync(this.deliveries(0, this.#size, 'close'), () => this.#release());
  }

  #release(): void {
    this.#views?.releaseAll();
    closed(this.#fdCell);
    closeFd(this.#fd);
    this.#fd = -1;
    this.onClosed();
  }

  /** Like `close()`, but awaits async listeners before and after. */
  async closeAsync(): Promise<void> {
    if (this.#fd < 0) return;
    if (this.bound) throw new StateError('ERR_IN_USE', this.inUseMessage(`${this.kind}.closeAsync`));
    const fd = this.#fd;
    await invalidate(this.deliveries(0, this.#size, 'close'), () => {
      if (this.#fd !== fd) return;
      // Listeners were awaited: a slot may have bound the file meanwhile.
      if (this.bound) throw new StateError('ERR_IN_USE', this.inUseMessage(`${this.kind}.closeAsync`));
      this.#release();
    });
  }

  /**
   * Closes now, or, while a memory slot still binds the file, as soon as the last
   * such slot is removed (so `using` declarations dispose cleanly in any order).
   */
  [Symbol.dispose](): void {
    if (this.bound) this.#disposeWhenUnbound = true;
    else this.close();
  }

  /** Awaiting form of `[Symbol.dispose]`. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.bound) this.#disposeWhenUnbound = true;
    else await this.closeAsync();
  }
}

const MAX_VIEW = 2 ** 32;
/** One settled promise for every synchronous completion (saves an allocation per call). */
const RESOLVED: Promise<void> = Promise.resolve();

function clip(b: FileBinding, offset: number, length: number): BoundRange | undefined {
  const start = Math.max(offset, b.fileOffset);
  const end = Math.min(offset + length, b.fileOffset + Number(b.size));
  if (start >= end) return undefined;
  return { slot: b.slot, guestPhysAddr: b.guestPhysAddr + BigInt(start - b.fileOffset), size: BigInt(end - start) };
}
