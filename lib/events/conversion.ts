/**
 * Shared/private conversion, done the way the best VMMs do it and then some:
 *
 * - to private: populate(private backing) → invalidateStart(shared backing) →
 *   KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) → discard the shared copy → invalidateEnd.
 * - to shared: populate(shared backing) → invalidateStart(guest_memfd) →
 *   KVM_SET_MEMORY_ATTRIBUTES(0) → punch the guest_memfd range → invalidateEnd.
 *
 * Only sub-ranges whose state differs are touched (idempotent). Every `populate`
 * listener is asked before anything changes, so a veto leaves the kernel and the
 * attribute map exactly as they were (listeners that had already accepted hear an
 * invalidateStart/End pair for what they accepted). If the kernel refuses part-way,
 * the sub-ranges already applied stay applied (the map records them, their stale
 * copies are discarded) and a {@link ConversionError} says which were applied and
 * which were not.
 *
 * The engine talks to the kernel only through {@link ConversionBackend}, the seam
 * unit tests drive with a plain TypeScript attribute setter.
 */
import type { AttributeMap } from './attribute-map';
import { MemoryAttribute } from '../core/caps';
import { ArgumentRangeError, StateError } from '../core/errors';
import {
  invalidate,
  rollBack,
  type BoundRange,
  type Delivery,
  type InvalidationCause,
  type Notifier,
  type Registered,
} from './notifier';
import { hex } from '../core/validate';

/** A guest-physical range. */
export interface GpaRange {
  /** First guest physical address of the range. */
  readonly guestPhysAddr: bigint;
  /** Length of the range in bytes. */
  readonly size: bigint;
}

/** Where one copy of a piece of guest memory lives. */
export interface BackingRef {
  /** The file (GuestMemfd, Memfd), or null for anonymous memory. */
  readonly file: { readonly notifier: Notifier<any>; readonly listened?: boolean } | null;
  /** Offset of the piece in the file (or in the anonymous mapping). */
  readonly offset: number;
}

/** A converted range cut at slot boundaries: what the engine works on. */
export interface ConversionPiece extends GpaRange {
  /** Slot id. */
  readonly slot: number;
  /** The shared copy (the slot's userspace memory). */
  readonly shared: BackingRef;
  /** The private copy (the slot's guest_memfd range). */
  readonly private: BackingRef;
  /**
   * True when shared and private are the same pages (the guest_memfd is its own
   * shared backing): nothing is discarded, the state flips in place.
   */
  readonly inPlace: boolean;
}

/** What the engine needs from the kernel. */
export interface ConversionBackend {
  /**
   * Called once every listener has been awaited, just before anything changes:
   * throws if the plan no longer holds (a slot was removed while listeners ran). Its
   * error reaches the caller unchanged; nothing has been applied.
   */
  recheck?(): void;
  /**
   * Applies `attributes` to each range in order (KVM_SET_MEMORY_ATTRIBUTES). On
   * failure throws an error whose `applied` property counts the ranges that took.
   */
  setAttributes(ranges: readonly GpaRange[], attributes: bigint): void;
  /** Discards the shared copy of a piece (punch the file, or drop anonymous pages). */
  discardShared(piece: ConversionPiece): void;
  /** Discards the private copy of a piece (punch the guest_memfd). */
  discardPrivate(piece: ConversionPiece): void;
  /**
   * Before an in-place piece turns private: make host mappings of it safe (a touch
   * of a private guest_memfd page through a mapping raises SIGBUS), e.g. detach the
   * views over it.
   */
  revokeShared?(piece: ConversionPiece): void;
}

/** Everything the engine needs from a VM. */
export interface ConversionContext {
  /** The VM, as events name it. */
  readonly vm: unknown;
  /** The VM's notifier (GPA view). */
  readonly notifier: Notifier<any>;
  /** The record of attributes, updated only after the kernel accepted. */
  readonly attributes: AttributeMap;
  /** Cuts a range into slot pieces; throws if any part is not guest_memfd-backed. */
  pieces(range: GpaRange): ConversionPiece[];
  /** The kernel. */
  readonly backend: ConversionBackend;
}

/** A conversion request. */
export interface ConversionRequest extends GpaRange {
  /** The state to convert the range to: KVM_MEMORY_ATTRIBUTE_PRIVATE set (`'private'`) or cleared (`'shared'`). */
  readonly to: 'private' | 'shared';
}

/** What a conversion did. */
export interface ConversionResult {
  /** Sub-ranges whose state changed. */
  readonly converted: readonly (GpaRange & { readonly to: 'private' | 'shared' })[];
  /** Bytes that were already in the requested state (untouched). */
  readonly unchangedBytes: bigint;
}

/** A conversion the kernel refused part-way. */
export class ConversionError extends Error {
  /** Always `'ERR_CONVERSION_PARTIAL'`. */
  readonly code = 'ERR_CONVERSION_PARTIAL';
  /** Sub-ranges converted (kernel, map and discard all done). */
  readonly applied: readonly GpaRange[];
  /** The sub-range the kernel refused. */
  readonly failed: GpaRange;
  /** Sub-ranges not attempted. */
  readonly notApplied: readonly GpaRange[];

  /** Records the kernel's error as `cause` and how far the conversion got. */
  constructor(cause: unknown, applied: GpaRange[], failed: GpaRange, notApplied: GpaRange[]) {
    const list = (rs: readonly GpaRange[]) => (rs.length ? rs.map((r) => `${hex(r.guestPhysAddr)}..${hex(r.guestPhysAddr + r.size)}`).join(', ') : 'none');
    super(
      `vm.convert: the kernel refused ${hex(failed.guestPhysAddr)}..${hex(failed.guestPhysAddr + failed.size)} (${cause instanceof Error ? cause.message : String(cause)}); applied: ${list(applied)}; not applied: ${list(notApplied)}`,
      { cause },
    );
    this.name = 'ConversionError';
    this.applied = applied;
    this.failed = failed;
    this.notApplied = notApplied;
  }
}

const PAGE = 4096n;

/** Validates a request's alignment. @internal */
export function checkRequest(op: string, r: ConversionRequest): void {
  if (r.to !== 'private' && r.to !== 'shared')
    throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: to must be 'private' or 'shared', got ${String(r.to)}`);
  if (r.size <= 0n) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: size must be greater than 0`);
  if (r.guestPhysAddr % PAGE !== 0n)
    throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: guestPhysAddr ${hex(r.guestPhysAddr)} is not page-aligned (4096)`);
  if (r.size % PAGE !== 0n) throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: size ${hex(r.size)} is not page-aligned (4096)`);
  if (r.guestPhysAddr + r.size > 1n << 64n) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: range wraps past 2^64`);
}

/** Cuts `[gpa, gpa+size)` out of a piece. */
function clipPiece(p: ConversionPiece, r: GpaRange): ConversionPiece | undefined {
  const start = p.guestPhysAddr > r.guestPhysAddr ? p.guestPhysAddr : r.guestPhysAddr;
  const pEnd = p.guestPhysAddr + p.size;
  const rEnd = r.guestPhysAddr + r.size;
  const end = pEnd < rEnd ? pEnd : rEnd;
  if (start >= end) return undefined;
  if (start === p.guestPhysAddr && end === pEnd) return p;
  const delta = Number(start - p.guestPhysAddr);
  return {
    ...p,
    guestPhysAddr: start,
    size: end - start,
    shared: { file: p.shared.file, offset: p.shared.offset + delta },
    private: { file: p.private.file, offset: p.private.offset + delta },
  };
}

/** One unit of work: a differing sub-range and its slot pieces. */
interface Work {
  readonly range: GpaRange;
  readonly to: 'private' | 'shared';
  readonly pieces: ConversionPiece[];
}

function fileDelivery(ref: BackingRef, piece: ConversionPiece, cause: InvalidationCause): Delivery | undefined {
  if (!ref.file) return undefined;
  const ranges: BoundRange[] = [{ slot: piece.slot, guestPhysAddr: piece.guestPhysAddr, size: piece.size }];
  return [ref.file.notifier, { file: ref.file, offset: ref.offset, length: Number(piece.size), cause, ranges }];
}

function vmDelivery(ctx: ConversionContext, w: Work, cause: InvalidationCause): Delivery {
  return [
    ctx.notifier,
    {
      vm: ctx.vm,
      guestPhysAddr: w.range.guestPhysAddr,
      size: w.range.size,
      cause,
      state: w.to,
      ranges: w.pieces.map((p) => ({ slot: p.slot, guestPhysAddr: p.guestPhysAddr, size: p.size })),
    },
  ];
}

/** Refuses overlapping requests: a batch converts disjoint ranges. @internal */
export function checkDisjoint(op: string, requests: readonly ConversionRequest[]): void {
  if (requests.length < 2) return;
  const order = requests.map((r, i) => ({ r, i })).sort((a, b) => (a.r.guestPhysAddr < b.r.guestPhysAddr ? -1 : a.r.guestPhysAddr > b.r.guestPhysAddr ? 1 : 0));
  for (let k = 1; k < order.length; k++) {
    const a = order[k - 1]!;
    const b = order[k]!;
    if (b.r.guestPhysAddr < a.r.guestPhysAddr + a.r.size) {
      const [x, y] = a.i < b.i ? [a, b] : [b, a];
      throw new ArgumentRangeError(
        'ERR_OVERLAP',
        `${op}: requests[${x.i}] (${hex(x.r.guestPhysAddr)}..${hex(x.r.guestPhysAddr + x.r.size)}) and requests[${y.i}] (${hex(y.r.guestPhysAddr)}..${hex(y.r.guestPhysAddr + y.r.size)}) overlap; a batch converts disjoint ranges`,
      );
    }
  }
}

/**
 * Converts every request (in one batch of kernel calls per direction), in the
 * documented order. @internal
 */
export async function convertRanges(ctx: ConversionContext, requests: readonly ConversionRequest[]): Promise<ConversionResult> {
  checkDisjoint('vm.convertMany', requests);
  // Plan: the sub-ranges that differ, cut into slot pieces. Coverage errors are
  // thrown here, before any listener or kernel call.
  const work: Work[] = [];
  let unchanged = 0n;
  for (const r of requests) {
    const all = ctx.pieces(r);
    const target = r.to === 'private' ? MemoryAttribute.Private : MemoryAttribute.Shared;
    const differ = ctx.attributes.differing(r.guestPhysAddr, r.size, target);
    let changed = 0n;
    for (const d of differ) {
      const pieces = all.map((p) => clipPiece(p, d)).filter((p): p is ConversionPiece => p !== undefined);
      work.push({ range: { guestPhysAddr: d.guestPhysAddr, size: d.size }, to: r.to, pieces });
      changed += d.size;
    }
    unchanged += r.size - changed;
  }
  if (work.length === 0) return { converted: [], unchangedBytes: unchanged };

  // No listener on the VM or any file involved: nothing to populate or invalidate,
  // and no event needs building. Nothing is awaited, so none can register meanwhile.
  if (unheard(ctx, work)) return settle(apply(ctx, work), unchanged);

  // 1. populate, for everything, before anything changes. Acceptance is tracked per
  // listener, so on a veto exactly the listeners that accepted hear the rollback.
  const accepted: Accepted[] = [];
  for (const w of work) {
    const cause: InvalidationCause = w.to === 'private' ? 'convert-to-private' : 'convert-to-shared';
    const deliveries: Delivery[] = [vmDelivery(ctx, w, cause)];
    for (const p of w.pieces) {
      const d = fileDelivery(w.to === 'private' ? p.private : p.shared, p, cause);
      if (d) deliveries.push(d);
    }
    for (const [notifier, event] of deliveries) {
      for (const listener of notifier.snapshot() as readonly Registered<unknown>[]) {
        if (!listener.populate) continue;
        try {
          await listener.populate.call(listener.target, event);
        } catch (veto) {
          // Nothing changed in the kernel or the map; tell whoever accepted.
          await rollBack(accepted);
          throw veto;
        }
        accepted.push([notifier as Notifier<unknown>, listener, event, w]);
      }
    }
  }

  // 2. invalidateStart (stale side) → kernel → discard → invalidateEnd.
  const invalidations: Delivery[] = [];
  for (const w of work) {
    const cause: InvalidationCause = w.to === 'private' ? 'convert-to-private' : 'convert-to-shared';
    invalidations.push(vmDelivery(ctx, w, cause));
    for (const p of w.pieces) {
      if (p.inPlace) continue;
      const d = fileDelivery(w.to === 'private' ? p.shared : p.private, p, cause);
      if (d) invalidations.push(d);
    }
  }
  let outcome: Outcome | undefined;
  await invalidate(invalidations, () => {
    outcome = apply(ctx, work);
  });
  await rollBackFor(outcome!, accepted);
  return settle(outcome!, unchanged);
}

type Accepted = readonly [Notifier<unknown>, Registered<unknown>, unknown, Work];

/** What applying the work did: the engine's answer, or what to throw. */
interface Outcome {
  readonly converted: Array<GpaRange & { to: 'private' | 'shared' }>;
  readonly done: Set<Work>;
  readonly refusal?: ConversionError;
  readonly discardFailure?: unknown;
  readonly stale?: { error: unknown };
}

/** True when no listener can hear any of the work: not on the VM, not on any file. */
function unheard(ctx: ConversionContext, work: readonly Work[]): boolean {
  if (ctx.notifier.size > 0) return false;
  const heard = (f: BackingRef['file']) => f !== null && (f.listened ?? f.notifier.size > 0);
  for (const w of work) for (const p of w.pieces) if (heard(p.shared.file) || heard(p.private.file)) return false;
  return true;
}

/**
 * The kernel part, between invalidateStart and invalidateEnd: recheck the plan, then
 * per direction (private first) the attributes, the map, and the discards.
 */
function apply(ctx: ConversionContext, work: readonly Work[]): Outcome {
  const converted: Array<GpaRange & { to: 'private' | 'shared' }> = [];
  const done = new Set<Work>();
  try {
    ctx.backend.recheck?.();
  } catch (error) {
    return { converted, done, stale: { error } };
  }
  let discardFailure: unknown;
  for (const to of ['private', 'shared'] as const) {
    const batch = work.filter((w) => w.to === to);
    if (batch.length === 0) continue;
    const attrs = to === 'private' ? MemoryAttribute.Private : MemoryAttribute.Shared;
    if (to === 'private' && ctx.backend.revokeShared)
      for (const w of batch) for (const p of w.pieces) if (p.inPlace) ctx.backend.revokeShared(p);
    let applied = batch.length;
    let failed = false;
    let failure: unknown;
    try {
      ctx.backend.setAttributes(
        batch.map((w) => w.range),
        attrs,
      );
    } catch (e) {
      failed = true;
      failure = e;
      // The kernel took the first `applied` ranges; never trust it past the batch.
      const claimed = Math.trunc(Number((e as { applied?: unknown } | undefined)?.applied ?? 0));
      applied = Math.min(batch.length - 1, Math.max(0, Number.isNaN(claimed) ? 0 : claimed));
    }
    // Record every applied range before discarding anything, so the map agrees
    // with the kernel even if a discard fails.
    for (let i = 0; i < applied; i++) {
      const w = batch[i]!;
      ctx.attributes.set(w.range.guestPhysAddr, w.range.size, attrs);
      converted.push({ guestPhysAddr: w.range.guestPhysAddr, size: w.range.size, to });
      done.add(w);
    }
    for (let i = 0; i < applied; i++)
      for (const p of batch[i]!.pieces) {
        if (p.inPlace) continue;
        try {
          if (to === 'private') ctx.backend.discardShared(p);
          else ctx.backend.discardPrivate(p);
        } catch (e) {
          discardFailure ??= e;
        }
      }
    if (failed) {
      // Private work runs first, so a failure there leaves all shared work undone.
      const later = to === 'private' ? work.filter((w) => w.to === 'shared') : [];
      const refusal = new ConversionError(
        failure,
        converted.map(({ guestPhysAddr, size }) => ({ guestPhysAddr, size })),
        batch[applied]!.range,
        [...batch.slice(applied + 1), ...later].map((w) => w.range),
      );
      return { converted, done, refusal, discardFailure };
    }
  }
  return { converted, done, discardFailure };
}

/** The rollbacks an outcome calls for: populate listeners whose ranges never became usable. */
async function rollBackFor(outcome: Outcome, accepted: readonly Accepted[]): Promise<void> {
  // The plan went stale while listeners ran: nothing changed; whoever accepted a
  // populate hears it undone.
  if (outcome.stale) await rollBack(accepted);
  else if (outcome.refusal) await rollBack(accepted.filter((a) => !outcome.done.has(a[3])));
}

/** Turns an outcome into the result, or throws what it calls for. */
function settle(outcome: Outcome, unchanged: bigint): ConversionResult {
  const { converted, refusal, discardFailure, stale } = outcome;
  // The caller gets a stale plan's reason as it was raised.
  if (stale) throw stale.error;
  if (refusal) throw refusal;
  if (discardFailure !== undefined) throw discardError(discardFailure);
  return { converted, unchangedBytes: unchanged };
}

/** The conversion took (kernel and map agree), but a stale copy could not be dropped. @internal */
export function discardError(failure: unknown): StateError {
  return new StateError(
    'ERR_DISCARD_FAILED',
    `vm.convert: converted, but discarding the stale copy failed: ${failure instanceof Error ? failure.message : String(failure)}`,
  );
}

/** The ranges of `[gpa, gpa+size)` not covered, for coverage errors. @internal */
export function coverageError(op: string, gaps: readonly string[]): StateError {
  return new StateError(
    'ERR_NOT_GUEST_MEMFD',
    `${op}: the range must be covered by guest_memfd slots; not covered: ${gaps.join(', ')}`,
  );
}

/** A KVM_EXIT_MEMORY_FAULT, as the conversion policy needs it. */
export interface MemoryFault {
  /** `kvm_run.memory_fault.gpa`: start of the faulting range. */
  readonly gpa: bigint;
  /** `kvm_run.memory_fault.size`: bytes in the faulting range. */
  readonly size: bigint;
  /** KVM_MEMORY_EXIT_FLAG_PRIVATE was set: the guest accessed the range as private (else shared). */
  readonly private: boolean;
}

/**
 * Rounds a memory fault out to whole pages and asks for the state the guest
 * accessed it in: private if the fault says so, shared otherwise (QEMU's
 * kvm_convert_memory on KVM_EXIT_MEMORY_FAULT). @internal
 */
export function faultRequest(fault: MemoryFault): ConversionRequest {
  const start = fault.gpa & ~(PAGE - 1n);
  const end = (fault.gpa + (fault.size > 0n ? fault.size : 1n) + PAGE - 1n) & ~(PAGE - 1n);
  return { guestPhysAddr: start, size: end - start, to: fault.private ? 'private' : 'shared' };
}
