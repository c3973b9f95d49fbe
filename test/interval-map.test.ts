// Unit and property tests of the B+tree interval map behind vm.attributes.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { IntervalMap, type IntervalEntry } from '../lib/events/interval-map';
import { runs } from './runs';

const entries = <V>(m: IntervalMap<V>): IntervalEntry<V>[] => [...m.ranges()];

function expectCode(fn: () => unknown, ctor: ErrorConstructor | TypeErrorConstructor | RangeErrorConstructor, code: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ctor);
  expect((caught as { code?: string }).code).toBe(code);
}

describe('IntervalMap: set and merge', () => {
  it('an empty map reads the default everywhere and stores nothing', () => {
    const m = new IntervalMap('d');
    expect(m.size).toBe(0);
    expect(m.get(0)).toBe('d');
    expect(m.get(Number.MAX_SAFE_INTEGER - 1)).toBe('d');
    expect(entries(m)).toEqual([]);
  });

  it('touching ranges with equal values merge into one entry', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    m.set(10, 20, 'a');
    expect(entries(m)).toEqual([{ start: 0, end: 20, value: 'a' }]);
  });

  it('a range written on the left of an equal range merges with it', () => {
    const m = new IntervalMap('d');
    m.set(10, 20, 'a');
    m.set(5, 10, 'a');
    expect(entries(m)).toEqual([{ start: 5, end: 20, value: 'a' }]);
  });

  it('filling the gap between two equal ranges leaves one entry', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    m.set(20, 30, 'a');
    m.set(10, 20, 'a');
    expect(entries(m)).toEqual([{ start: 0, end: 30, value: 'a' }]);
  });

  it('touching ranges with different values stay separate', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    m.set(10, 20, 'b');
    expect(m.size).toBe(2);
  });

  it('a partial overwrite in the middle splits the range in three', () => {
    const m = new IntervalMap('d');
    m.set(0, 30, 'a');
    m.set(10, 20, 'b');
    expect(entries(m)).toEqual([
      { start: 0, end: 10, value: 'a' },
      { start: 10, end: 20, value: 'b' },
      { start: 20, end: 30, value: 'a' },
    ]);
  });

  it('an overwrite across a boundary trims both neighbours', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    m.set(10, 20, 'b');
    m.set(5, 15, 'c');
    expect(entries(m)).toEqual([
      { start: 0, end: 5, value: 'a' },
      { start: 5, end: 15, value: 'c' },
      { start: 15, end: 20, value: 'b' },
    ]);
  });

  it('an overwrite covering several entries replaces them all', () => {
    const m = new IntervalMap('d');
    for (let i = 0; i < 10; i++) m.set(i * 10, i * 10 + 5, i % 2 ? 'a' : 'b');
    m.set(3, 97, 'c');
    expect(entries(m)).toEqual([
      { start: 0, end: 3, value: 'b' },
      { start: 3, end: 97, value: 'c' },
    ]);
  });

  it('writing the default value removes the entry', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    m.set(0, 10, 'd');
    expect(m.size).toBe(0);
    expect(entries(m)).toEqual([]);
  });

  it('writing the default value in the middle of a range splits it and stores no default entry', () => {
    const m = new IntervalMap('d');
    m.set(0, 30, 'a');
    m.set(10, 20, 'd');
    expect(entries(m)).toEqual([
      { start: 0, end: 10, value: 'a' },
      { start: 20, end: 30, value: 'a' },
    ]);
  });

  it('rewriting a value a range already holds changes nothing', () => {
    const m = new IntervalMap('d');
    m.set(0, 30, 'a');
    m.set(5, 25, 'a');
    expect(entries(m)).toEqual([{ start: 0, end: 30, value: 'a' }]);
  });

  it('an empty range (start === end) is a no-op', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    m.set(5, 5, 'b');
    expect(entries(m)).toEqual([{ start: 0, end: 10, value: 'a' }]);
  });

  it('a custom equality merges structurally equal values', () => {
    const m = new IntervalMap<{ k: number } | null>(null, { equals: (a, b) => a?.k === b?.k });
    m.set(0, 5, { k: 1 });
    m.set(5, 9, { k: 1 });
    expect(m.size).toBe(1);
    m.set(2, 3, { k: 1 });
    expect(m.size).toBe(1);
  });

  it('bigint values compare by value', () => {
    const m = new IntervalMap<bigint>(0n);
    m.set(0, 5, 1n << 3n);
    m.set(5, 9, BigInt(8));
    expect(entries(m)).toEqual([{ start: 0, end: 9, value: 8n }]);
    m.set(0, 9, BigInt(0));
    expect(m.size).toBe(0);
  });

  it('a range may end exactly at the limit', () => {
    const m = new IntervalMap('d', { limit: 100 });
    m.set(90, 100, 'a');
    expect(m.get(99)).toBe('a');
    expect(entries(m)).toEqual([{ start: 90, end: 100, value: 'a' }]);
  });
});

describe('IntervalMap: get and entryAt', () => {
  const m = new IntervalMap('d');
  m.set(10, 20, 'a');

  it('get on the first key of a range returns its value', () => {
    expect(m.get(10)).toBe('a');
  });

  it('get on the last key of a range returns its value', () => {
    expect(m.get(19)).toBe('a');
  });

  it('get on the exclusive end returns the default', () => {
    expect(m.get(20)).toBe('d');
  });

  it('get just before the start returns the default', () => {
    expect(m.get(9)).toBe('d');
  });

  it('entryAt inside a range returns the whole range', () => {
    expect(m.entryAt(15)).toEqual({ start: 10, end: 20, value: 'a' });
  });

  it('entryAt in a gap returns the gap bounded by its neighbours and the key space', () => {
    expect(m.entryAt(3)).toEqual({ start: 0, end: 10, value: 'd' });
    expect(m.entryAt(20)).toEqual({ start: 20, end: Number.MAX_SAFE_INTEGER, value: 'd' });
  });
});

describe('IntervalMap: ranges', () => {
  const m = new IntervalMap('d');
  m.set(10, 20, 'a');
  m.set(30, 40, 'b');

  it('ranges() yields stored entries in order', () => {
    expect(entries(m)).toEqual([
      { start: 10, end: 20, value: 'a' },
      { start: 30, end: 40, value: 'b' },
    ]);
  });

  it('ranges(from, to) clips entries to the window', () => {
    expect([...m.ranges(15, 35)]).toEqual([
      { start: 15, end: 20, value: 'a' },
      { start: 30, end: 35, value: 'b' },
    ]);
  });

  it('ranges(from, to) skips entries that only touch the window', () => {
    expect([...m.ranges(20, 30)]).toEqual([]);
  });

  it('includeDefault yields the gaps so the runs tile the window', () => {
    expect([...m.ranges(5, 45, { includeDefault: true })]).toEqual([
      { start: 5, end: 10, value: 'd' },
      { start: 10, end: 20, value: 'a' },
      { start: 20, end: 30, value: 'd' },
      { start: 30, end: 40, value: 'b' },
      { start: 40, end: 45, value: 'd' },
    ]);
  });

  it('includeDefault on an empty map yields the whole window as one gap', () => {
    expect([...new IntervalMap('d').ranges(0, 8, { includeDefault: true })]).toEqual([
      { start: 0, end: 8, value: 'd' },
    ]);
  });

  it('an empty window yields nothing', () => {
    expect([...m.ranges(15, 15, { includeDefault: true })]).toEqual([]);
  });

  it('mutating the map while iterating throws ERR_INVALID_STATE', () => {
    const n = new IntervalMap('d');
    n.set(0, 1, 'a');
    n.set(2, 3, 'a');
    const it = n.ranges();
    it.next();
    n.set(5, 6, 'b');
    expectCode(() => it.next(), Error, 'ERR_INVALID_STATE');
  });
});

describe('IntervalMap: diff', () => {
  const m = new IntervalMap('d');
  m.set(10, 20, 'a');
  m.set(20, 30, 'b');

  it('diff returns exactly the sub-ranges whose value differs, with their current value', () => {
    expect(m.diff(0, 40, 'a')).toEqual([
      { start: 0, end: 10, value: 'd' },
      { start: 20, end: 30, value: 'b' },
      { start: 30, end: 40, value: 'd' },
    ]);
  });

  it('diff is empty when the whole range already holds the value', () => {
    expect(m.diff(12, 18, 'a')).toEqual([]);
  });

  it('diff against the default returns the stored entries, clipped', () => {
    expect(m.diff(15, 25, 'd')).toEqual([
      { start: 15, end: 20, value: 'a' },
      { start: 20, end: 25, value: 'b' },
    ]);
  });
});

describe('IntervalMap: clear, clone, snapshot and restore', () => {
  it('clear removes every entry', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    m.clear();
    expect(m.size).toBe(0);
    expect(m.get(5)).toBe('d');
  });

  it('a clone is independent of the original', () => {
    const m = new IntervalMap('d', { nodeCapacity: 4 });
    for (let i = 0; i < 50; i++) m.set(2 * i, 2 * i + 1, 'a');
    const c = m.clone();
    m.set(0, 200, 'b');
    expect(c.size).toBe(50);
    expect(c.nodeCapacity).toBe(4);
    expect(c.get(2)).toBe('a');
    expect(c.get(3)).toBe('d');
  });

  it('restoring a window snapshot undoes changes inside the window only', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    const snap = m.snapshot(5, 10);
    m.set(5, 10, 'b');
    m.set(20, 30, 'c');
    m.restore(snap);
    expect(entries(m)).toEqual([
      { start: 0, end: 10, value: 'a' },
      { start: 20, end: 30, value: 'c' },
    ]);
  });

  it('restoring a whole-map snapshot brings back every entry', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    m.set(15, 20, 'b');
    const before = entries(m);
    const snap = m.snapshot();
    m.set(0, 100, 'c');
    m.restore(snap);
    expect(entries(m)).toEqual(before);
  });

  it('a snapshot can be restored more than once', () => {
    const m = new IntervalMap('d');
    m.set(0, 10, 'a');
    const snap = m.snapshot(0, 10);
    m.clear();
    m.restore(snap);
    m.set(0, 10, 'x');
    m.restore(snap);
    expect(entries(m)).toEqual([{ start: 0, end: 10, value: 'a' }]);
    expect([...snap.entries()]).toEqual([{ start: 0, end: 10, value: 'a' }]);
  });

  it('a snapshot of another map is refused with ERR_INVALID_ARG_VALUE', () => {
    const a = new IntervalMap('d');
    const b = new IntervalMap('d');
    expectCode(() => b.restore(a.snapshot()), TypeError, 'ERR_INVALID_ARG_VALUE');
  });
});

describe('IntervalMap: argument validation', () => {
  const m = new IntervalMap('d', { limit: 1000 });

  it('a non-number key is a TypeError ERR_INVALID_ARG_TYPE', () => {
    expectCode(() => m.set('1' as unknown as number, 2, 'a'), TypeError, 'ERR_INVALID_ARG_TYPE');
    expectCode(() => m.get(1n as unknown as number), TypeError, 'ERR_INVALID_ARG_TYPE');
  });

  it('a non-integer key is a RangeError ERR_OUT_OF_RANGE', () => {
    expectCode(() => m.set(1.5, 2, 'a'), RangeError, 'ERR_OUT_OF_RANGE');
    expectCode(() => m.get(NaN), RangeError, 'ERR_OUT_OF_RANGE');
  });

  it('a negative key is a RangeError ERR_OUT_OF_RANGE', () => {
    expectCode(() => m.set(-1, 2, 'a'), RangeError, 'ERR_OUT_OF_RANGE');
  });

  it('a key beyond the limit is a RangeError ERR_OUT_OF_RANGE', () => {
    expectCode(() => m.set(0, 1001, 'a'), RangeError, 'ERR_OUT_OF_RANGE');
    expectCode(() => m.get(1000), RangeError, 'ERR_OUT_OF_RANGE');
  });

  it('start after end is a RangeError ERR_OUT_OF_RANGE naming both', () => {
    expect(() => m.set(5, 4, 'a')).toThrow('IntervalMap.set: start 5 is after end 4');
  });

  it('a node capacity below 4 is refused', () => {
    expectCode(() => new IntervalMap('d', { nodeCapacity: 3 }), RangeError, 'ERR_OUT_OF_RANGE');
  });
});

// ---------------------------------------------------------------------------------------
// Property tests: the map against a per-key array, with tiny nodes so that a few hundred
// operations already split and merge leaves and branches at several levels.

const KEYS = 512;
const VALUES = ['d', 'a', 'b', 'c'] as const; // 'd' is the default
type Val = (typeof VALUES)[number];

interface Op {
  start: number;
  end: number;
  value: Val;
}

const opArb: fc.Arbitrary<Op> = fc
  .tuple(
    fc.nat(KEYS),
    // Mostly short ranges (many entries), sometimes long ones (bulk deletes across leaves).
    fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 0, max: 8 }) }, { weight: 1, arbitrary: fc.nat(KEYS) }),
    fc.constantFrom(...VALUES),
  )
  .map(([start, len, value]) => ({ start, end: Math.min(KEYS, start + len), value }));

/** Sequences up to `max` long; fast-check's default size would keep them near 10. */
const opsArb = (max: number): fc.Arbitrary<Op[]> => fc.array(opArb, { maxLength: max, size: 'max' });

function applyModel(model: Val[], op: Op): void {
  for (let k = op.start; k < op.end; k++) model[k] = op.value;
}

/** The canonical runs of a per-key model. */
function modelRuns(model: Val[]): IntervalEntry<Val>[] {
  const out: IntervalEntry<Val>[] = [];
  let k = 0;
  while (k < model.length) {
    let e = k + 1;
    while (e < model.length && model[e] === model[k]) e++;
    if (model[k] !== 'd') out.push({ start: k, end: e, value: model[k]! });
    k = e;
  }
  return out;
}

function checkAgainstModel(m: IntervalMap<Val>, model: Val[]): void {
  const runs = entries(m);
  // Canonical: sorted, non-overlapping, non-empty, no default entries, no equal neighbours.
  for (let i = 0; i < runs.length; i++) {
    const r = runs[i]!;
    expect(r.start).toBeLessThan(r.end);
    expect(r.value).not.toBe('d');
    if (i > 0) {
      const p = runs[i - 1]!;
      expect(p.end).toBeLessThanOrEqual(r.start);
      if (p.end === r.start) expect(p.value).not.toBe(r.value);
    }
  }
  expect(runs).toEqual(modelRuns(model));
  expect(m.size).toBe(runs.length);
  const got: Val[] = [];
  for (let k = 0; k <= KEYS; k++) got.push(m.get(k));
  expect(got).toEqual(model);
}

const capacityArb = fc.constantFrom(4, 5, 6, 8, 64);

describe('IntervalMap: properties against a per-key model', () => {
  it('after any sequence of sets, get/ranges/size agree with the model and the runs are canonical', () => {
    fc.assert(
      fc.property(capacityArb, opsArb(300), (cap, ops) => {
        const m = new IntervalMap<Val>('d', { nodeCapacity: cap });
        const model: Val[] = new Array(KEYS + 1).fill('d');
        for (const op of ops) {
          m.set(op.start, op.end, op.value);
          applyModel(model, op);
        }
        checkAgainstModel(m, model);
      }),
      { numRuns: runs(400) },
    );
  });

  it('the map stays consistent after every single operation, not only at the end', () => {
    fc.assert(
      fc.property(fc.constantFrom(4, 5), opsArb(80), (cap, ops) => {
        const m = new IntervalMap<Val>('d', { nodeCapacity: cap });
        const model: Val[] = new Array(KEYS + 1).fill('d');
        for (const op of ops) {
          m.set(op.start, op.end, op.value);
          applyModel(model, op);
          expect(entries(m)).toEqual(modelRuns(model));
        }
        checkAgainstModel(m, model);
      }),
      { numRuns: runs(150) },
    );
  });

  it('inserting and then erasing isolated runs in random orders rebalances back to empty', () => {
    // Isolated runs never merge, so every erase removes one entry: this drives leaf and
    // branch borrows and merges on both sides and root collapses, which random overwrites
    // reach only rarely.
    const slots = fc.uniqueArray(fc.nat(KEYS / 2 - 1), { minLength: 1, maxLength: KEYS / 2, size: 'max' });
    fc.assert(
      fc.property(fc.constantFrom(4, 5, 6), slots, slots, (cap, inserts, erases) => {
        const m = new IntervalMap<Val>('d', { nodeCapacity: cap });
        const model: Val[] = new Array(KEYS + 1).fill('d');
        for (const k of inserts) {
          m.set(2 * k, 2 * k + 1, 'a');
          model[2 * k] = 'a';
        }
        checkAgainstModel(m, model);
        for (const k of [...erases, ...inserts]) {
          m.set(2 * k, 2 * k + 1, 'd');
          model[2 * k] = 'd';
        }
        checkAgainstModel(m, model);
        expect(m.size).toBe(0);
      }),
      { numRuns: runs(200) },
    );
  });

  it('ranges(from, to, includeDefault) tiles the window and matches the model per key', () => {
    fc.assert(
      fc.property(capacityArb, opsArb(200), fc.nat(KEYS), fc.nat(KEYS), (cap, ops, x, y) => {
        const [from, to] = x <= y ? [x, y] : [y, x];
        const m = new IntervalMap<Val>('d', { nodeCapacity: cap });
        const model: Val[] = new Array(KEYS + 1).fill('d');
        for (const op of ops) {
          m.set(op.start, op.end, op.value);
          applyModel(model, op);
        }
        const runs = [...m.ranges(from, to, { includeDefault: true })];
        let pos = from;
        for (const r of runs) {
          expect(r.start).toBe(pos);
          expect(r.end).toBeGreaterThan(r.start);
          for (let k = r.start; k < r.end; k++) expect(model[k]).toBe(r.value);
          pos = r.end;
        }
        expect(pos).toBe(to);
        const stored = [...m.ranges(from, to)];
        expect(stored).toEqual(runs.filter((r) => r.value !== 'd'));
      }),
      { numRuns: runs(300) },
    );
  });

  it('diff returns exactly the keys whose value differs, as canonical clipped runs', () => {
    fc.assert(
      fc.property(
        capacityArb,
        opsArb(200),
        opArb,
        (cap, ops, probe) => {
          const m = new IntervalMap<Val>('d', { nodeCapacity: cap });
          const model: Val[] = new Array(KEYS + 1).fill('d');
          for (const op of ops) {
            m.set(op.start, op.end, op.value);
            applyModel(model, op);
          }
          const d = m.diff(probe.start, probe.end, probe.value);
          const covered = new Set<number>();
          for (const r of d) {
            for (let k = r.start; k < r.end; k++) {
              expect(model[k]).toBe(r.value);
              covered.add(k);
            }
          }
          for (let k = probe.start; k < probe.end; k++) {
            expect(covered.has(k)).toBe(model[k] !== probe.value);
          }
          // Applying the value to the diff only equals applying it to the whole range.
          const viaDiff = m.clone();
          for (const r of d) viaDiff.set(r.start, r.end, probe.value);
          m.set(probe.start, probe.end, probe.value);
          expect(entries(viaDiff)).toEqual(entries(m));
        },
      ),
      { numRuns: runs(300) },
    );
  });

  it('restoring a window snapshot undoes any later sets inside the window', () => {
    fc.assert(
      fc.property(
        capacityArb,
        opsArb(150),
        opArb,
        opsArb(50),
        (cap, before, window, after) => {
          const m = new IntervalMap<Val>('d', { nodeCapacity: cap });
          for (const op of before) m.set(op.start, op.end, op.value);
          const expected = entries(m);
          const snap = m.snapshot(window.start, window.end);
          // Later writes confined to the window, as a rolled-back conversion's would be.
          for (const op of after) {
            const s = Math.max(window.start, Math.min(op.start, window.end));
            const e = Math.max(s, Math.min(op.end, window.end));
            m.set(s, e, op.value);
          }
          m.restore(snap);
          expect(entries(m)).toEqual(expected);
        },
      ),
      { numRuns: runs(300) },
    );
  });

  it('restoring a whole-map snapshot or reading a clone reproduces the map exactly', () => {
    fc.assert(
      fc.property(capacityArb, opsArb(200), opsArb(100), (cap, before, after) => {
        const m = new IntervalMap<Val>('d', { nodeCapacity: cap });
        const model: Val[] = new Array(KEYS + 1).fill('d');
        for (const op of before) {
          m.set(op.start, op.end, op.value);
          applyModel(model, op);
        }
        const snap = m.snapshot();
        const copy = m.clone();
        for (const op of after) m.set(op.start, op.end, op.value);
        m.restore(snap);
        checkAgainstModel(m, model);
        checkAgainstModel(copy, model);
        // The reloaded tree must keep working: apply more sets to both.
        const model2 = model.slice();
        for (const op of after) {
          m.set(op.start, op.end, op.value);
          copy.set(op.start, op.end, op.value);
          applyModel(model2, op);
        }
        checkAgainstModel(m, model2);
        checkAgainstModel(copy, model2);
      }),
      { numRuns: runs(300) },
    );
  });
});
