/**
 * The record of KVM memory attributes (shared/private) per guest physical page.
 *
 * KVM has `KVM_SET_MEMORY_ATTRIBUTES` but no way to read attributes back, so the VM
 * keeps this map in step with every successful ioctl and answers `vm.attributes.at()`
 * and `vm.attributes.ranges()` from it. It is page-granular (4096, the granule the
 * ioctl requires) and covers the whole 64-bit guest physical address space; internally
 * it stores page frame numbers (gpa >> 12 < 2^52, exact in a double) in an
 * {@link IntervalMap}, and it reports addresses as bigint.
 *
 * @packageDocumentation
 */

import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import { IntervalMap, IntervalMapSnapshot } from './interval-map';
import { guardReceivers } from '../core/receiver';

/** The page size KVM_SET_MEMORY_ATTRIBUTES works in: addresses and sizes must be multiples. */
export const PAGE_SIZE = 4096;

/** `KVM_MEMORY_ATTRIBUTE_PRIVATE` (include/uapi/linux/kvm.h): the page is private to the guest. */
export const KVM_MEMORY_ATTRIBUTE_PRIVATE: bigint = 1n << 3n;

/** Whether a guest page is private (backed by guest_memfd) or shared (userspace memory). */
export type MemoryState = 'private' | 'shared';

/** One run of equal attributes, as reported by {@link AttributeMap.ranges}. */
export interface AttributeRange {
  /** First guest physical address of the run (page-aligned). */
  guestPhysAddr: bigint;
  /** Length of the run in bytes (a multiple of the page size). */
  size: bigint;
  /** The KVM attribute bitmask the run holds (`0n` = shared, no attributes). */
  attributes: bigint;
  /** `'private'` if the PRIVATE bit is set in `attributes`, else `'shared'`. */
  state: MemoryState;
}

/** Options for {@link AttributeMap.ranges}. */
export interface AttributeRangesOptions {
  /**
   * Also report the shared (attribute-free) gaps, so the runs tile the requested range.
   * By default only ranges with attributes (private ranges) are reported.
   */
  includeShared?: boolean;
}

/** Options for {@link AttributeMap}'s constructor. */
export interface AttributeMapOptions {
  /** B+tree node capacity of the underlying {@link IntervalMap} (tests use tiny values). */
  nodeCapacity?: number;
}

const PAGE_SHIFT = 12n;
const PAGE_MASK = 4095n;
/** Guest physical addresses are 64-bit: every range must end at or below 2^64. */
const ADDRESS_LIMIT = 1n << 64n;
/** The address space in pages: 2^52, which a double holds exactly. */
const PFN_LIMIT = 2 ** 52;
const ATTRIBUTES_LIMIT = 1n << 64n;

/** An argument error with a Node-style `code`, as the library's other errors have. */
export type ArgumentError = ArgumentTypeError | ArgumentRangeError;

/** Hex for integers (addresses read best in hex), plain text for anything else. */
function formatValue(value: number | bigint): string {
  if (typeof value === 'number' && !Number.isInteger(value)) return String(value);
  return value < 0 ? `-0x${(-value).toString(16)}` : `0x${value.toString(16)}`;
}

function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return `type string (${JSON.stringify(value)})`;
  if (typeof value === 'object') return `an instance of ${value.constructor?.name ?? 'Object'}`;
  return `type ${typeof value}`;
}

/**
 * Checks that `value` is a non-negative integer (a safe integer if a number) and
 * returns it as a bigint. Unsafe numbers are refused rather than rounded: a rounded
 * address would silently name a different page.
 */
function integerArg(op: string, name: string, value: unknown): bigint {
  if (typeof value === 'bigint') {
    if (value < 0n) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${name} ${formatValue(value)} must not be negative`);
    }
    return value;
  }
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${name} ${formatValue(value)} is not an integer`);
    }
    if (value < 0) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${name} ${formatValue(value)} must not be negative`);
    }
    if (!Number.isSafeInteger(value)) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE',
        `${op}: ${name} ${formatValue(value)} is above Number.MAX_SAFE_INTEGER and may have been rounded; pass a bigint`,
      );
    }
    return BigInt(value);
  }
  throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE',
    `${op}: ${name} must be a number or bigint (received ${describeType(value)})`,
  );
}

/** An address that must name a byte of the 64-bit space; returns its page number. */
function addressArg(op: string, name: string, value: unknown, aligned: boolean): number {
  // Fast path for the common case: a page-aligned safe-integer number.
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) {
    if (aligned && value % PAGE_SIZE !== 0) {
      throw new ArgumentRangeError('ERR_UNALIGNED',
        `${op}: ${name} ${formatValue(value)} is not page-aligned (${PAGE_SIZE})`,
      );
    }
    return Math.floor(value / PAGE_SIZE);
  }
  // The same for a bigint in range (the VM's own callers pass bigints).
  if (typeof value === 'bigint' && value >= 0n && value < ADDRESS_LIMIT && (!aligned || (value & PAGE_MASK) === 0n))
    return Number(value >> PAGE_SHIFT);
  const v = integerArg(op, name, value);
  if (v >= ADDRESS_LIMIT) {
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE',
      `${op}: ${name} ${formatValue(v)} is beyond the 64-bit guest physical address space`,
    );
  }
  if (aligned && (v & PAGE_MASK) !== 0n) {
    throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: ${name} ${formatValue(v)} is not page-aligned (${PAGE_SIZE})`);
  }
  return Number(v >> PAGE_SHIFT);
}

/**
 * A `(guestPhysAddr, size)` pair as KVM_SET_MEMORY_ATTRIBUTES takes it: both
 * page-aligned, size > 0, end <= 2^64. Returns the page range `[start, end)`.
 */
function rangeArg(op: string, gpa: unknown, size: unknown): [number, number] {
  const start = addressArg(op, 'guestPhysAddr', gpa, true);
  // Fast path, as in addressArg: a positive, page-aligned, safe-integer number size.
  if (typeof size === 'number' && Number.isSafeInteger(size) && size > 0 && size % PAGE_SIZE === 0) {
    const pages = size / PAGE_SIZE;
    if (start + pages <= PFN_LIMIT) return [start, start + pages];
  }
  if (typeof size === 'bigint' && size > 0n && size <= ADDRESS_LIMIT && (size & PAGE_MASK) === 0n) {
    const pages = Number(size >> PAGE_SHIFT);
    if (start + pages <= PFN_LIMIT) return [start, start + pages];
  }
  const v = integerArg(op, 'size', size);
  if (v === 0n) {
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: size 0x0 must be greater than 0`);
  }
  if ((v & PAGE_MASK) !== 0n) {
    throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: size ${formatValue(v)} is not page-aligned (${PAGE_SIZE})`);
  }
  // Both terms are below 2^53 (start < 2^52; pages <= 2^52 or it is over anyway), so
  // the sum is exact.
  const pages = v > ADDRESS_LIMIT ? Infinity : Number(v >> PAGE_SHIFT);
  if (start + pages > PFN_LIMIT) {
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE',
      `${op}: guestPhysAddr ${formatValue(gpa as number | bigint)} + size ${formatValue(v)} ends beyond 2^64, the end of the guest physical address space`,
    );
  }
  return [start, start + pages];
}

/** A KVM attribute bitmask: an integer in [0, 2^64). */
function attributesArg(op: string, value: unknown): bigint {
  if (typeof value === 'bigint' && value >= 0n && value < ATTRIBUTES_LIMIT) return value;
  const v = integerArg(op, 'attributes', value);
  if (v >= ATTRIBUTES_LIMIT) {
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: attributes ${formatValue(v)} does not fit in 64 bits`);
  }
  return v;
}

function stateOf(attributes: bigint): MemoryState {
  return (attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE) !== 0n ? 'private' : 'shared';
}

function toRange(start: number, end: number, attributes: bigint): AttributeRange {
  return {
    guestPhysAddr: BigInt(start) << PAGE_SHIFT,
    size: BigInt(end - start) << PAGE_SHIFT,
    attributes,
    state: stateOf(attributes),
  };
}

const snapshotInner = new WeakMap<AttributeMapSnapshot, { owner: AttributeMap; inner: IntervalMapSnapshot<bigint> }>();

/**
 * The attributes of a window of guest physical addresses at one moment, taken by
 * {@link AttributeMap.snapshot} to roll the record back if a conversion fails midway.
 */
export class AttributeMapSnapshot {
  /** First guest physical address the snapshot covers. */
  readonly guestPhysAddr: bigint;
  /** Length in bytes of the window the snapshot covers. */
  readonly size: bigint;

  /** @internal */
  static create(guestPhysAddr: bigint, size: bigint): AttributeMapSnapshot {
    return new AttributeMapSnapshot(guestPhysAddr, size);
  }

  /** Use {@link AttributeMap.snapshot}. */
  private constructor(guestPhysAddr: bigint, size: bigint) {
    this.guestPhysAddr = guestPhysAddr;
    this.size = size;
  }
}

/**
 * The shared/private record of a VM's guest physical address space (`vm.attributes`).
 *
 * Every page starts shared (attributes `0n`). The VM calls {@link AttributeMap.set} after
 * each successful `KVM_SET_MEMORY_ATTRIBUTES`; everything else reads. Runs of equal
 * attributes are merged, so the map holds one entry per private run, not per page;
 * lookups are O(log n).
 *
 * Address arguments accept `number | bigint` (addresses of 2^53 and above must be
 * bigints); results report `bigint`. Bad arguments throw `TypeError`/`RangeError` with
 * an `ERR_*` `code` (`ERR_INVALID_ARG_TYPE`, `ERR_OUT_OF_RANGE`, `ERR_UNALIGNED`).
 *
 * @example
 * ```ts
 * vm.attributes.at(0x1000n);                 // 'shared'
 * await vm.convert(0x1000n, 0x2000n, 'private');
 * vm.attributes.ranges();
 * // [{ guestPhysAddr: 0x1000n, size: 0x2000n, attributes: 8n, state: 'private' }]
 * ```
 */
export class AttributeMap {
  static {
    guardReceivers(this, (o) => #made in o, 'attributes', 'new AttributeMap() or vm.attributes');
  }
  /** Brand: set by the constructor only. */
  readonly #made = true;
  private readonly map: IntervalMap<bigint>;
  /**
   * One bigint per distinct attribute value, so a million runs share a handful of
   * bigint objects instead of holding one each.
   */
  private readonly interned = new Map<bigint, bigint>([[0n, 0n]]);

  /** @param options - tuning for tests; the defaults suit real use. */
  constructor(options: AttributeMapOptions = {}) {
    const mapOptions: { limit: number; nodeCapacity?: number } = { limit: PFN_LIMIT };
    if (options.nodeCapacity !== undefined) mapOptions.nodeCapacity = options.nodeCapacity;
    this.map = new IntervalMap<bigint>(0n, mapOptions);
  }

  /** Number of stored runs (runs with attributes; shared gaps are not stored). */
  get count(): number {
    return this.map.size;
  }

  /**
   * Whether the page holding `gpa` is private or shared. `gpa` need not be aligned.
   * @throws `ERR_INVALID_ARG_TYPE` / `ERR_OUT_OF_RANGE` for a non-address.
   */
  at(gpa: number | bigint): MemoryState {
    return stateOf(this.map.get(addressArg('attributes.at', 'guestPhysAddr', gpa, false)));
  }

  /**
   * The attribute bitmask of the page holding `gpa` (`0n` if it has none).
   * @throws like {@link AttributeMap.at}.
   */
  attributesAt(gpa: number | bigint): bigint {
    return this.map.get(addressArg('attributes.attributesAt', 'guestPhysAddr', gpa, false));
  }

  /**
   * The maximal run of equal attributes containing `gpa` (a private run, or the shared
   * gap around `gpa`).
   * @throws like {@link AttributeMap.at}.
   */
  rangeAt(gpa: number | bigint): AttributeRange {
    const r = this.map.entryAt(addressArg('attributes.rangeAt', 'guestPhysAddr', gpa, false));
    return toRange(r.start, r.end, r.value);
  }

  /**
   * The runs overlapping `[from, to)`, clipped to it, in address order: by default only
   * runs with attributes (private runs); with `includeShared` the shared gaps too.
   * @param from - first address, page-aligned (default 0).
   * @param to - end address, page-aligned, `>= from` (default 2^64).
   * @throws `ERR_INVALID_ARG_TYPE` / `ERR_OUT_OF_RANGE` / `ERR_UNALIGNED`.
   */
  ranges(options?: AttributeRangesOptions): AttributeRange[];
  /** The runs overlapping `[from, to)`, as above, with the bounds given positionally. */
  ranges(from: number | bigint, to?: number | bigint, options?: AttributeRangesOptions): AttributeRange[];
  ranges(
    fromOrOptions?: number | bigint | AttributeRangesOptions,
    to?: number | bigint,
    options?: AttributeRangesOptions,
  ): AttributeRange[] {
    const op = 'attributes.ranges';
    let from: unknown = fromOrOptions;
    if (typeof fromOrOptions === 'object' && fromOrOptions !== null) {
      options = fromOrOptions;
      from = undefined;
    }
    const start = from === undefined ? 0 : addressArg(op, 'from', from, true);
    let end = PFN_LIMIT;
    if (to !== undefined) {
      // `to` may be exactly 2^64 (the end of the space), which addressArg refuses.
      const v = integerArg(op, 'to', to);
      if (v > ADDRESS_LIMIT) {
        throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: to ${formatValue(v)} is beyond 2^64`);
      }
      if ((v & PAGE_MASK) !== 0n) {
        throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: to ${formatValue(v)} is not page-aligned (${PAGE_SIZE})`);
      }
      end = Number(v >> PAGE_SHIFT);
    }
    if (start > end) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE',
        `${op}: from ${formatValue(from as number | bigint)} is after to ${formatValue(to as number | bigint)}`,
      );
    }
    const out: AttributeRange[] = [];
    for (const r of this.map.ranges(start, end, { includeDefault: options?.includeShared === true })) {
      out.push(toRange(r.start, r.end, r.value));
    }
    return out;
  }

  /**
   * The sub-ranges of `[gpa, gpa + size)` whose attributes differ from `attributes`, in
   * address order, each with its current attributes and state. Conversion applies the
   * ioctl and discards only on these, which makes converting a range twice a no-op.
   * @throws `ERR_INVALID_ARG_TYPE` / `ERR_OUT_OF_RANGE` / `ERR_UNALIGNED`.
   */
  differing(gpa: number | bigint, size: number | bigint, attributes: number | bigint): AttributeRange[] {
    const op = 'attributes.differing';
    const [start, end] = rangeArg(op, gpa, size);
    const attrs = attributesArg(op, attributes);
    return this.map.diff(start, end, attrs).map((r) => toRange(r.start, r.end, r.value));
  }

  /**
   * Records that `[gpa, gpa + size)` now has `attributes`.
   *
   * Internal to the library: the VM calls this only after `KVM_SET_MEMORY_ATTRIBUTES`
   * succeeded for exactly this range and value. Calling it at any other time makes the
   * record disagree with the kernel, which has no way to be asked.
   * @throws `ERR_INVALID_ARG_TYPE` / `ERR_OUT_OF_RANGE` / `ERR_UNALIGNED`, with the map
   * unchanged.
   */
  set(gpa: number | bigint, size: number | bigint, attributes: number | bigint): void {
    const op = 'attributes.set';
    const [start, end] = rangeArg(op, gpa, size);
    const attrs = attributesArg(op, attributes);
    let value = this.interned.get(attrs);
    if (value === undefined) {
      value = attrs;
      this.interned.set(attrs, attrs);
    }
    this.map.set(start, end, value);
  }

  /**
   * Captures the attributes of `[gpa, gpa + size)` (default: the whole space) so that
   * {@link AttributeMap.restore} can roll them back. Snapshot only the window a
   * conversion touches: the cost is O(log n + k) for the k runs inside it.
   * @throws like {@link AttributeMap.set}.
   */
  snapshot(gpa?: number | bigint, size?: number | bigint): AttributeMapSnapshot {
    let start = 0;
    let end = PFN_LIMIT;
    if (gpa !== undefined || size !== undefined) {
      [start, end] = rangeArg('attributes.snapshot', gpa, size);
    }
    const snap = AttributeMapSnapshot.create(BigInt(start) << PAGE_SHIFT, BigInt(end - start) << PAGE_SHIFT);
    snapshotInner.set(snap, { owner: this, inner: this.map.snapshot(start, end) });
    return snap;
  }

  /**
   * Puts the snapshot's window back exactly as it was when the snapshot was taken;
   * addresses outside the window are left alone. The same snapshot can be restored
   * again. Like {@link AttributeMap.set}, only for keeping the record in step with the
   * kernel (e.g. after rolling the kernel's attributes back too).
   * @throws TypeError `ERR_INVALID_ARG_VALUE` if the snapshot came from another map.
   */
  restore(snapshot: AttributeMapSnapshot): void {
    const data = snapshot instanceof AttributeMapSnapshot ? snapshotInner.get(snapshot) : undefined;
    if (data === undefined || data.owner !== this) {
      throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE',
        'attributes.restore: snapshot was not taken from this attribute map',
      );
    }
    this.map.restore(data.inner);
  }

  /** Forgets every run: the whole space reads as shared again (e.g. a new VM). */
  clear(): void {
    this.map.clear();
  }
}
