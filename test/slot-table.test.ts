// Unit tests of the slot table and dirty bitmap (pure TypeScript).
import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { SlotTable, type SlotExtent } from '../lib/memory/slot-table';
import { DirtyBitmap } from '../lib/memory/dirty-log';
import { runs } from './runs';

const slot = (id: number, gpa: bigint, size: bigint, addressSpace = 0): SlotExtent => ({ id, addressSpace, guestPhysAddr: gpa, size });

describe('SlotTable', () => {
  test('at() finds the slot containing an address, not its end', () => {
    const t = new SlotTable();
    const a = slot(0, 0x1000n, 0x1000n);
    t.insert(a);
    expect(t.at(0, 0x1000n)).toBe(a);
    expect(t.at(0, 0x1fffn)).toBe(a);
    expect(t.at(0, 0x2000n)).toBeUndefined();
    expect(t.at(0, 0xfffn)).toBeUndefined();
    expect(t.at(1, 0x1000n)).toBeUndefined();
  });

  test('overlapping() and cover() report slots and gaps in order', () => {
    const t = new SlotTable();
    t.insert(slot(1, 0x3000n, 0x1000n));
    t.insert(slot(0, 0x1000n, 0x1000n));
    expect(t.overlapping(0, 0x1800n, 0x2000n).map((s) => s.id)).toEqual([0, 1]);
    expect(t.overlapping(0, 0x2000n, 0x1000n)).toEqual([]);
    expect(t.cover(0, 0n, 0x5000n).map((p) => [p.slot?.id, p.guestPhysAddr, p.size])).toEqual([
      [undefined, 0n, 0x1000n],
      [0, 0x1000n, 0x1000n],
      [undefined, 0x2000n, 0x1000n],
      [1, 0x3000n, 0x1000n],
      [undefined, 0x4000n, 0x1000n],
    ]);
  });

  test('freeId returns the lowest unused id and undefined when full', () => {
    const t = new SlotTable();
    t.insert(slot(0, 0n, 1n));
    t.insert(slot(2, 2n, 1n));
    expect(t.freeId(0, 4)).toBe(1);
    t.insert(slot(1, 1n, 1n));
    t.insert(slot(3, 3n, 1n));
    expect(t.freeId(0, 4)).toBeUndefined();
    expect(t.freeId(1, 4)).toBe(0);
  });

  test('delete removes from both indexes', () => {
    const t = new SlotTable();
    const a = slot(0, 0n, 0x1000n);
    t.insert(a);
    expect(t.delete(a)).toBe(true);
    expect(t.delete(a)).toBe(false);
    expect(t.at(0, 0n)).toBeUndefined();
    expect(t.size).toBe(0);
  });

  test('agrees with a linear scan for random non-overlapping slots', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 200 }), { maxLength: 40 }), fc.array(fc.integer({ min: 0, max: 210 * 16 })), (starts, probes) => {
        const t = new SlotTable();
        const slots = starts.map((s, i) => slot(i, BigInt(s * 16), BigInt(1 + (s % 15))));
        for (const s of slots) t.insert(s);
        for (const p of probes) {
          const expected = slots.find((s) => s.guestPhysAddr <= BigInt(p) && BigInt(p) < s.guestPhysAddr + s.size);
          expect(t.at(0, BigInt(p))).toBe(expected);
        }
        const all = t.all().map((s) => s.guestPhysAddr);
        expect(all).toEqual([...all].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
      }),
      { numRuns: runs(200) },
    );
  });
});

describe('DirtyBitmap', () => {
  test('sizes the kernel bitmap in 64-bit words', () => {
    expect(DirtyBitmap.allocate(1).length).toBe(1);
    expect(DirtyBitmap.allocate(64).length).toBe(1);
    expect(DirtyBitmap.allocate(65).length).toBe(2);
  });

  test('decodes bits least significant first into pages and addresses', () => {
    const words = new BigUint64Array([0b1011n | (1n << 63n), 1n << 1n]);
    const log = new DirtyBitmap(0x100000n, 66, 4096, words);
    expect(log.dirtyPages().map((p) => p.index)).toEqual([0, 1, 3, 63, 65]);
    expect(log.dirtyPages()[2]!.guestPhysAddr).toBe(0x100000n + 3n * 4096n);
    expect(log.count).toBe(5);
    expect(log.isDirty(3)).toBe(true);
    expect(log.isDirty(2)).toBe(false);
    expect(() => log.isDirty(66)).toThrow(RangeError);
  });

  test('ignores bits beyond the slot', () => {
    const log = new DirtyBitmap(0n, 3, 4096, new BigUint64Array([0xffn]));
    expect(log.dirtyPages().map((p) => p.index)).toEqual([0, 1, 2]);
  });

  test('agrees with a per-bit model', () => {
    fc.assert(
      fc.property(fc.array(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), { minLength: 1, maxLength: 4 }), (values) => {
        const words = BigUint64Array.from(values);
        const pages = words.length * 64;
        const log = new DirtyBitmap(0n, pages, 4096, words);
        const expected: number[] = [];
        for (let i = 0; i < pages; i++) if ((words[i >> 6]! >> BigInt(i & 63)) & 1n) expected.push(i);
        expect(log.dirtyPages().map((p) => p.index)).toEqual(expected);
        expect(log.count).toBe(expected.length);
      }),
    );
  });
});
