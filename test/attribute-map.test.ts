// Unit and property tests of vm.attributes, the shared/private record KVM cannot be asked for.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  AttributeMap,
  KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE,
  PAGE_SIZE,
  type AttributeRange,
} from '../lib/events/attribute-map';
import { runs } from './runs';

const PAGE = BigInt(PAGE_SIZE);
const TOP = 1n << 64n;

function thrown(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a throw');
}

function expectError(fn: () => unknown, ctor: TypeErrorConstructor | RangeErrorConstructor, code: string, message?: string): void {
  const err = thrown(fn);
  expect(err).toBeInstanceOf(ctor);
  expect(err.code).toBe(code);
  if (message !== undefined) expect(err.message).toBe(message);
}

describe('AttributeMap: lookups', () => {
  it('a new map reads shared everywhere with no stored ranges', () => {
    const a = new AttributeMap();
    expect(a.count).toBe(0);
    expect(a.at(0)).toBe('shared');
    expect(a.at(TOP - 1n)).toBe('shared');
    expect(a.attributesAt(0x1000)).toBe(0n);
    expect(a.ranges()).toEqual([]);
  });

  it('at and attributesAt report a range set private', () => {
    const a = new AttributeMap();
    a.set(0x1000, 0x2000, PRIVATE);
    expect(a.at(0x1000)).toBe('private');
    expect(a.attributesAt(0x2fff)).toBe(PRIVATE);
  });

  it('at on the first byte after a private range reads shared', () => {
    const a = new AttributeMap();
    a.set(0x1000, 0x2000, PRIVATE);
    expect(a.at(0x3000)).toBe('shared');
    expect(a.at(0xfff)).toBe('shared');
  });

  it('at accepts unaligned addresses and answers for their page', () => {
    const a = new AttributeMap();
    a.set(0x1000n, 0x1000n, PRIVATE);
    expect(a.at(0x1234)).toBe('private');
    expect(a.at(0x1fffn)).toBe('private');
  });

  it('attributes without the PRIVATE bit read as shared but are recorded', () => {
    const a = new AttributeMap();
    a.set(0, 0x1000, 1n);
    expect(a.at(0)).toBe('shared');
    expect(a.attributesAt(0)).toBe(1n);
    expect(a.count).toBe(1);
  });

  it('rangeAt returns the whole private run or shared gap around an address', () => {
    const a = new AttributeMap();
    a.set(0x4000, 0x4000, PRIVATE);
    expect(a.rangeAt(0x5000)).toEqual({ guestPhysAddr: 0x4000n, size: 0x4000n, attributes: PRIVATE, state: 'private' });
    expect(a.rangeAt(0x9000)).toEqual({ guestPhysAddr: 0x8000n, size: TOP - 0x8000n, attributes: 0n, state: 'shared' });
  });
});

describe('AttributeMap: set, merge and split', () => {
  it('adjacent private ranges merge into one', () => {
    const a = new AttributeMap();
    a.set(0x0, 0x1000, PRIVATE);
    a.set(0x1000, 0x1000, PRIVATE);
    expect(a.ranges()).toEqual([{ guestPhysAddr: 0n, size: 0x2000n, attributes: PRIVATE, state: 'private' }]);
  });

  it('converting the middle of a private range to shared splits it', () => {
    const a = new AttributeMap();
    a.set(0, 0x10000, PRIVATE);
    a.set(0x4000, 0x1000, 0n);
    expect(a.count).toBe(2);
    expect(a.ranges().map((r) => [r.guestPhysAddr, r.size])).toEqual([
      [0n, 0x4000n],
      [0x5000n, 0xb000n],
    ]);
  });

  it('setting a range back to shared removes its entry', () => {
    const a = new AttributeMap();
    a.set(0x1000, 0x1000, PRIVATE);
    a.set(0x1000, 0x1000, 0n);
    expect(a.count).toBe(0);
  });

  it('equal attributes passed as number and bigint merge', () => {
    const a = new AttributeMap();
    a.set(0, 0x1000, 8);
    a.set(0x1000, 0x1000, 8n);
    expect(a.count).toBe(1);
  });

  it('the last page of the 64-bit space can be set with bigints', () => {
    const a = new AttributeMap();
    a.set(TOP - PAGE, PAGE, PRIVATE);
    expect(a.at(TOP - 1n)).toBe('private');
    expect(a.ranges()).toEqual([{ guestPhysAddr: TOP - PAGE, size: PAGE, attributes: PRIVATE, state: 'private' }]);
  });

  it('addresses above 2^53 keep full precision', () => {
    const a = new AttributeMap();
    const gpa = (1n << 60n) + 0x3000n;
    a.set(gpa, PAGE, PRIVATE);
    expect(a.at(gpa)).toBe('private');
    expect(a.at(gpa - PAGE)).toBe('shared');
    expect(a.at(gpa + PAGE)).toBe('shared');
    expect(a.ranges()[0]!.guestPhysAddr).toBe(gpa);
  });

  it('the whole 64-bit space can be set in one call', () => {
    const a = new AttributeMap();
    a.set(0n, TOP, PRIVATE);
    expect(a.ranges()).toEqual([{ guestPhysAddr: 0n, size: TOP, attributes: PRIVATE, state: 'private' }]);
  });
});

describe('AttributeMap: ranges', () => {
  const a = new AttributeMap();
  a.set(0x2000, 0x2000, PRIVATE);
  a.set(0x8000, 0x1000, PRIVATE);

  it('ranges() reports only private ranges by default', () => {
    expect(a.ranges().map((r) => r.state)).toEqual(['private', 'private']);
  });

  it('ranges(from, to) clips to the window', () => {
    expect(a.ranges(0x3000, 0x9000)).toEqual([
      { guestPhysAddr: 0x3000n, size: 0x1000n, attributes: PRIVATE, state: 'private' },
      { guestPhysAddr: 0x8000n, size: 0x1000n, attributes: PRIVATE, state: 'private' },
    ]);
    expect(a.ranges(0x1000n, 0x3000n)).toEqual([
      { guestPhysAddr: 0x2000n, size: 0x1000n, attributes: PRIVATE, state: 'private' },
    ]);
  });

  it('includeShared reports the shared gaps so the runs tile the window', () => {
    expect(a.ranges(0, 0xa000, { includeShared: true }).map((r) => [r.guestPhysAddr, r.size, r.state])).toEqual([
      [0n, 0x2000n, 'shared'],
      [0x2000n, 0x2000n, 'private'],
      [0x4000n, 0x4000n, 'shared'],
      [0x8000n, 0x1000n, 'private'],
      [0x9000n, 0x1000n, 'shared'],
    ]);
  });

  it('ranges({ includeShared }) without bounds covers the space up to 2^64', () => {
    const all = a.ranges({ includeShared: true });
    expect(all.at(-1)).toEqual({ guestPhysAddr: 0x9000n, size: TOP - 0x9000n, attributes: 0n, state: 'shared' });
  });

  it('ranges(from, 2^64) accepts the end of the space as a bigint', () => {
    expect(a.ranges(0x8000n, TOP)).toHaveLength(1);
  });
});

describe('AttributeMap: differing', () => {
  const a = new AttributeMap();
  a.set(0x2000, 0x2000, PRIVATE);

  it('differing returns exactly the sub-ranges not already in the requested state', () => {
    expect(a.differing(0, 0x6000, PRIVATE)).toEqual([
      { guestPhysAddr: 0n, size: 0x2000n, attributes: 0n, state: 'shared' },
      { guestPhysAddr: 0x4000n, size: 0x2000n, attributes: 0n, state: 'shared' },
    ]);
  });

  it('differing toward shared returns the private parts, clipped', () => {
    expect(a.differing(0x3000, 0x3000, 0n)).toEqual([
      { guestPhysAddr: 0x3000n, size: 0x1000n, attributes: PRIVATE, state: 'private' },
    ]);
  });

  it('differing is empty when the range is already in the requested state', () => {
    expect(a.differing(0x2000n, 0x2000n, PRIVATE)).toEqual([]);
  });
});

describe('AttributeMap: snapshot and restore', () => {
  it('restoring a window snapshot rolls back a conversion inside it', () => {
    const a = new AttributeMap();
    a.set(0, 0x4000, PRIVATE);
    const before = a.ranges();
    const snap = a.snapshot(0x2000, 0x4000);
    expect(snap.guestPhysAddr).toBe(0x2000n);
    expect(snap.size).toBe(0x4000n);
    a.set(0x2000, 0x4000, 0n);
    a.restore(snap);
    expect(a.ranges()).toEqual(before);
  });

  it('restoring a whole-map snapshot brings back every range', () => {
    const a = new AttributeMap();
    a.set(0, 0x1000, PRIVATE);
    a.set(0x10000, 0x1000, PRIVATE);
    const before = a.ranges();
    const snap = a.snapshot();
    a.clear();
    a.restore(snap);
    expect(a.ranges()).toEqual(before);
  });

  it('a snapshot from another map is refused with ERR_INVALID_ARG_VALUE', () => {
    const snap = new AttributeMap().snapshot();
    expectError(() => new AttributeMap().restore(snap), TypeError, 'ERR_INVALID_ARG_VALUE');
  });
});

describe('AttributeMap: argument validation', () => {
  const a = new AttributeMap();

  it('an unaligned guestPhysAddr is ERR_UNALIGNED naming the operation, argument and rule', () => {
    expectError(() => a.set(0x1001, 0x1000, PRIVATE), RangeError, 'ERR_UNALIGNED',
      'attributes.set: guestPhysAddr 0x1001 is not page-aligned (4096)');
  });

  it('an unaligned bigint guestPhysAddr is ERR_UNALIGNED', () => {
    expectError(() => a.differing(0x1001n, 0x1000n, 0n), RangeError, 'ERR_UNALIGNED',
      'attributes.differing: guestPhysAddr 0x1001 is not page-aligned (4096)');
  });

  it('an unaligned size is ERR_UNALIGNED', () => {
    expectError(() => a.set(0, 0x1800, PRIVATE), RangeError, 'ERR_UNALIGNED',
      'attributes.set: size 0x1800 is not page-aligned (4096)');
  });

  it('a zero size is ERR_OUT_OF_RANGE', () => {
    expectError(() => a.set(0, 0, PRIVATE), RangeError, 'ERR_OUT_OF_RANGE',
      'attributes.set: size 0x0 must be greater than 0');
  });

  it('a negative address is ERR_OUT_OF_RANGE', () => {
    expectError(() => a.set(-4096, 0x1000, PRIVATE), RangeError, 'ERR_OUT_OF_RANGE',
      'attributes.set: guestPhysAddr -0x1000 must not be negative');
    expectError(() => a.at(-1n), RangeError, 'ERR_OUT_OF_RANGE');
  });

  it('a negative size is ERR_OUT_OF_RANGE', () => {
    expectError(() => a.set(0, -0x1000n, PRIVATE), RangeError, 'ERR_OUT_OF_RANGE');
  });

  it('NaN is ERR_OUT_OF_RANGE (not an integer)', () => {
    expectError(() => a.at(NaN), RangeError, 'ERR_OUT_OF_RANGE', 'attributes.at: guestPhysAddr NaN is not an integer');
  });

  it('a non-integer number is ERR_OUT_OF_RANGE', () => {
    expectError(() => a.set(0, 4096.5, PRIVATE), RangeError, 'ERR_OUT_OF_RANGE',
      'attributes.set: size 4096.5 is not an integer');
  });

  it('a number above 2^53 is refused and the message asks for a bigint', () => {
    const err = thrown(() => a.at(2 ** 60));
    expect(err).toBeInstanceOf(RangeError);
    expect(err.code).toBe('ERR_OUT_OF_RANGE');
    expect(err.message).toMatch(/^attributes\.at: guestPhysAddr 0x1000000000000000 .*pass a bigint$/);
  });

  it('a range ending beyond 2^64 is ERR_OUT_OF_RANGE', () => {
    expectError(() => a.set(TOP - PAGE, 2n * PAGE, PRIVATE), RangeError, 'ERR_OUT_OF_RANGE');
    expectError(() => a.set(0n, TOP + PAGE, PRIVATE), RangeError, 'ERR_OUT_OF_RANGE');
  });

  it('an address at or beyond 2^64 is ERR_OUT_OF_RANGE', () => {
    expectError(() => a.at(TOP), RangeError, 'ERR_OUT_OF_RANGE');
    expectError(() => a.set(TOP, PAGE, PRIVATE), RangeError, 'ERR_OUT_OF_RANGE');
  });

  it('attributes wider than 64 bits are ERR_OUT_OF_RANGE', () => {
    expectError(() => a.set(0, PAGE, TOP), RangeError, 'ERR_OUT_OF_RANGE',
      'attributes.set: attributes 0x10000000000000000 does not fit in 64 bits');
  });

  it('a string address is a TypeError ERR_INVALID_ARG_TYPE', () => {
    expectError(() => a.set('0x1000' as unknown as number, PAGE, PRIVATE), TypeError, 'ERR_INVALID_ARG_TYPE',
      'attributes.set: guestPhysAddr must be a number or bigint (received type string ("0x1000"))');
  });

  it('undefined, null and objects are TypeError ERR_INVALID_ARG_TYPE', () => {
    expectError(() => a.at(undefined as unknown as number), TypeError, 'ERR_INVALID_ARG_TYPE');
    expectError(() => a.set(0, null as unknown as number, PRIVATE), TypeError, 'ERR_INVALID_ARG_TYPE');
    expectError(() => a.set(0, PAGE, {} as unknown as bigint), TypeError, 'ERR_INVALID_ARG_TYPE');
  });

  it('ranges with from after to is ERR_OUT_OF_RANGE', () => {
    expectError(() => a.ranges(0x2000, 0x1000), RangeError, 'ERR_OUT_OF_RANGE');
  });

  it('ranges with an unaligned bound is ERR_UNALIGNED', () => {
    expectError(() => a.ranges(0x10, 0x1000), RangeError, 'ERR_UNALIGNED');
    expectError(() => a.ranges(0, 0x1010n), RangeError, 'ERR_UNALIGNED');
  });

  it('a rejected set leaves the map unchanged', () => {
    const b = new AttributeMap();
    b.set(0, PAGE, PRIVATE);
    expect(() => b.set(0x1000, 0x1001, 0n)).toThrow(RangeError);
    expect(b.ranges()).toEqual([{ guestPhysAddr: 0n, size: PAGE, attributes: PRIVATE, state: 'private' }]);
  });
});

// ---------------------------------------------------------------------------------------
// Property tests: the map against a per-page model, in a window placed either at 0 or
// high in the address space (above 2^53, where only bigints can name the pages).

const PAGES = 512;
const ATTRS = [0n, PRIVATE, 1n] as const;

interface SetOp {
  page: number;
  pages: number;
  attributes: bigint;
}

const setOpArb: fc.Arbitrary<SetOp> = fc
  .tuple(
    fc.nat(PAGES - 1),
    fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 8 }) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: PAGES }) }),
    fc.constantFrom(...ATTRS),
  )
  .map(([page, pages, attributes]) => ({ page, pages: Math.min(pages, PAGES - page), attributes }));

const baseArb = fc.constantFrom(0n, 1n << 60n, TOP - BigInt(PAGES) * PAGE);

function modelRanges(base: bigint, model: bigint[]): AttributeRange[] {
  const out: AttributeRange[] = [];
  let p = 0;
  while (p < model.length) {
    let q = p + 1;
    while (q < model.length && model[q] === model[p]) q++;
    if (model[p] !== 0n) {
      out.push({
        guestPhysAddr: base + BigInt(p) * PAGE,
        size: BigInt(q - p) * PAGE,
        attributes: model[p]!,
        state: (model[p]! & PRIVATE) !== 0n ? 'private' : 'shared',
      });
    }
    p = q;
  }
  return out;
}

describe('AttributeMap: properties against a per-page model', () => {
  it('after any sequence of sets, at/ranges/count agree with the model', () => {
    fc.assert(
      fc.property(baseArb, fc.constantFrom(4, 64), fc.array(setOpArb, { maxLength: 200, size: 'max' }), (base, cap, ops) => {
        const a = new AttributeMap({ nodeCapacity: cap });
        const model: bigint[] = new Array(PAGES).fill(0n);
        for (const op of ops) {
          a.set(base + BigInt(op.page) * PAGE, BigInt(op.pages) * PAGE, op.attributes);
          for (let p = op.page; p < op.page + op.pages; p++) model[p] = op.attributes;
        }
        const expected = modelRanges(base, model);
        expect(a.ranges()).toEqual(expected);
        expect(a.count).toBe(expected.length);
        const got: bigint[] = [];
        for (let p = 0; p < PAGES; p++) got.push(a.attributesAt(base + BigInt(p) * PAGE + 7n));
        expect(got).toEqual(model);
      }),
      { numRuns: runs(300) },
    );
  });

  it('differing covers exactly the pages whose attributes differ', () => {
    fc.assert(
      fc.property(baseArb, fc.array(setOpArb, { maxLength: 150, size: 'max' }), setOpArb, (base, ops, probe) => {
        const a = new AttributeMap({ nodeCapacity: 4 });
        const model: bigint[] = new Array(PAGES).fill(0n);
        for (const op of ops) {
          a.set(base + BigInt(op.page) * PAGE, BigInt(op.pages) * PAGE, op.attributes);
          for (let p = op.page; p < op.page + op.pages; p++) model[p] = op.attributes;
        }
        // Per page: the current attributes if differing() reports the page, else null.
        const reported = new Array<bigint | null>(PAGES).fill(null);
        for (const r of a.differing(base + BigInt(probe.page) * PAGE, BigInt(probe.pages) * PAGE, probe.attributes)) {
          const first = Number((r.guestPhysAddr - base) / PAGE);
          for (let p = first; p < first + Number(r.size / PAGE); p++) reported[p] = r.attributes;
        }
        const expected = model.map((attrs, p) =>
          p >= probe.page && p < probe.page + probe.pages && attrs !== probe.attributes ? attrs : null,
        );
        expect(reported).toEqual(expected);
      }),
      { numRuns: runs(300) },
    );
  });

  it('restoring a snapshot of a converted window restores the map exactly', () => {
    fc.assert(
      fc.property(
        baseArb,
        fc.array(setOpArb, { maxLength: 150, size: 'max' }),
        setOpArb,
        (base, ops, conversion) => {
          const a = new AttributeMap({ nodeCapacity: 4 });
          for (const op of ops) a.set(base + BigInt(op.page) * PAGE, BigInt(op.pages) * PAGE, op.attributes);
          const before = a.ranges();
          const gpa = base + BigInt(conversion.page) * PAGE;
          const size = BigInt(conversion.pages) * PAGE;
          const snap = a.snapshot(gpa, size);
          a.set(gpa, size, conversion.attributes);
          a.restore(snap);
          expect(a.ranges()).toEqual(before);
        },
      ),
      { numRuns: runs(300) },
    );
  });
});

describe('AttributeMap: scale', () => {
  it('holds 1,000,000 alternating private pages and answers lookups', () => {
    const a = new AttributeMap();
    const n = 1_000_000;
    // Every other page private: nothing merges, so each set adds one range.
    for (let i = 0; i < n; i++) a.set(i * 2 * PAGE_SIZE, PAGE_SIZE, PRIVATE);
    expect(a.count).toBe(n);
    expect(a.at(0)).toBe('private');
    expect(a.at(PAGE_SIZE)).toBe('shared');
    expect(a.at((2 * n - 2) * PAGE_SIZE)).toBe('private');
    expect(a.at((2 * n - 1) * PAGE_SIZE)).toBe('shared');
    // Filling one gap merges its two neighbours; clearing one page removes one range.
    a.set(PAGE_SIZE * 1001, PAGE_SIZE, PRIVATE);
    expect(a.count).toBe(n - 1);
    a.set(PAGE_SIZE * 500_000, PAGE_SIZE, 0n);
    expect(a.count).toBe(n - 2);
    expect(a.differing(0, 8 * PAGE_SIZE, PRIVATE)).toHaveLength(4);
  }, 30_000);
});
