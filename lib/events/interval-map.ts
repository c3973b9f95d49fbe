/**
 * A canonical interval map over non-negative integer keys, stored in a B+tree.
 *
 * Why it exists: KVM has no "get memory attributes" ioctl, so the library has to keep
 * its own record of which guest page ranges are private and which shared
 * (lib/attribute-map.ts builds that record on this map). A page bitmap would cost one
 * entry per page of a 2^52-page address space; this map costs one entry per run of
 * equal values, and keeps runs merged so the record stays as small as the state is
 * simple.
 *
 * Representation: the map stores only non-default runs `[start, end) -> value`, sorted
 * and non-overlapping, with no two touching runs holding equal values. That canonical
 * form is unique for a given per-key assignment, which is what lets tests (and
 * snapshot/restore) compare maps by their entries.
 *
 * Storage: a B+tree whose leaves hold parallel arrays of starts, ends and values, so an
 * entry costs about three machine words rather than a heap object. Keys are stored as
 * unboxed doubles: every safe integer is exact, and page frame numbers of a 64-bit
 * address space are below 2^52. Plain arrays rather than typed arrays: measured, they
 * keep everything on the V8 heap (no ArrayBuffer and external backing store per node),
 * which costs less memory and one less indirection per lookup.
 *
 * @packageDocumentation
 */

import { ArgumentRangeError, ArgumentTypeError, StateError } from '../core/errors';

/** One run of the map: the keys `[start, end)` all hold `value`. */
export interface IntervalEntry<V> {
  /** First key of the run (inclusive). */
  readonly start: number;
  /** First key after the run (exclusive). */
  readonly end: number;
  /** The value every key of the run holds. */
  readonly value: V;
}

/** Options for {@link IntervalMap}'s constructor. */
export interface IntervalMapOptions<V> {
  /**
   * Value equality used to merge touching runs and to recognise the default value.
   * Defaults to `===` (which compares bigints by value).
   */
  equals?: (a: V, b: V) => boolean;
  /**
   * Maximum entries per leaf and children per branch node (4..4096, default 64).
   * Tests use a tiny capacity so that node splits and merges happen with small inputs.
   */
  nodeCapacity?: number;
  /**
   * Exclusive upper bound of the key space (a safe integer, default
   * `Number.MAX_SAFE_INTEGER`). Keys are integers in `[0, limit)`; range ends may equal
   * `limit`.
   */
  limit?: number;
}

/** Options for {@link IntervalMap.ranges}. */
export interface IntervalRangesOptions {
  /**
   * Also yield the gaps (keys holding the default value) as runs with
   * `value === defaultValue`, so the yielded runs tile `[from, to)` exactly.
   */
  includeDefault?: boolean;
}

/** Default node capacity: large enough that a 1M-entry tree is 4 levels deep. */
const DEFAULT_NODE_CAPACITY = 64;
const MIN_NODE_CAPACITY = 4;
const MAX_NODE_CAPACITY = 4096;
/**
 * Extra slots in each leaf: one set() can add two entries to a leaf (a split run's
 * right part plus the new run) before the leaf is split, so the arrays never need to
 * grow.
 */
const LEAF_SLACK = 2;

function describeKey(value: unknown): string {
  if (typeof value === 'string') return `type string (${JSON.stringify(value)})`;
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  return `type ${typeof value}`;
}

/**
 * An array of `n` numbers stored as unboxed doubles. Filling it with a non-integer makes
 * V8 choose packed double elements from the start (integers would start it as small
 * integers and force a transition later, and `new Array(n)` would make it holey); the
 * fill value itself is never read. Slow to build (a callback per slot): nodes copy a
 * per-map template made with it instead, which is several times faster and keeps the
 * exact capacity and element kind.
 */
function doubles(n: number): number[] {
  return Array.from({ length: n }, () => 0.5);
}

/** `a.copyWithin(target, start, end)` for a plain array, without the generic builtin's cost. */
function move<T>(a: T[], target: number, start: number, end: number): void {
  if (target < start) for (let i = start; i < end; i++) a[target + i - start] = a[i]!;
  else for (let i = end - 1; i >= start; i--) a[target + i - start] = a[i]!;
}

/** First index in `a[0..n)` whose value is `>= x`. */
function lowerBound(a: readonly number[], n: number, x: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** First index in `a[0..n)` whose value is `> x`. */
function upperBound(a: readonly number[], n: number, x: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** A leaf: entries `[starts[i], ends[i]) -> values[i]` for `i < n`, sorted by start. */
class Leaf<V> {
  n = 0;
  /** Leaves are chained in key order so that iteration never climbs the tree. */
  next: Leaf<V> | null = null;
  prev: Leaf<V> | null = null;
  readonly starts: number[];
  readonly ends: number[];
  readonly values: (V | undefined)[];

  constructor(t: NodeTemplates<V>) {
    this.starts = t.leafKeys.slice();
    this.ends = t.leafKeys.slice();
    this.values = t.leafValues.slice();
  }
}

/**
 * A branch: `children[i]` for `i < n`, where `keys[i]` is exactly the smallest start in
 * `children[i]`'s subtree. Exact (not merely separating) keys mean a descent always
 * lands in the leaf that holds the predecessor of the searched key, so no lookup has to
 * step back to a previous leaf.
 */
class Branch<V> {
  n = 0;
  readonly keys: number[];
  readonly children: (Leaf<V> | Branch<V> | undefined)[];

  constructor(t: NodeTemplates<V>) {
    this.keys = t.branchKeys.slice();
    this.children = t.branchChildren.slice();
  }
}

type TreeNode<V> = Leaf<V> | Branch<V>;

/** Empty node arrays of the right size and element kind, copied (`slice()`) for each node. */
interface NodeTemplates<V> {
  leafKeys: readonly number[];
  leafValues: readonly (V | undefined)[];
  branchKeys: readonly number[];
  branchChildren: readonly (TreeNode<V> | undefined)[];
}

function nodeTemplates<V>(cap: number): NodeTemplates<V> {
  return {
    leafKeys: doubles(cap + LEAF_SLACK),
    leafValues: Array.from<V | undefined>({ length: cap + LEAF_SLACK }),
    // One spare slot: a branch takes a new child before it splits.
    branchKeys: doubles(cap + 1),
    branchChildren: Array.from<TreeNode<V> | undefined>({ length: cap + 1 }),
  };
}

/** Internal content of an {@link IntervalMapSnapshot}, kept out of its public surface. */
interface SnapshotData<V> {
  owner: IntervalMap<V>;
  starts: readonly number[];
  ends: readonly number[];
  values: readonly V[];
}

const snapshotData = new WeakMap<object, SnapshotData<unknown>>();

/**
 * An immutable copy of the runs of an {@link IntervalMap} within `[start, end)`, taken
 * by {@link IntervalMap.snapshot} and put back by {@link IntervalMap.restore}. It can be
 * restored any number of times, only into the map that took it.
 */
export class IntervalMapSnapshot<V> {
  /** First key the snapshot covers. */
  readonly start: number;
  /** First key after the range the snapshot covers. */
  readonly end: number;

  /** @internal */
  static create<W>(data: SnapshotData<W>, start: number, end: number): IntervalMapSnapshot<W> {
    return new IntervalMapSnapshot(data, start, end);
  }

  /** Use {@link IntervalMap.snapshot}. */
  private constructor(data: SnapshotData<V>, start: number, end: number) {
    this.start = start;
    this.end = end;
    snapshotData.set(this, data as SnapshotData<unknown>);
    Object.freeze(this);
  }

  /** Number of non-default runs captured (clipped to `[start, end)`). */
  get size(): number {
    return (snapshotData.get(this) as SnapshotData<V>).starts.length;
  }

  /** The captured non-default runs, in order. */
  *entries(): IterableIterator<IntervalEntry<V>> {
    const d = snapshotData.get(this) as SnapshotData<V>;
    for (let i = 0; i < d.starts.length; i++) {
      yield { start: d.starts[i]!, end: d.ends[i]!, value: d.values[i]! };
    }
  }
}

/**
 * Copies `count` entries of `from` (starting at `fromIndex`) into `to` at `toIndex`;
 * with `clear`, drops the copied values from `from` so they can be collected.
 */
function copyEntries<V>(to: Leaf<V>, toIndex: number, from: Leaf<V>, fromIndex: number, count: number, clear: boolean): void {
  for (let i = 0; i < count; i++) {
    to.starts[toIndex + i] = from.starts[fromIndex + i]!;
    to.ends[toIndex + i] = from.ends[fromIndex + i]!;
    to.values[toIndex + i] = from.values[fromIndex + i];
    if (clear) from.values[fromIndex + i] = undefined;
  }
}

/**
 * Maps half-open integer ranges `[start, end)` to values; every key not covered holds
 * {@link IntervalMap.defaultValue}. Runs are kept canonical: sorted, non-overlapping,
 * touching runs with equal values merged, default-valued runs not stored.
 *
 * Cost: `get` is O(log n); `set` is O(log n + k) where k is the number of stored runs it
 * removes; `ranges` is O(log n) to start and O(1) per run after that. Memory is about
 * 29 bytes per run when built in key order and about 40 after random churn (parallel
 * arrays in the leaves, which fill to ~70% under random updates).
 *
 * Keys are integers in `[0, limit)` (numbers, so they must be safe integers).
 * Mutating the map while a {@link IntervalMap.ranges} iterator is open makes that
 * iterator throw `ERR_INVALID_STATE` on its next step.
 *
 * @example
 * ```ts
 * const m = new IntervalMap<string>('none');
 * m.set(0, 10, 'a');
 * m.set(10, 20, 'a');        // merges: one run [0, 20)
 * m.set(5, 8, 'none');       // splits: [0, 5) and [8, 20)
 * m.get(6);                  // 'none'
 * [...m.ranges()];           // [{start:0,end:5,value:'a'}, {start:8,end:20,value:'a'}]
 * ```
 */
export class IntervalMap<V> {
  /** The value of every key no run covers. Runs holding it are never stored. */
  readonly defaultValue: V;
  /** Exclusive upper bound of the key space. */
  readonly limit: number;
  /** Maximum entries per leaf and children per branch. */
  readonly nodeCapacity: number;

  private readonly eq: (a: V, b: V) => boolean;
  private readonly customEquals: ((a: V, b: V) => boolean) | undefined;
  /** Underflow threshold: below it a non-root node borrows from or merges with a sibling. */
  private readonly minFill: number;
  private readonly templates: NodeTemplates<V>;
  private root: TreeNode<V>;
  /** Number of branch levels above the leaves (0: the root is a leaf). */
  private height = 0;
  private count = 0;
  /** Bumped by every mutation so that open iterators notice and stop. */
  private version = 0;
  /**
   * The path of the last descent: `pathNodes[d].children[pathIdx[d]]` is the node at
   * depth d + 1. Reused across calls to avoid allocating per operation.
   */
  private readonly pathNodes: Branch<V>[] = [];
  private readonly pathIdx: number[] = [];

  /**
   * @param defaultValue - the value of keys no run covers.
   * @param options - equality, node capacity and key-space limit.
   * @throws RangeError `ERR_OUT_OF_RANGE` if `nodeCapacity` or `limit` is out of range.
   */
  constructor(defaultValue: V, options: IntervalMapOptions<V> = {}) {
    const cap = options.nodeCapacity ?? DEFAULT_NODE_CAPACITY;
    if (!Number.isInteger(cap) || cap < MIN_NODE_CAPACITY || cap > MAX_NODE_CAPACITY) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE',
        `IntervalMap: nodeCapacity ${String(cap)} must be an integer in [${MIN_NODE_CAPACITY}, ${MAX_NODE_CAPACITY}]`,
      );
    }
    const limit = options.limit ?? Number.MAX_SAFE_INTEGER;
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE',
        `IntervalMap: limit ${String(limit)} must be a safe integer >= 1`,
      );
    }
    this.defaultValue = defaultValue;
    this.limit = limit;
    this.nodeCapacity = cap;
    this.minFill = cap >> 1;
    this.customEquals = options.equals;
    this.eq = options.equals ?? ((a: V, b: V) => a === b);
    this.templates = nodeTemplates<V>(cap);
    this.root = new Leaf<V>(this.templates);
  }

  /** Number of stored (non-default) runs. */
  get size(): number {
    return this.count;
  }

  /**
   * The value at `point`.
   * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE` if `point`
   * is not an integer in `[0, limit)`.
   */
  get(point: number): V {
    this.checkPoint('get', 'point', point);
    const leaf = this.findLeaf(point);
    const i = upperBound(leaf.starts, leaf.n, point) - 1;
    if (i >= 0 && leaf.ends[i]! > point) return leaf.values[i] as V;
    return this.defaultValue;
  }

  /**
   * The maximal run containing `point`: a stored run, or the default-valued gap around
   * `point` (bounded by its neighbours, 0 and `limit`).
   * @throws like {@link IntervalMap.get}.
   */
  entryAt(point: number): IntervalEntry<V> {
    this.checkPoint('entryAt', 'point', point);
    const leaf = this.findLeaf(point);
    const i = upperBound(leaf.starts, leaf.n, point) - 1;
    if (i >= 0 && leaf.ends[i]! > point) {
      return { start: leaf.starts[i]!, end: leaf.ends[i]!, value: leaf.values[i] as V };
    }
    // Exact branch keys: if no run starts at or before `point` in this leaf, none does.
    const start = i >= 0 ? leaf.ends[i]! : 0;
    let end = this.limit;
    if (i + 1 < leaf.n) end = leaf.starts[i + 1]!;
    else if (leaf.next !== null) end = leaf.next.starts[0]!;
    return { start, end, value: this.defaultValue };
  }

  /**
   * Sets every key in `[start, end)` to `value`: overwrites what was there, splits runs
   * that stick out of the range, merges with touching runs of equal value, and stores
   * nothing for the default value. An empty range (`start === end`) changes nothing.
   * @throws TypeError `ERR_INVALID_ARG_TYPE` / RangeError `ERR_OUT_OF_RANGE` if `start`
   * or `end` is not an integer in `[0, limit]` or `start > end`.
   */
  set(start: number, end: number, value: V): void {
    this.checkRange('set', start, end);
    if (start === end) return;
    this.version++;
    const isDefault = this.eq(value, this.defaultValue);
    if (!this.setWithinLeaf(start, end, value, isDefault)) {
      this.setAcrossLeaves(start, end, value, isDefault);
    }
  }

  /**
   * The runs overlapping `[from, to)`, in key order, clipped to `[from, to)`. With
   * `includeDefault` the default-valued gaps are yielded too, so the runs tile
   * `[from, to)` exactly. The iterator is lazy; it throws `ERR_INVALID_STATE` if the map
   * is mutated while it is open.
   * @param from - first key (default 0).
   * @param to - first key after the range (default `limit`).
   * @throws like {@link IntervalMap.set}, immediately (not on the first step).
   */
  ranges(from = 0, to: number = this.limit, options: IntervalRangesOptions = {}): IterableIterator<IntervalEntry<V>> {
    this.checkRange('ranges', from, to, 'from', 'to');
    return this.walk(from, to, options.includeDefault === true);
  }

  /** All stored runs in order; same as `ranges()`. */
  [Symbol.iterator](): IterableIterator<IntervalEntry<V>> {
    return this.walk(0, this.limit, false);
  }

  /**
   * The sub-ranges of `[start, end)` whose current value differs from `value`, in order,
   * each with its current value (so setting `value` on exactly these is the same as
   * setting it on `[start, end)`). Touching results always hold different current
   * values; callers that only need coverage may coalesce them.
   * @throws like {@link IntervalMap.set}.
   */
  diff(start: number, end: number, value: V): IntervalEntry<V>[] {
    this.checkRange('diff', start, end);
    const out: IntervalEntry<V>[] = [];
    for (const r of this.walk(start, end, true)) {
      if (!this.eq(r.value, value)) out.push(r);
    }
    return out;
  }

  /** Removes every run: every key holds the default value again. */
  clear(): void {
    this.version++;
    this.root = new Leaf<V>(this.templates);
    this.height = 0;
    this.count = 0;
  }

  /** An independent copy with the same runs and options; O(n). */
  clone(): IntervalMap<V> {
    const copy = new IntervalMap<V>(this.defaultValue, this.options());
    const { starts, ends, values } = this.collect(0, this.limit);
    copy.load(starts, ends, values);
    return copy;
  }

  /**
   * Captures the runs within `[start, end)` (default: the whole key space) so that
   * {@link IntervalMap.restore} can put them back, e.g. to roll back a conversion that
   * a listener vetoed. Cost O(log n + k) for k captured runs: snapshot only the window
   * you are about to change.
   * @throws like {@link IntervalMap.set}.
   */
  snapshot(start = 0, end: number = this.limit): IntervalMapSnapshot<V> {
    this.checkRange('snapshot', start, end);
    const { starts, ends, values } = this.collect(start, end);
    return IntervalMapSnapshot.create<V>({ owner: this, starts, ends, values }, start, end);
  }

  /**
   * Makes `[snapshot.start, snapshot.end)` hold exactly what it held when the snapshot
   * was taken; keys outside that window are left alone. A whole-space snapshot is
   * reloaded in O(n); a window in O(log n + k) per run.
   * @throws TypeError `ERR_INVALID_ARG_VALUE` if the snapshot was taken from another map.
   */
  restore(snapshot: IntervalMapSnapshot<V>): void {
    const data = (snapshot instanceof IntervalMapSnapshot
      ? snapshotData.get(snapshot)
      : undefined) as SnapshotData<V> | undefined;
    if (data === undefined || data.owner !== this) {
      throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE',
        'IntervalMap.restore: snapshot was not taken from this map',
      );
    }
    if (snapshot.start === 0 && snapshot.end === this.limit) {
      this.load(data.starts, data.ends, data.values);
      return;
    }
    // Clearing the window first leaves every key outside it untouched; re-setting the
    // captured runs merges them with touching outside runs, restoring canonical form.
    this.set(snapshot.start, snapshot.end, this.defaultValue);
    for (let i = 0; i < data.starts.length; i++) {
      this.set(data.starts[i]!, data.ends[i]!, data.values[i]!);
    }
  }

  // ---------------------------------------------------------------------------------
  // set(): the common case touches one leaf and is done in place.

  /**
   * Applies set() inside the single leaf that holds the predecessor of `s`, if every
   * run the change touches lives in that leaf. Returns false, having changed nothing,
   * when the change spills into the next leaf.
   */
  private setWithinLeaf(s: number, e: number, v: V, isDefault: boolean): boolean {
    const leaf = this.descend(s, true);
    const st = leaf.starts;
    const en = leaf.ends;
    const vals = leaf.values;
    const n = leaf.n;
    const a = lowerBound(st, n, s) - 1; // last run starting before s (exact keys: global)
    const j = lowerBound(st, n, e); // first run starting at or after e
    if (j === n && leaf.next !== null) {
      const nextMin = leaf.next.starts[0]!;
      if (nextMin < e) return false; // runs to remove continue in the next leaf
      if (nextMin === e && !isDefault && this.eq(leaf.next.values[0] as V, v)) return false;
    }

    let newEnd = e;
    // What happens to run `a`: 0 untouched, 1 trimmed to end at s, 2 absorbs [s, newEnd).
    let aMode = 0;
    let hasRight = false;
    let rStart = 0;
    let rEnd = 0;
    let rValue: V | undefined;
    if (a >= 0) {
      const aEnd = en[a]!;
      if (aEnd >= s) {
        const av = vals[a] as V;
        if (!isDefault && this.eq(av, v)) {
          if (aEnd >= e) return true; // already holds v over the whole range
          aMode = 2;
        } else if (aEnd > s) {
          aMode = 1;
          if (aEnd > e) {
            hasRight = true;
            rStart = e;
            rEnd = aEnd;
            rValue = av;
          }
        }
      }
    }
    let delEnd = j;
    if (j - 1 > a) {
      // The last run starting inside [s, e) may stick out past e.
      const bEnd = en[j - 1]!;
      if (bEnd > e) {
        const bv = vals[j - 1] as V;
        if (!isDefault && this.eq(bv, v)) newEnd = bEnd;
        else {
          hasRight = true;
          rStart = e;
          rEnd = bEnd;
          rValue = bv;
        }
      }
    }
    if (!hasRight && newEnd === e && j < n && st[j] === e && !isDefault && this.eq(vals[j] as V, v)) {
      newEnd = en[j]!; // a touching run of equal value on the right merges in
      delEnd = j + 1;
    }

    if (aMode === 1) en[a] = s;
    else if (aMode === 2) en[a] = newEnd;
    const delStart = a + 1;
    const insertMiddle = !isDefault && aMode !== 2;
    const added = (insertMiddle ? 1 : 0) + (hasRight ? 1 : 0);
    const shift = added - (delEnd - delStart);
    if (shift !== 0 && delEnd < n) {
      move(st, delEnd + shift, delEnd, n);
      move(en, delEnd + shift, delEnd, n);
      if (shift > 0) for (let i = n - 1; i >= delEnd; i--) vals[i + shift] = vals[i];
      else for (let i = delEnd; i < n; i++) vals[i + shift] = vals[i];
    }
    let w = delStart;
    if (insertMiddle) {
      st[w] = s;
      en[w] = newEnd;
      vals[w] = v;
      w++;
    }
    if (hasRight) {
      st[w] = rStart;
      en[w] = rEnd;
      vals[w] = rValue;
    }
    const newN = n + shift;
    for (let i = newN; i < n; i++) vals[i] = undefined; // let removed values be collected
    leaf.n = newN;
    this.count += shift;

    if (delStart === 0 && newN > 0 && (added > 0 || delEnd > 0)) this.updateMin(this.height, st[0]!);
    if (newN > this.nodeCapacity) {
      // Appending at the end of the last leaf (building a map in address order) keeps
      // the full leaf full instead of leaving a trail of half-empty leaves.
      this.splitLeaf(leaf, leaf.next === null && delEnd === n ? this.nodeCapacity : newN >> 1);
    } else if (shift < 0 && newN < this.minFill && this.height > 0) {
      this.fixLeafUnderflow();
    }
    return true;
  }

  /**
   * General set(): works out the at most three runs that replace the affected ones,
   * deletes the affected runs, then inserts the replacements. Used when the change
   * spans leaves.
   */
  private setAcrossLeaves(s: number, e: number, v: V, isDefault: boolean): void {
    let delLo = s;
    let delHi = e;
    let newStart = s;
    let newEnd = e;
    let hasLeft = false;
    let lStart = 0;
    let lValue: V | undefined;
    let hasRight = false;
    let rStart = 0;
    let rEnd = 0;
    let rValue: V | undefined;

    let leaf = this.descend(s, true);
    let i = lowerBound(leaf.starts, leaf.n, s) - 1;
    if (i >= 0) {
      const aStart = leaf.starts[i]!;
      const aEnd = leaf.ends[i]!;
      const av = leaf.values[i] as V;
      if (aEnd >= s) {
        if (!isDefault && this.eq(av, v)) {
          if (aEnd >= e) return;
          newStart = aStart;
          delLo = aStart;
        } else if (aEnd > s) {
          hasLeft = true;
          lStart = aStart;
          lValue = av;
          delLo = aStart;
          if (aEnd > e) {
            hasRight = true;
            rStart = e;
            rEnd = aEnd;
            rValue = av;
          }
        }
      }
    }
    leaf = this.descend(e, true);
    i = lowerBound(leaf.starts, leaf.n, e) - 1;
    if (i >= 0 && leaf.starts[i]! >= s && leaf.ends[i]! > e) {
      const bv = leaf.values[i] as V;
      if (!isDefault && this.eq(bv, v)) newEnd = leaf.ends[i]!;
      else {
        hasRight = true;
        rStart = e;
        rEnd = leaf.ends[i]!;
        rValue = bv;
      }
    }
    if (!hasRight && newEnd === e && !isDefault) {
      leaf = this.descend(e, false);
      i = upperBound(leaf.starts, leaf.n, e) - 1;
      if (i >= 0 && leaf.starts[i] === e && this.eq(leaf.values[i] as V, v)) {
        newEnd = leaf.ends[i]!;
        delHi = e + 1; // e <= MAX_SAFE_INTEGER, so e + 1 is exact
      }
    }

    this.deleteRange(delLo, delHi);
    if (hasLeft) this.insertEntry(lStart, s, lValue as V);
    if (!isDefault) this.insertEntry(newStart, newEnd, v);
    if (hasRight) this.insertEntry(rStart, rEnd, rValue as V);
  }

  // ---------------------------------------------------------------------------------
  // B+tree primitives. Each one that restructures the tree relies on the path recorded
  // by the descent that found its leaf, and leaves that path stale.

  /** Descends to the leaf for `x` without recording the path (read-only lookups). */
  private findLeaf(x: number): Leaf<V> {
    let node = this.root;
    for (let d = this.height; d > 0; d--) {
      const b = node as Branch<V>;
      const i = upperBound(b.keys, b.n, x) - 1;
      node = b.children[i > 0 ? i : 0]!;
    }
    return node as Leaf<V>;
  }

  /**
   * Descends to the leaf whose first start is the last one `<= x` (or `< x` when
   * `strict`), recording the path. Thanks to exact branch keys, that leaf holds the last
   * run starting at or before (before) `x`, if any run does.
   */
  private descend(x: number, strict: boolean): Leaf<V> {
    let node = this.root;
    const h = this.height;
    for (let d = 0; d < h; d++) {
      const b = node as Branch<V>;
      const k = strict ? lowerBound(b.keys, b.n, x) : upperBound(b.keys, b.n, x);
      const i = k > 0 ? k - 1 : 0;
      this.pathNodes[d] = b;
      this.pathIdx[d] = i;
      node = b.children[i]!;
    }
    return node as Leaf<V>;
  }

  /** The node at `depth` on the recorded path now starts at `key`: fix ancestors' keys. */
  private updateMin(depth: number, key: number): void {
    if (depth > 0) this.updateKeyAt(depth - 1, this.pathIdx[depth - 1]!, key);
  }

  /** Sets `pathNodes[level].keys[idx]`, propagating upward while it is a first key. */
  private updateKeyAt(level: number, idx: number, key: number): void {
    for (;;) {
      this.pathNodes[level]!.keys[idx] = key;
      if (idx !== 0 || level === 0) return;
      level--;
      idx = this.pathIdx[level]!;
    }
  }

  /** Inserts a run whose start is not stored yet and which overlaps no stored run. */
  private insertEntry(s: number, e: number, v: V): void {
    const leaf = this.descend(s, false);
    const n = leaf.n;
    const i = lowerBound(leaf.starts, n, s);
    if (i < n) {
      move(leaf.starts, i + 1, i, n);
      move(leaf.ends, i + 1, i, n);
      for (let k = n; k > i; k--) leaf.values[k] = leaf.values[k - 1];
    }
    leaf.starts[i] = s;
    leaf.ends[i] = e;
    leaf.values[i] = v;
    leaf.n = n + 1;
    this.count++;
    if (i === 0) this.updateMin(this.height, s);
    if (n + 1 > this.nodeCapacity) {
      this.splitLeaf(leaf, leaf.next === null && i === n ? this.nodeCapacity : (n + 1) >> 1);
    }
  }

  /**
   * Deletes every run whose start is in `[lo, hi)`, a leaf-sized batch at a time, so
   * removing k runs costs O(log n + k) rather than k descents.
   */
  private deleteRange(lo: number, hi: number): void {
    for (;;) {
      let leaf = this.descend(lo, false);
      let i = lowerBound(leaf.starts, leaf.n, lo);
      if (i === leaf.n) {
        const next = leaf.next;
        if (next === null || next.starts[0]! >= hi) return;
        leaf = this.descend(next.starts[0]!, false); // exact keys route to `next` itself
        i = 0;
      }
      const n = leaf.n;
      const j = lowerBound(leaf.starts, n, hi);
      if (j === i) return;
      const removed = j - i;
      if (j < n) {
        move(leaf.starts, i, j, n);
        move(leaf.ends, i, j, n);
        for (let k = j; k < n; k++) leaf.values[k - removed] = leaf.values[k];
      }
      for (let k = n - removed; k < n; k++) leaf.values[k] = undefined;
      leaf.n = n - removed;
      this.count -= removed;
      if (i === 0 && leaf.n > 0) this.updateMin(this.height, leaf.starts[0]!);
      if (leaf.n < this.minFill && this.height > 0) this.fixLeafUnderflow();
      if (j < n) return; // the next run starts at or after hi
    }
  }

  /** Moves entries `[mid, n)` of an overfull leaf into a new right sibling. */
  private splitLeaf(leaf: Leaf<V>, mid: number): void {
    const right = new Leaf<V>(this.templates);
    const n = leaf.n;
    copyEntries(right, 0, leaf, mid, n - mid, true);
    right.n = n - mid;
    leaf.n = mid;
    right.next = leaf.next;
    if (right.next !== null) right.next.prev = right;
    right.prev = leaf;
    leaf.next = right;
    this.insertChild(this.height - 1, right, right.starts[0]!);
  }

  /** Inserts `child` right after the path's child of `pathNodes[level]` (or grows a root). */
  private insertChild(level: number, child: TreeNode<V>, key: number): void {
    if (level < 0) {
      const old = this.root;
      const root = new Branch<V>(this.templates);
      root.children[0] = old;
      root.keys[0] = this.height === 0 ? (old as Leaf<V>).starts[0]! : (old as Branch<V>).keys[0]!;
      root.children[1] = child;
      root.keys[1] = key;
      root.n = 2;
      this.root = root;
      this.height++;
      return;
    }
    const p = this.pathNodes[level]!;
    const at = this.pathIdx[level]! + 1;
    for (let i = p.n; i > at; i--) {
      p.keys[i] = p.keys[i - 1]!;
      p.children[i] = p.children[i - 1];
    }
    p.keys[at] = key;
    p.children[at] = child;
    p.n++;
    if (p.n > this.nodeCapacity) {
      // Branches always split evenly so every non-root branch keeps >= 2 children and a
      // leaf that underflows always has a sibling to borrow from or merge with.
      const right = new Branch<V>(this.templates);
      const mid = p.n >> 1;
      for (let i = mid; i < p.n; i++) {
        right.keys[i - mid] = p.keys[i]!;
        right.children[i - mid] = p.children[i];
        p.children[i] = undefined;
      }
      right.n = p.n - mid;
      p.n = mid;
      this.insertChild(level - 1, right, right.keys[0]!);
    }
  }

  /** Removes child `ci` (never the first) of `pathNodes[level]`, rebalancing upward. */
  private removeChild(level: number, ci: number): void {
    const p = this.pathNodes[level]!;
    for (let i = ci + 1; i < p.n; i++) {
      p.keys[i - 1] = p.keys[i]!;
      p.children[i - 1] = p.children[i];
    }
    p.n--;
    p.children[p.n] = undefined;
    if (level === 0) {
      if (p.n === 1) {
        this.root = p.children[0]!;
        p.children[0] = undefined;
        this.height--;
      }
    } else if (p.n < this.minFill) {
      this.fixBranchUnderflow(level);
    }
  }

  /** The leaf at the end of the recorded path is underfull: borrow from or merge with a sibling (it always has one). */
  private fixLeafUnderflow(): void {
    const pl = this.height - 1;
    const parent = this.pathNodes[pl]!;
    const idx = this.pathIdx[pl]!;
    const li = idx > 0 ? idx - 1 : 0;
    const left = parent.children[li] as Leaf<V>;
    const right = parent.children[li + 1] as Leaf<V>;
    const total = left.n + right.n;
    if (total <= this.nodeCapacity) {
      copyEntries(left, left.n, right, 0, right.n, false);
      left.n = total;
      left.next = right.next;
      if (right.next !== null) right.next.prev = left;
      if (total > 0 && parent.keys[li] !== left.starts[0]) this.updateKeyAt(pl, li, left.starts[0]!);
      this.removeChild(pl, li + 1);
      return;
    }
    const target = total >> 1;
    if (left.n < target) {
      const k = target - left.n;
      copyEntries(left, left.n, right, 0, k, false);
      move(right.starts, 0, k, right.n);
      move(right.ends, 0, k, right.n);
      for (let i = k; i < right.n; i++) right.values[i - k] = right.values[i];
      for (let i = right.n - k; i < right.n; i++) right.values[i] = undefined;
      left.n += k;
      right.n -= k;
    } else {
      const k = left.n - target;
      move(right.starts, k, 0, right.n);
      move(right.ends, k, 0, right.n);
      for (let i = right.n - 1; i >= 0; i--) right.values[i + k] = right.values[i];
      copyEntries(right, 0, left, target, k, true);
      left.n -= k;
      right.n += k;
    }
    parent.keys[li + 1] = right.starts[0]!;
    if (parent.keys[li] !== left.starts[0]) this.updateKeyAt(pl, li, left.starts[0]!);
  }

  /** An underfull branch (at `level` on the path) borrows from or merges with a sibling. */
  private fixBranchUnderflow(level: number): void {
    const pl = level - 1;
    const parent = this.pathNodes[pl]!;
    const idx = this.pathIdx[pl]!;
    const li = idx > 0 ? idx - 1 : 0;
    const left = parent.children[li] as Branch<V>;
    const right = parent.children[li + 1] as Branch<V>;
    const total = left.n + right.n;
    if (total <= this.nodeCapacity) {
      for (let i = 0; i < right.n; i++) {
        left.keys[left.n + i] = right.keys[i]!;
        left.children[left.n + i] = right.children[i];
      }
      left.n = total;
      this.removeChild(pl, li + 1);
      return;
    }
    // Branches are never empty, so moving children between siblings never changes the
    // left sibling's first key; only the right one's.
    const target = total >> 1;
    if (left.n < target) {
      const k = target - left.n;
      for (let i = 0; i < k; i++) {
        left.keys[left.n + i] = right.keys[i]!;
        left.children[left.n + i] = right.children[i];
      }
      for (let i = k; i < right.n; i++) {
        right.keys[i - k] = right.keys[i]!;
        right.children[i - k] = right.children[i];
      }
      for (let i = right.n - k; i < right.n; i++) right.children[i] = undefined;
      left.n += k;
      right.n -= k;
    } else {
      const k = left.n - target;
      for (let i = right.n - 1; i >= 0; i--) {
        right.keys[i + k] = right.keys[i]!;
        right.children[i + k] = right.children[i];
      }
      for (let i = 0; i < k; i++) {
        right.keys[i] = left.keys[target + i]!;
        right.children[i] = left.children[target + i];
        left.children[target + i] = undefined;
      }
      left.n -= k;
      right.n += k;
    }
    parent.keys[li + 1] = right.keys[0]!;
  }

  /**
   * Replaces the whole tree with the given sorted, canonical runs, packing nodes nearly
   * full (O(n)). Used by clone() and whole-space restore().
   */
  private load(starts: readonly number[], ends: readonly number[], values: readonly V[]): void {
    this.version++;
    const total = starts.length;
    const cap = this.nodeCapacity;
    this.count = total;
    this.height = 0;
    if (total === 0) {
      this.root = new Leaf<V>(this.templates);
      return;
    }
    // Spread entries evenly over ceil(total / cap) leaves: every leaf then holds at
    // least cap / 2, the fill the rebalancing code expects.
    let level: TreeNode<V>[] = [];
    let mins: number[] = [];
    const leafCount = Math.ceil(total / cap);
    let k = 0;
    let prev: Leaf<V> | null = null;
    for (let l = 0; l < leafCount; l++) {
      const take = Math.floor((total - k) / (leafCount - l));
      const leaf = new Leaf<V>(this.templates);
      for (let i = 0; i < take; i++, k++) {
        leaf.starts[i] = starts[k]!;
        leaf.ends[i] = ends[k]!;
        leaf.values[i] = values[k];
      }
      leaf.n = take;
      leaf.prev = prev;
      if (prev !== null) prev.next = leaf;
      prev = leaf;
      level.push(leaf);
      mins.push(leaf.starts[0]!);
    }
    while (level.length > 1) {
      const parents: TreeNode<V>[] = [];
      const parentMins: number[] = [];
      const count = Math.ceil(level.length / cap);
      let c = 0;
      for (let p = 0; p < count; p++) {
        const take = Math.floor((level.length - c) / (count - p));
        const b = new Branch<V>(this.templates);
        for (let i = 0; i < take; i++, c++) {
          b.keys[i] = mins[c]!;
          b.children[i] = level[c];
        }
        b.n = take;
        parents.push(b);
        parentMins.push(b.keys[0]!);
      }
      level = parents;
      mins = parentMins;
      this.height++;
    }
    this.root = level[0]!;
  }

  /** Copies the runs overlapping `[from, to)`, clipped, into parallel arrays. */
  private collect(from: number, to: number): { starts: number[]; ends: number[]; values: V[] } {
    const values: V[] = [];
    const starts: number[] = [];
    const ends: number[] = [];
    if (from >= to) return { starts, ends, values };
    // Straight over the leaf chain: a whole-map snapshot of a million runs should not
    // build a million iterator results.
    let leaf: Leaf<V> | null = this.findLeaf(from);
    let i = upperBound(leaf.starts, leaf.n, from) - 1;
    if (i < 0 || leaf.ends[i]! <= from) i++;
    for (; leaf !== null; leaf = leaf.next, i = 0) {
      for (; i < leaf.n; i++) {
        const s = leaf.starts[i]!;
        if (s >= to) return { starts, ends, values };
        const e = leaf.ends[i]!;
        starts.push(s > from ? s : from);
        ends.push(e < to ? e : to);
        values.push(leaf.values[i] as V);
      }
    }
    return { starts, ends, values };
  }

  /** The iterator behind ranges(); validation has already happened. */
  private *walk(from: number, to: number, includeDefault: boolean): Generator<IntervalEntry<V>, void, undefined> {
    if (from >= to) return;
    const version = this.version;
    let leaf = this.findLeaf(from);
    let i = upperBound(leaf.starts, leaf.n, from) - 1;
    if (i < 0 || leaf.ends[i]! <= from) i++;
    let pos = from;
    for (;;) {
      if (i >= leaf.n) {
        if (leaf.next === null) break;
        leaf = leaf.next;
        i = 0;
        continue;
      }
      const s = leaf.starts[i]!;
      if (s >= to) break;
      const e = leaf.ends[i]!;
      const value = leaf.values[i] as V;
      const cs = s > from ? s : from;
      const ce = e < to ? e : to;
      if (includeDefault && pos < cs) {
        yield { start: pos, end: cs, value: this.defaultValue };
        this.checkVersion(version);
      }
      yield { start: cs, end: ce, value };
      this.checkVersion(version);
      pos = ce;
      i++;
    }
    if (includeDefault && pos < to) yield { start: pos, end: to, value: this.defaultValue };
  }

  private checkVersion(version: number): void {
    if (version !== this.version) {
      throw new StateError('ERR_INVALID_STATE',
        'IntervalMap.ranges: the map was modified during iteration',
      );
    }
  }

  private options(): IntervalMapOptions<V> {
    const o: IntervalMapOptions<V> = { nodeCapacity: this.nodeCapacity, limit: this.limit };
    if (this.customEquals !== undefined) o.equals = this.customEquals;
    return o;
  }

  // ---------------------------------------------------------------------------------
  // Validation: keys are doubles, so anything but a safe integer would silently round.

  private checkKey(op: string, name: string, x: unknown, max: number): void {
    if (typeof x !== 'number') {
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE',
        `IntervalMap.${op}: ${name} must be a number (received ${describeKey(x)})`,
      );
    }
    if (!Number.isInteger(x)) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `IntervalMap.${op}: ${name} ${x} is not an integer`);
    }
    if (x < 0 || x > max) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE',
        `IntervalMap.${op}: ${name} ${x} is outside the key space [0, ${max}]`,
      );
    }
  }

  private checkPoint(op: string, name: string, x: unknown): void {
    this.checkKey(op, name, x, this.limit - 1);
  }

  private checkRange(op: string, start: unknown, end: unknown, startName = 'start', endName = 'end'): void {
    this.checkKey(op, startName, start, this.limit);
    this.checkKey(op, endName, end, this.limit);
    if ((start as number) > (end as number)) {
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE',
        `IntervalMap.${op}: ${startName} ${start as number} is after ${endName} ${end as number}`,
      );
    }
  }
}
