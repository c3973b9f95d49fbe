// The conversion engine (lib/conversion.ts), proven through its seam: a fake
// ConversionContext with a real AttributeMap, real Notifiers, fake slots and a fake
// KVM_SET_MEMORY_ATTRIBUTES that records every call and can be told to fail part-way.
// This host's kernel cannot convert (no KVM_CAP_MEMORY_ATTRIBUTES), so this is where
// the engine's order, idempotence, veto, partial-failure and rollback contracts are checked.
import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { AttributeMap } from '../lib/events/attribute-map';
import { MemoryAttribute } from '../lib/core/caps';
import {
  ConversionError,
  convertRanges,
  coverageError,
  faultRequest,
  type ConversionContext,
  type ConversionPiece,
  type ConversionRequest,
  type ConversionResult,
  type GpaRange,
} from '../lib/events/conversion';
import type { ConversionBackend } from '../lib/events/conversion';
import { Notifier, type FileRangeEvent, type GpaRangeEvent } from '../lib/events/notifier';
import { runs } from './runs';

const PAGE = 4096n;
const PRIVATE = MemoryAttribute.Private;
const SHARED = MemoryAttribute.Shared;
/** Guest address of page `n`. */
const pg = (n: number): bigint => BigInt(n) * PAGE;
/** File offset of page `n`. */
const fo = (n: number): number => n * 4096;
const hex = (v: bigint | number): string => `0x${v.toString(16)}`;
const span = (gpa: bigint, size: bigint): string => `${hex(gpa)}+${hex(size)}`;
const req = (firstPage: number, pages: number, to: 'private' | 'shared'): ConversionRequest => ({
  guestPhysAddr: pg(firstPage),
  size: pg(pages),
  to,
});
const range = (firstPage: number, pages: number): GpaRange => ({ guestPhysAddr: pg(firstPage), size: pg(pages) });

// ---------------------------------------------------------------------------------
// The fake VM
// ---------------------------------------------------------------------------------

interface FakeFile {
  readonly name: string;
  readonly notifier: Notifier<FileRangeEvent<FakeFile>>;
}

interface FakeSlot {
  readonly id: number;
  readonly first: number;
  readonly pages: number;
  /** Shared backing: file and first page in it, or null file for anonymous memory. */
  readonly shared: { readonly file: FakeFile | null; readonly page: number };
  /** Private backing: the guest_memfd and first page in it. */
  readonly private: { readonly file: FakeFile; readonly page: number };
}

type Phase = 'populate' | 'start' | 'end';
type Entry =
  | { readonly kind: Phase; readonly who: string; readonly event: GpaRangeEvent | FileRangeEvent<FakeFile> }
  | { readonly kind: 'set'; readonly ranges: GpaRange[]; readonly attributes: bigint }
  | { readonly kind: 'discardShared' | 'discardPrivate'; readonly piece: ConversionPiece };

const NPAGES = 64;
/** Pages no slot covers (a coverage gap inside the fake address space). */
const GAP = { first: 56, pages: 2 };

/**
 * A fake VM:
 *   slot 0  pages  0..16  shared A@32p           private G@0     (file-backed)
 *   slot 1  pages 16..32  shared anonymous       private G@16p
 *   slot 2  pages 32..48  shared H@0             private H@0     (in place)
 *   slot 3  pages 48..56  shared A@0             private H@16p
 *           pages 56..58  no slot (gap)
 *   slot 4  pages 58..64  shared G@64p           private G@96p   (same file, other offset: not in place)
 */
class Harness {
  readonly log: Entry[] = [];
  readonly listenerErrors: unknown[] = [];
  readonly files = { A: fakeFile('A'), G: fakeFile('G'), H: fakeFile('H') };
  readonly vm = { name: 'fake-vm' };
  readonly vmNotifier = Notifier.create<GpaRangeEvent>();
  readonly attributes = new AttributeMap({ nodeCapacity: 4 });
  /** The fake kernel's own attribute truth, page → attributes. */
  readonly kernel = new Map<number, bigint>();
  readonly slots: FakeSlot[];
  /**
   * Make the `call`-th setAttributes call (counted from 0 since the last reset) fail at
   * range `at`, having applied the ranges before it. It throws an Error with
   * `applied: at`, or whatever `value` returns.
   */
  fail: { call: number; at: number; value?: () => unknown } | undefined;
  /** Make the `call`-th setAttributes call apply every range and then throw `value()` anyway. */
  failAfter: { call: number; value: () => unknown } | undefined;
  setCalls = 0;
  /** Problems seen inside the setter: ranges that did not differ, map updated early. */
  readonly setterProblems: string[] = [];
  /** Called inside setAttributes, before it applies anything. */
  onSet: ((ranges: readonly GpaRange[], attributes: bigint) => void) | undefined;
  /** A veto gate, registered first on every notifier: vetoes the `nth` populate `who` sees. */
  veto: { who: string; nth: number; error: Error } | undefined;
  vetoed = false;
  readonly ctx: ConversionContext;

  constructor(options: { record?: boolean } = {}) {
    const { A, G, H } = this.files;
    this.slots = [
      { id: 0, first: 0, pages: 16, shared: { file: A, page: 32 }, private: { file: G, page: 0 } },
      { id: 1, first: 16, pages: 16, shared: { file: null, page: 0 }, private: { file: G, page: 16 } },
      { id: 2, first: 32, pages: 16, shared: { file: H, page: 0 }, private: { file: H, page: 0 } },
      { id: 3, first: 48, pages: 8, shared: { file: A, page: 0 }, private: { file: H, page: 16 } },
      { id: 4, first: 58, pages: 6, shared: { file: G, page: 64 }, private: { file: G, page: 96 } },
    ];
    for (const [who, n] of this.notifiers()) {
      n.onError = (error) => void this.listenerErrors.push(error);
      n.register({
        populate: () => {
          const v = this.veto;
          if (v && v.who === who && v.nth-- === 0) {
            this.vetoed = true;
            throw v.error;
          }
        },
      });
    }
    if (options.record !== false) for (const [who, n] of this.notifiers()) this.record(who, n);
    const log = this.log;
    this.ctx = {
      vm: this.vm,
      notifier: this.vmNotifier,
      attributes: this.attributes,
      pieces: (r) => this.pieces(r),
      backend: {
        setAttributes: (ranges, attributes) => {
          log.push({ kind: 'set', ranges: ranges.map((x) => ({ guestPhysAddr: x.guestPhysAddr, size: x.size })), attributes });
          this.onSet?.(ranges, attributes);
          const call = this.setCalls++;
          ranges.forEach((x, i) => {
            if (this.fail && this.fail.call === call && this.fail.at === i)
              throw this.fail.value
                ? this.fail.value()
                : Object.assign(new Error(`fake KVM_SET_MEMORY_ATTRIBUTES refused range ${i}`), { code: 'EFAULT', applied: i });
            for (const p of pagesOf(x)) {
              if ((this.kernel.get(p) ?? SHARED) === attributes) this.setterProblems.push(`page ${p} already ${attributes}`);
              if (this.attributes.attributesAt(pg(p)) === attributes) this.setterProblems.push(`map has page ${p} before the setter`);
              this.kernel.set(p, attributes);
            }
          });
          if (this.failAfter && this.failAfter.call === call) throw this.failAfter.value();
        },
        discardShared: (piece) => void log.push({ kind: 'discardShared', piece: copyPiece(piece) }),
        discardPrivate: (piece) => void log.push({ kind: 'discardPrivate', piece: copyPiece(piece) }),
      },
    };
  }

  notifiers(): [string, Notifier<any>][] { // eslint-disable-line @typescript-eslint/no-explicit-any
    return [
      ['vm', this.vmNotifier],
      ['A', this.files.A.notifier],
      ['G', this.files.G.notifier],
      ['H', this.files.H.notifier],
    ];
  }

  /** A listener that appends every call to the shared log. */
  record(who: string, n: Notifier<any>): void { // eslint-disable-line @typescript-eslint/no-explicit-any
    n.register({
      populate: (event) => void this.log.push({ kind: 'populate', who, event }),
      invalidateStart: (event) => void this.log.push({ kind: 'start', who, event }),
      invalidateEnd: (event) => void this.log.push({ kind: 'end', who, event }),
    });
  }

  /** Cuts a range at slot boundaries, like Vm#conversionPieces; throws on gaps. */
  pieces(r: GpaRange): ConversionPiece[] {
    const start = r.guestPhysAddr;
    const end = start + r.size;
    const gaps: string[] = [];
    const out: ConversionPiece[] = [];
    let cursor = start;
    for (const s of this.slots) {
      const sStart = pg(s.first);
      const sEnd = pg(s.first + s.pages);
      const a = sStart > start ? sStart : start;
      const b = sEnd < end ? sEnd : end;
      if (a >= b) continue;
      if (a > cursor) gaps.push(`${hex(cursor)}..${hex(a)} (no slot)`);
      const delta = Number(a - sStart);
      const sharedOffset = s.shared.file ? fo(s.shared.page) + delta : delta;
      const privateOffset = fo(s.private.page) + delta;
      out.push({
        slot: s.id,
        guestPhysAddr: a,
        size: b - a,
        shared: { file: s.shared.file, offset: sharedOffset },
        private: { file: s.private.file, offset: privateOffset },
        inPlace: s.shared.file === s.private.file && sharedOffset === privateOffset,
      });
      cursor = b;
    }
    if (cursor < end) gaps.push(`${hex(cursor)}..${hex(end)} (no slot)`);
    if (gaps.length) throw coverageError('vm.convert', gaps);
    return out;
  }

  /** The slot holding page `p`. */
  slotOf(p: number): FakeSlot | undefined {
    return this.slots.find((s) => p >= s.first && p < s.first + s.pages);
  }

  convert(...requests: ConversionRequest[]): Promise<ConversionResult> {
    return convertRanges(this.ctx, requests);
  }

  /** Private pages of the map among the first NPAGES, as a string of s/P. */
  mapString(): string {
    let s = '';
    for (let p = 0; p < NPAGES; p++) s += this.attributes.at(pg(p)) === 'private' ? 'P' : 's';
    return s;
  }

  /** The log as readable lines. */
  lines(): string[] {
    return this.log.map(fmt);
  }

  clear(): void {
    this.log.length = 0;
    this.setCalls = 0;
    this.fail = undefined;
    this.failAfter = undefined;
    this.veto = undefined;
    this.vetoed = false;
  }
}

function fakeFile(name: string): FakeFile {
  return { name, notifier: Notifier.create<FileRangeEvent<FakeFile>>() };
}

function copyPiece(p: ConversionPiece): ConversionPiece {
  return { ...p, shared: { ...p.shared }, private: { ...p.private } };
}

function pagesOf(r: GpaRange): number[] {
  const first = Number(r.guestPhysAddr / PAGE);
  return Array.from({ length: Number(r.size / PAGE) }, (_, i) => first + i);
}

function isFileEvent(e: GpaRangeEvent | FileRangeEvent<FakeFile>): e is FileRangeEvent<FakeFile> {
  return 'file' in e;
}

function fmt(e: Entry): string {
  switch (e.kind) {
    case 'populate':
    case 'start':
    case 'end': {
      const ev = e.event;
      if (isFileEvent(ev)) return `${e.kind} ${e.who}@${span(BigInt(ev.offset), BigInt(ev.length))}`;
      return `${e.kind} vm ${span(ev.guestPhysAddr, ev.size)}`;
    }
    case 'set':
      return `set ${e.attributes === PRIVATE ? 'private' : 'shared'} ${e.ranges.map((r) => span(r.guestPhysAddr, r.size)).join(' ')}`;
    case 'discardShared':
    case 'discardPrivate': {
      const ref = e.kind === 'discardShared' ? e.piece.shared : e.piece.private;
      const file = (ref.file as FakeFile | null)?.name ?? 'anon';
      return `${e.kind} s${e.piece.slot} ${span(e.piece.guestPhysAddr, e.piece.size)} ${file}@${hex(ref.offset)}`;
    }
  }
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected the conversion to reject');
}

/** Per notifier: every invalidateStart has an invalidateEnd with the very same event. */
function expectBalanced(log: readonly Entry[]): void {
  const open = new Map<unknown, number>();
  for (const e of log) {
    if (e.kind !== 'start' && e.kind !== 'end') continue;
    const key = e.event;
    const n = open.get(key) ?? 0;
    if (e.kind === 'start') open.set(key, n + 1);
    else {
      expect(n, `invalidateEnd without invalidateStart: ${fmt(e)}`).toBeGreaterThan(0);
      open.set(key, n - 1);
    }
  }
  for (const n of open.values()) expect(n).toBe(0);
}

// ---------------------------------------------------------------------------------
// Order
// ---------------------------------------------------------------------------------

describe('conversion engine: order', () => {
  test('to private: populate(VM, private file) → invalidateStart(VM, shared file) → set(PRIVATE) → discardShared → invalidateEnd', async () => {
    const h = new Harness();
    const result = await h.convert(req(2, 2, 'private'));
    expect(h.lines()).toEqual([
      'populate vm 0x2000+0x2000',
      'populate G@0x2000+0x2000',
      'start vm 0x2000+0x2000',
      `start A@${span(BigInt(fo(34)), pg(2))}`,
      'set private 0x2000+0x2000',
      `discardShared s0 0x2000+0x2000 A@${hex(fo(34))}`,
      'end vm 0x2000+0x2000',
      `end A@${span(BigInt(fo(34)), pg(2))}`,
    ]);
    expect(result).toEqual({ converted: [{ guestPhysAddr: pg(2), size: pg(2), to: 'private' }], unchangedBytes: 0n });
    // The events say what, why, where, and the state the range will have.
    const vmEvent = (h.log[0] as { event: GpaRangeEvent }).event;
    expect(vmEvent).toEqual({
      vm: h.vm,
      guestPhysAddr: pg(2),
      size: pg(2),
      cause: 'convert-to-private',
      state: 'private',
      ranges: [{ slot: 0, guestPhysAddr: pg(2), size: pg(2) }],
    });
    const gEvent = (h.log[1] as { event: FileRangeEvent<FakeFile> }).event;
    expect(gEvent.file).toBe(h.files.G);
    expect(gEvent.cause).toBe('convert-to-private');
    expect(gEvent.ranges).toEqual([{ slot: 0, guestPhysAddr: pg(2), size: pg(2) }]);
    const aEvent = (h.log[3] as { event: FileRangeEvent<FakeFile> }).event;
    expect(aEvent.file).toBe(h.files.A);
    expect(aEvent.cause).toBe('convert-to-private');
    expect(h.mapString().slice(0, 6)).toBe('ssPPss');
    expect(h.listenerErrors).toEqual([]);
  });

  test('to shared: populate(VM, shared file) → invalidateStart(VM, guest_memfd) → set(0) → discardPrivate → invalidateEnd', async () => {
    const h = new Harness();
    await h.convert(req(2, 2, 'private'));
    h.clear();
    const result = await h.convert(req(2, 2, 'shared'));
    expect(h.lines()).toEqual([
      'populate vm 0x2000+0x2000',
      `populate A@${span(BigInt(fo(34)), pg(2))}`,
      'start vm 0x2000+0x2000',
      'start G@0x2000+0x2000',
      'set shared 0x2000+0x2000',
      'discardPrivate s0 0x2000+0x2000 G@0x2000',
      'end vm 0x2000+0x2000',
      'end G@0x2000+0x2000',
    ]);
    expect(result).toEqual({ converted: [{ guestPhysAddr: pg(2), size: pg(2), to: 'shared' }], unchangedBytes: 0n });
    const vmEvent = (h.log[0] as { event: GpaRangeEvent }).event;
    expect(vmEvent.cause).toBe('convert-to-shared');
    expect(vmEvent.state).toBe('shared');
    expect(h.attributes.ranges()).toEqual([]);
  });

  test('the map is updated only after the setter succeeded: invalidateStart sees the old state, invalidateEnd the new', async () => {
    const h = new Harness();
    const seen: string[] = [];
    const events: GpaRangeEvent[] = [];
    h.vmNotifier.register({
      populate: (e) => void (seen.push(`populate ${h.attributes.at(e.guestPhysAddr)}`), events.push(e)),
      invalidateStart: (e) => void (seen.push(`start ${h.attributes.at(e.guestPhysAddr)}`), events.push(e)),
      invalidateEnd: (e) => void (seen.push(`end ${h.attributes.at(e.guestPhysAddr)}`), events.push(e)),
    });
    h.onSet = (ranges) => void seen.push(`set ${h.attributes.at(ranges[0]!.guestPhysAddr)}`);
    await h.convert(req(4, 1, 'private'));
    expect(seen).toEqual(['populate shared', 'start shared', 'set shared', 'end private']);

    // A refusal leaves the map alone, as seen by invalidateEnd too, and by the rollback
    // pair the populate listener then hears for the range that never became shared.
    seen.length = 0;
    events.length = 0;
    h.clear();
    h.fail = { call: 0, at: 0 };
    expect(await rejection(h.convert(req(4, 1, 'shared')))).toBeInstanceOf(ConversionError);
    expect(seen).toEqual(['populate private', 'start private', 'set private', 'end private', 'start private', 'end private']);
    // The invalidation pair carries its own event; the rollback pair the populate event.
    const [populated, started, ended, rolledStart, rolledEnd] = events;
    expect(ended).toBe(started);
    expect(started).not.toBe(populated);
    expect(rolledStart).toBe(populated);
    expect(rolledEnd).toBe(populated);
    expect(h.mapString().slice(0, 6)).toBe('ssssPs');
    expect(h.setterProblems).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------
// What is touched
// ---------------------------------------------------------------------------------

describe('conversion engine: what is touched', () => {
  test('converting an already-private range calls nothing and reports it as unchanged', async () => {
    const h = new Harness();
    await h.convert(req(0, 8, 'private'));
    h.clear();
    const result = await h.convert(req(1, 6, 'private'));
    expect(result).toEqual({ converted: [], unchangedBytes: pg(6) });
    expect(h.log).toEqual([]);
    // The same for shared pages asked to become shared.
    expect(await h.convert(req(20, 4, 'shared'))).toEqual({ converted: [], unchangedBytes: pg(4) });
    expect(h.log).toEqual([]);
  });

  test('converting a half-private range touches only the differing sub-ranges', async () => {
    const h = new Harness();
    await h.convert(req(2, 2, 'private'), req(6, 1, 'private'));
    h.clear();
    const result = await h.convert(req(0, 8, 'private'));
    expect(result).toEqual({
      converted: [
        { guestPhysAddr: pg(0), size: pg(2), to: 'private' },
        { guestPhysAddr: pg(4), size: pg(2), to: 'private' },
        { guestPhysAddr: pg(7), size: pg(1), to: 'private' },
      ],
      unchangedBytes: pg(3),
    });
    expect(h.lines().filter((l) => !l.startsWith('populate') && !l.startsWith('start') && !l.startsWith('end'))).toEqual([
      'set private 0x0+0x2000 0x4000+0x2000 0x7000+0x1000',
      `discardShared s0 0x0+0x2000 A@${hex(fo(32))}`,
      `discardShared s0 0x4000+0x2000 A@${hex(fo(36))}`,
      `discardShared s0 0x7000+0x1000 A@${hex(fo(39))}`,
    ]);
    expect(h.lines().filter((l) => l.startsWith('populate G'))).toEqual([
      'populate G@0x0+0x2000',
      'populate G@0x4000+0x2000',
      'populate G@0x7000+0x1000',
    ]);
    expect(h.mapString().slice(0, 9)).toBe('PPPPPPPPs');
    expect(h.setterProblems).toEqual([]);
  });

  test('in-place pieces (shared file === private file, same offset) are not discarded and their file hears no invalidation', async () => {
    const h = new Harness();
    await h.convert(req(34, 4, 'private'));
    expect(h.lines()).toEqual([
      'populate vm 0x22000+0x4000',
      'populate H@0x2000+0x4000',
      'start vm 0x22000+0x4000',
      'set private 0x22000+0x4000',
      'end vm 0x22000+0x4000',
    ]);
    h.clear();
    await h.convert(req(34, 4, 'shared'));
    expect(h.lines()).toEqual([
      'populate vm 0x22000+0x4000',
      'populate H@0x2000+0x4000',
      'start vm 0x22000+0x4000',
      'set shared 0x22000+0x4000',
      'end vm 0x22000+0x4000',
    ]);
  });

  test('in-place pieces turning private are revoked after invalidateStart and before the kernel call; never when turning shared', async () => {
    const h = new Harness();
    const revoked: Array<{ slot: number; range: string; lastBefore: string }> = [];
    (h.ctx.backend as ConversionBackend).revokeShared = (p) =>
      void revoked.push({ slot: p.slot, range: span(p.guestPhysAddr, p.size), lastBefore: h.lines().at(-1) ?? '' });
    // Pages 30..36: slot 1 (anonymous shared, not in place) and slot 2 (in place).
    await h.convert(req(30, 6, 'private'));
    expect(revoked).toEqual([{ slot: 2, range: span(pg(32), pg(4)), lastBefore: expect.stringMatching(/^start /) }]);
    const lines = h.lines();
    expect(lines.findIndex((l) => l.startsWith('set'))).toBeGreaterThan(lines.findIndex((l) => l.startsWith('start')));
    revoked.length = 0;
    await h.convert(req(30, 6, 'shared'));
    expect(revoked).toEqual([]);
  });

  test('the same file at a different offset is not in place: discarded and invalidated', async () => {
    const h = new Harness();
    await h.convert(req(60, 2, 'private'));
    expect(h.lines()).toEqual([
      'populate vm 0x3c000+0x2000',
      `populate G@${span(BigInt(fo(98)), pg(2))}`,
      'start vm 0x3c000+0x2000',
      `start G@${span(BigInt(fo(66)), pg(2))}`,
      'set private 0x3c000+0x2000',
      `discardShared s4 0x3c000+0x2000 G@${hex(fo(66))}`,
      'end vm 0x3c000+0x2000',
      `end G@${span(BigInt(fo(66)), pg(2))}`,
    ]);
  });

  test('a range crossing several slots is cut into per-slot pieces with the right file offsets', async () => {
    const h = new Harness();
    await h.convert(req(12, 40, 'private')); // slots 0 (12..16), 1 (16..32), 2 (32..48), 3 (48..52)
    const vmPopulate = (h.log[0] as { event: GpaRangeEvent }).event;
    expect(vmPopulate.ranges).toEqual([
      { slot: 0, guestPhysAddr: pg(12), size: pg(4) },
      { slot: 1, guestPhysAddr: pg(16), size: pg(16) },
      { slot: 2, guestPhysAddr: pg(32), size: pg(16) },
      { slot: 3, guestPhysAddr: pg(48), size: pg(4) },
    ]);
    expect(h.lines()).toEqual([
      `populate vm ${span(pg(12), pg(40))}`,
      `populate G@${span(BigInt(fo(12)), pg(4))}`,
      `populate G@${span(BigInt(fo(16)), pg(16))}`,
      `populate H@${span(0n, pg(16))}`,
      `populate H@${span(BigInt(fo(16)), pg(4))}`,
      `start vm ${span(pg(12), pg(40))}`,
      `start A@${span(BigInt(fo(44)), pg(4))}`, // slot 0: A@32p + 12p
      // slot 1 is anonymous (no file event), slot 2 in place (no file event)
      `start A@${span(0n, pg(4))}`, // slot 3: A@0
      `set private ${span(pg(12), pg(40))}`,
      `discardShared s0 ${span(pg(12), pg(4))} A@${hex(fo(44))}`,
      `discardShared s1 ${span(pg(16), pg(16))} anon@0x0`,
      `discardShared s3 ${span(pg(48), pg(4))} A@0x0`,
      `end vm ${span(pg(12), pg(40))}`,
      `end A@${span(BigInt(fo(44)), pg(4))}`,
      `end A@${span(0n, pg(4))}`,
    ]);
    // File events name the GPA of their piece.
    const hEvents = h.log.filter((e) => e.kind === 'populate' && e.who === 'H').map((e) => (e as { event: FileRangeEvent }).event);
    expect(hEvents.map((e) => e.ranges)).toEqual([
      [{ slot: 2, guestPhysAddr: pg(32), size: pg(16) }],
      [{ slot: 3, guestPhysAddr: pg(48), size: pg(4) }],
    ]);
  });

  test('anonymous shared backing: discardShared is still called, and no file hears anything for it', async () => {
    const h = new Harness();
    await h.convert(req(20, 3, 'private'));
    expect(h.lines()).toEqual([
      `populate vm ${span(pg(20), pg(3))}`,
      `populate G@${span(BigInt(fo(20)), pg(3))}`,
      `start vm ${span(pg(20), pg(3))}`,
      `set private ${span(pg(20), pg(3))}`,
      `discardShared s1 ${span(pg(20), pg(3))} anon@${hex(fo(4))}`, // offset in the slot's anonymous mapping
      `end vm ${span(pg(20), pg(3))}`,
    ]);
    const piece = (h.log[4] as { piece: ConversionPiece }).piece;
    expect(piece.shared.file).toBeNull();
    // And back to shared: nothing to populate on the anonymous side, the guest_memfd is punched.
    h.clear();
    await h.convert(req(20, 3, 'shared'));
    expect(h.lines()).toEqual([
      `populate vm ${span(pg(20), pg(3))}`,
      `start vm ${span(pg(20), pg(3))}`,
      `start G@${span(BigInt(fo(20)), pg(3))}`,
      `set shared ${span(pg(20), pg(3))}`,
      `discardPrivate s1 ${span(pg(20), pg(3))} G@${hex(fo(20))}`,
      `end vm ${span(pg(20), pg(3))}`,
      `end G@${span(BigInt(fo(20)), pg(3))}`,
    ]);
  });
});

// ---------------------------------------------------------------------------------
// Veto, partial failure, coverage
// ---------------------------------------------------------------------------------

describe('conversion engine: veto', () => {
  test('a populate veto leaves map and kernel untouched, rejects with the veto, and earlier acceptors hear a start/end pair', async () => {
    const h = new Harness();
    const error = new Error('no, not now');
    h.veto = { who: 'G', nth: 0, error };
    expect(await rejection(h.convert(req(2, 2, 'private')))).toBe(error);
    expect(h.vetoed).toBe(true);
    expect(h.log.some((e) => e.kind === 'set' || e.kind.startsWith('discard'))).toBe(false);
    expect(h.attributes.ranges()).toEqual([]);
    expect(h.kernel.size).toBe(0);
    // The VM's listener accepted; it hears invalidateStart/End for exactly that event.
    expect(h.lines()).toEqual(['populate vm 0x2000+0x2000', 'start vm 0x2000+0x2000', 'end vm 0x2000+0x2000']);
    expect((h.log[1] as { event: unknown }).event).toBe((h.log[0] as { event: unknown }).event);
    expect((h.log[2] as { event: unknown }).event).toBe((h.log[0] as { event: unknown }).event);
  });

  test('a veto on a later sub-range rolls back every populate accepted for the earlier ones', async () => {
    const h = new Harness();
    await h.convert(req(1, 1, 'private'));
    h.clear();
    const error = new Error('veto on the second sub-range');
    h.veto = { who: 'vm', nth: 1, error }; // the VM's populate of [2, 3)
    expect(await rejection(h.convert(req(0, 3, 'private')))).toBe(error);
    expect(h.lines()).toEqual([
      'populate vm 0x0+0x1000',
      'populate G@0x0+0x1000',
      'start vm 0x0+0x1000',
      'start G@0x0+0x1000',
      'end vm 0x0+0x1000',
      'end G@0x0+0x1000',
    ]);
    expect(h.mapString().slice(0, 4)).toBe('sPss');
    expectBalanced(h.log);
  });

  test('a listener that accepted before a veto on the same notifier hears a start/end pair', async () => {
    const h = new Harness(); // recorder registered on the VM notifier...
    const error = new Error('second VM listener vetoes');
    h.vmNotifier.register({
      populate() {
        throw error; // ...and a vetoing listener after it
      },
    });
    expect(await rejection(h.convert(req(2, 2, 'private')))).toBe(error);
    expect(h.lines()).toEqual(['populate vm 0x2000+0x2000', 'start vm 0x2000+0x2000', 'end vm 0x2000+0x2000']);
  });
});

describe('conversion engine: a plan gone stale while listeners ran', () => {
  test("recheck's error reaches the caller as it was raised (not as a kernel refusal); nothing is applied and acceptors hear the rollback", async () => {
    const h = new Harness();
    const stale = Object.assign(new Error('vm.convert: slot 0 was removed while the conversion\'s listeners ran'), { code: 'ERR_CLOSED' });
    (h.ctx.backend as ConversionBackend).recheck = () => {
      throw stale;
    };
    const error = await rejection(h.convert(req(2, 2, 'private')));
    expect(error).toBe(stale);
    expect(error).not.toBeInstanceOf(ConversionError);
    expect(h.log.some((e) => e.kind === 'set' || e.kind.startsWith('discard'))).toBe(false);
    expect(h.attributes.ranges()).toEqual([]);
    expect(h.kernel.size).toBe(0);
    // Every invalidateStart has its end, and the populates accepted are undone.
    expectBalanced(h.log);
    expect(h.lines().filter((l) => l.startsWith('populate'))).toEqual(['populate vm 0x2000+0x2000', 'populate G@0x2000+0x2000']);
    expect(h.lines().filter((l) => l.startsWith('start')).length).toBeGreaterThanOrEqual(2);
  });
});

describe('conversion engine: partial failure', () => {
  test('the setter failing at range k: applied (in the map, stale copies discarded), failed, notApplied; invalidateEnd still delivered', async () => {
    const h = new Harness();
    await h.convert(req(1, 1, 'private'), req(3, 1, 'private'));
    h.clear();
    h.fail = { call: 0, at: 1 };
    // Differing sub-ranges of [0, 6): [0,1) [2,3) [4,6). The kernel takes the first.
    const err = await rejection(h.convert(req(0, 6, 'private')));
    expect(err).toBeInstanceOf(ConversionError);
    const e = err as ConversionError;
    expect(e.code).toBe('ERR_CONVERSION_PARTIAL');
    expect(e.applied).toEqual([range(0, 1)]);
    expect(e.failed).toEqual(range(2, 1));
    expect(e.notApplied).toEqual([range(4, 2)]);
    expect((e.cause as { applied: number }).applied).toBe(1);
    expect(e.message).toContain('0x2000..0x3000');
    expect(h.mapString().slice(0, 7)).toBe('PPsPsss');
    expect(h.log.filter((x) => x.kind === 'discardShared').map(fmt)).toEqual([`discardShared s0 0x0+0x1000 A@${hex(fo(32))}`]);
    expect(h.log.some((x) => x.kind === 'discardPrivate')).toBe(false);
    // Every start has its end, and the ends come after the kernel call. Then the
    // populate acceptors of the failed [2,3) and the not-applied [4,6) (the VM and the
    // guest_memfd G, not the shared file A) hear a rollback pair; the applied [0,1) none.
    expectBalanced(h.log);
    expect(h.lines()).toEqual([
      'populate vm 0x0+0x1000',
      'populate G@0x0+0x1000',
      'populate vm 0x2000+0x1000',
      'populate G@0x2000+0x1000',
      'populate vm 0x4000+0x2000',
      'populate G@0x4000+0x2000',
      'start vm 0x0+0x1000',
      `start A@${span(BigInt(fo(32)), pg(1))}`,
      'start vm 0x2000+0x1000',
      `start A@${span(BigInt(fo(34)), pg(1))}`,
      'start vm 0x4000+0x2000',
      `start A@${span(BigInt(fo(36)), pg(2))}`,
      'set private 0x0+0x1000 0x2000+0x1000 0x4000+0x2000',
      `discardShared s0 0x0+0x1000 A@${hex(fo(32))}`,
      'end vm 0x0+0x1000',
      `end A@${span(BigInt(fo(32)), pg(1))}`,
      'end vm 0x2000+0x1000',
      `end A@${span(BigInt(fo(34)), pg(1))}`,
      'end vm 0x4000+0x2000',
      `end A@${span(BigInt(fo(36)), pg(2))}`,
      // rollback: every start, then every end, in acceptance order
      'start vm 0x2000+0x1000',
      'start G@0x2000+0x1000',
      'start vm 0x4000+0x2000',
      'start G@0x4000+0x2000',
      'end vm 0x2000+0x1000',
      'end G@0x2000+0x1000',
      'end vm 0x4000+0x2000',
      'end G@0x4000+0x2000',
    ]);
    // The rollback carries the very populate events.
    const ev = (i: number) => (h.log[i] as { event: unknown }).event;
    [2, 3, 4, 5].forEach((p, i) => {
      expect(ev(20 + i)).toBe(ev(p));
      expect(ev(24 + i)).toBe(ev(p));
    });
    expect(h.setterProblems).toEqual([]);
  });

  test('failing at the first range applies nothing and discards nothing', async () => {
    const h = new Harness();
    h.fail = { call: 0, at: 0 };
    const e = (await rejection(h.convert(req(40, 4, 'private')))) as ConversionError;
    expect(e).toBeInstanceOf(ConversionError);
    expect(e.applied).toEqual([]);
    expect(e.failed).toEqual(range(40, 4));
    expect(e.notApplied).toEqual([]);
    expect(h.attributes.ranges()).toEqual([]);
    expect(h.log.some((x) => x.kind.startsWith('discard'))).toBe(false);
    expectBalanced(h.log);
  });

  test('a mixed batch whose private batch fails leaves all shared work in notApplied', async () => {
    const h = new Harness();
    await h.convert(req(20, 4, 'private'));
    h.clear();
    h.fail = { call: 0, at: 0 };
    const e = (await rejection(h.convert(req(20, 4, 'shared'), req(0, 2, 'private'), req(8, 2, 'private')))) as ConversionError;
    expect(e).toBeInstanceOf(ConversionError);
    expect(e.applied).toEqual([]);
    expect(e.failed).toEqual(range(0, 2));
    expect(e.notApplied).toEqual([range(8, 2), range(20, 4)]);
    // The shared batch never reached the kernel; nothing was discarded.
    expect(h.log.filter((x) => x.kind === 'set').map(fmt)).toEqual(['set private 0x0+0x2000 0x8000+0x2000']);
    expect(h.log.some((x) => x.kind.startsWith('discard'))).toBe(false);
    expect(h.mapString().slice(0, 24)).toBe('ssssssssssssssssssssPPPP');
    expectBalanced(h.log);
  });

  test('a mixed batch whose shared batch fails keeps every private range applied', async () => {
    const h = new Harness();
    await h.convert(req(20, 4, 'private'), req(26, 2, 'private'));
    h.clear();
    h.fail = { call: 1, at: 1 };
    const e = (await rejection(h.convert(req(20, 8, 'shared'), req(0, 2, 'private')))) as ConversionError;
    expect(e.applied).toEqual([range(0, 2), range(20, 4)]);
    expect(e.failed).toEqual(range(26, 2));
    expect(e.notApplied).toEqual([]);
    expect(h.mapString().slice(0, 28)).toBe('PPssssssssssssssssssssssssPP');
    expect(h.log.filter((x) => x.kind.startsWith('discard')).map(fmt)).toEqual([
      `discardShared s0 0x0+0x2000 A@${hex(fo(32))}`,
      `discardPrivate s1 ${span(pg(20), pg(4))} G@${hex(fo(20))}`,
    ]);
    expectBalanced(h.log);
  });
});

describe('conversion engine: rollback after a partial refusal', () => {
  test('only the listeners that accepted a populate for unapplied work hear a rollback pair, after every invalidateEnd and before the rejection', async () => {
    const h = new Harness();
    await h.convert(req(48, 2, 'private'));
    h.clear();
    // A listener without populate on the shared file A: it hears invalidations, never a rollback.
    const watched: string[] = [];
    h.files.A.notifier.register({
      invalidateStart: (e) => void watched.push(`start ${hex(e.offset)}`),
      invalidateEnd: (e) => void watched.push(`end ${hex(e.offset)}`),
    });
    // An async VM listener: the engine awaits it, rollback included, before rejecting.
    const slow: string[] = [];
    const later = () => new Promise<void>((resolve) => setTimeout(resolve, 1));
    h.vmNotifier.register({
      populate: async (e) => (await later(), void slow.push(`populate ${hex(e.guestPhysAddr)}`)),
      invalidateStart: async (e) => (await later(), void slow.push(`start ${hex(e.guestPhysAddr)}`)),
      invalidateEnd: async (e) => (await later(), void slow.push(`end ${hex(e.guestPhysAddr)}`)),
    });
    // A guest_memfd listener that throws in its rollback invalidateStart: reported, not thrown.
    const boom = new Error('rollback listener failed');
    const thrower: string[] = [];
    h.files.G.notifier.register({
      populate: (e) => void thrower.push(`populate ${hex(e.offset)}`),
      invalidateStart: (e) => {
        thrower.push(`start ${hex(e.offset)}`);
        throw boom;
      },
      invalidateEnd: (e) => void thrower.push(`end ${hex(e.offset)}`),
    });

    // Work, in request order: [48,50) to shared, [0,2) and [8,10) to private. The private
    // batch runs first and the kernel takes [0,2) only: [8,10) fails, [48,50) is never tried.
    h.fail = { call: 0, at: 1 };
    let atRejection: { lines: string[]; slow: string[]; thrower: string[] } | undefined;
    const err = await rejection(
      h.convert(req(48, 2, 'shared'), req(0, 2, 'private'), req(8, 2, 'private')).catch((e: unknown) => {
        atRejection = { lines: h.lines(), slow: [...slow], thrower: [...thrower] };
        throw e;
      }),
    );
    expect(err).toBeInstanceOf(ConversionError);
    const e = err as ConversionError;
    expect(e.applied).toEqual([range(0, 2)]);
    expect(e.failed).toEqual(range(8, 2));
    expect(e.notApplied).toEqual([range(48, 2)]);

    expect(h.lines()).toEqual([
      'populate vm 0x30000+0x2000',
      'populate A@0x0+0x2000', // slot 3's shared copy: A@0
      'populate vm 0x0+0x2000',
      'populate G@0x0+0x2000',
      'populate vm 0x8000+0x2000',
      'populate G@0x8000+0x2000',
      'start vm 0x30000+0x2000',
      `start H@${span(BigInt(fo(16)), pg(2))}`,
      'start vm 0x0+0x2000',
      `start A@${span(BigInt(fo(32)), pg(2))}`,
      'start vm 0x8000+0x2000',
      `start A@${span(BigInt(fo(40)), pg(2))}`,
      'set private 0x0+0x2000 0x8000+0x2000',
      `discardShared s0 0x0+0x2000 A@${hex(fo(32))}`,
      'end vm 0x30000+0x2000',
      `end H@${span(BigInt(fo(16)), pg(2))}`,
      'end vm 0x0+0x2000',
      `end A@${span(BigInt(fo(32)), pg(2))}`,
      'end vm 0x8000+0x2000',
      `end A@${span(BigInt(fo(40)), pg(2))}`,
      // rollback of [48,50) and [8,10), never of the applied [0,2)
      'start vm 0x30000+0x2000',
      'start A@0x0+0x2000',
      'start vm 0x8000+0x2000',
      'start G@0x8000+0x2000',
      'end vm 0x30000+0x2000',
      'end A@0x0+0x2000',
      'end vm 0x8000+0x2000',
      'end G@0x8000+0x2000',
    ]);
    const ev = (i: number) => (h.log[i] as { event: unknown }).event;
    [0, 1, 4, 5].forEach((p, i) => {
      expect(ev(20 + i)).toBe(ev(p));
      expect(ev(24 + i)).toBe(ev(p));
    });
    expectBalanced(h.log);

    // A heard only the invalidation of its stale copies, not the rollback of A@0.
    expect(watched).toEqual([`start ${hex(fo(32))}`, `start ${hex(fo(40))}`, `end ${hex(fo(32))}`, `end ${hex(fo(40))}`]);
    expect(slow).toEqual([
      'populate 0x30000',
      'populate 0x0',
      'populate 0x8000',
      'start 0x30000',
      'start 0x0',
      'start 0x8000',
      'end 0x30000',
      'end 0x0',
      'end 0x8000',
      'start 0x30000',
      'start 0x8000',
      'end 0x30000',
      'end 0x8000',
    ]);
    expect(thrower).toEqual([`populate 0x0`, `populate ${hex(fo(8))}`, `start ${hex(fo(8))}`, `end ${hex(fo(8))}`]);
    expect(h.listenerErrors).toEqual([boom]);
    // All of it had happened when the promise rejected; nothing came after.
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(atRejection).toEqual({ lines: h.lines(), slow, thrower });

    expect(h.mapString().slice(0, 50)).toBe(`PPssssssssssssssssssssssssssssssssssssssssssssssPP`);
    expect(h.setterProblems).toEqual([]);
  });

  test('a refused shared batch rolls back only its own unapplied ranges; the applied private batch hears none', async () => {
    const h = new Harness();
    await h.convert(req(20, 2, 'private'), req(24, 2, 'private'));
    h.clear();
    h.fail = { call: 1, at: 1 };
    const e = (await rejection(h.convert(req(20, 6, 'shared'), req(0, 1, 'private')))) as ConversionError;
    expect(e.applied).toEqual([range(0, 1), range(20, 2)]);
    expect(e.failed).toEqual(range(24, 2));
    expect(e.notApplied).toEqual([]);
    // Slot 1 is anonymous on the shared side: its shared work populates only the VM, so
    // the refused [24,26) rolls back the VM alone; [0,1) and [20,22) hear nothing more.
    expect(h.lines()).toEqual([
      `populate vm ${span(pg(20), pg(2))}`,
      `populate vm ${span(pg(24), pg(2))}`,
      'populate vm 0x0+0x1000',
      'populate G@0x0+0x1000',
      `start vm ${span(pg(20), pg(2))}`,
      `start G@${span(BigInt(fo(20)), pg(2))}`,
      `start vm ${span(pg(24), pg(2))}`,
      `start G@${span(BigInt(fo(24)), pg(2))}`,
      'start vm 0x0+0x1000',
      `start A@${span(BigInt(fo(32)), pg(1))}`,
      'set private 0x0+0x1000',
      `discardShared s0 0x0+0x1000 A@${hex(fo(32))}`,
      `set shared ${span(pg(20), pg(2))} ${span(pg(24), pg(2))}`,
      `discardPrivate s1 ${span(pg(20), pg(2))} G@${hex(fo(20))}`,
      `end vm ${span(pg(20), pg(2))}`,
      `end G@${span(BigInt(fo(20)), pg(2))}`,
      `end vm ${span(pg(24), pg(2))}`,
      `end G@${span(BigInt(fo(24)), pg(2))}`,
      'end vm 0x0+0x1000',
      `end A@${span(BigInt(fo(32)), pg(1))}`,
      `start vm ${span(pg(24), pg(2))}`,
      `end vm ${span(pg(24), pg(2))}`,
    ]);
    expect((h.log[20] as { event: unknown }).event).toBe((h.log[1] as { event: unknown }).event);
    expect((h.log[21] as { event: unknown }).event).toBe((h.log[1] as { event: unknown }).event);
    expectBalanced(h.log);
    expect(h.mapString().slice(0, 26)).toBe(`P${'s'.repeat(23)}PP`);
    expect(h.setterProblems).toEqual([]);
  });
});

describe('conversion engine: what the backend reports', () => {
  test.each([2, 3, 99, Infinity])(
    'a backend that throws claiming applied = %s of 2 ranges is taken to have failed at the last one',
    async (claimed) => {
      const h = new Harness();
      const cause = Object.assign(new Error('refused, but says it took everything'), { applied: claimed });
      h.failAfter = { call: 0, value: () => cause };
      const e = (await rejection(h.convert(req(0, 1, 'private'), req(2, 1, 'private'), req(20, 1, 'shared')))) as ConversionError;
      expect(e).toBeInstanceOf(ConversionError);
      expect(e.cause).toBe(cause);
      expect(e.applied).toEqual([range(0, 1)]);
      expect(e.failed).toEqual(range(2, 1));
      expect(e.notApplied).toEqual([]); // [20,21) is already shared: no work
      // Only the first range is recorded and discarded; the last is rolled back.
      expect(h.mapString().slice(0, 4)).toBe('Psss');
      expect(h.log.filter((x) => x.kind.startsWith('discard')).map(fmt)).toEqual([`discardShared s0 0x0+0x1000 A@${hex(fo(32))}`]);
      expect(h.lines().slice(-4)).toEqual(['start vm 0x2000+0x1000', 'start G@0x2000+0x1000', 'end vm 0x2000+0x1000', 'end G@0x2000+0x1000']);
      expectBalanced(h.log);
    },
  );

  test('a one-range batch whose backend claims applied = 1 and throws applies nothing; later shared work is not applied', async () => {
    const h = new Harness();
    await h.convert(req(4, 1, 'private'));
    h.clear();
    h.failAfter = { call: 0, value: () => Object.assign(new Error('claims 1 of 1'), { applied: 1 }) };
    const e = (await rejection(h.convert(req(4, 1, 'shared'), req(0, 1, 'private')))) as ConversionError;
    expect(e.applied).toEqual([]);
    expect(e.failed).toEqual(range(0, 1));
    expect(e.notApplied).toEqual([range(4, 1)]);
    expect(h.log.filter((x) => x.kind === 'set')).toHaveLength(1);
    expect(h.log.some((x) => x.kind.startsWith('discard'))).toBe(false);
    expect(h.mapString().slice(0, 6)).toBe('ssssPs');
    // Both ranges' acceptors are rolled back, in acceptance order.
    expect(h.lines().slice(-8)).toEqual([
      'start vm 0x4000+0x1000',
      `start A@${span(BigInt(fo(36)), pg(1))}`,
      'start vm 0x0+0x1000',
      'start G@0x0+0x1000',
      'end vm 0x4000+0x1000',
      `end A@${span(BigInt(fo(36)), pg(1))}`,
      'end vm 0x0+0x1000',
      'end G@0x0+0x1000',
    ]);
    expectBalanced(h.log);
  });

  test.each([
    ['undefined', undefined],
    ['null', null],
    ['a string', 'EFAULT'],
    ['0', 0],
  ])('a backend throwing %s is still a refusal (nothing applied, everything rolled back)', async (_, thrown) => {
    const h = new Harness();
    h.fail = { call: 0, at: 0, value: () => thrown };
    const err = await rejection(h.convert(req(0, 1, 'private'), req(2, 1, 'private')));
    expect(err).toBeInstanceOf(ConversionError);
    const e = err as ConversionError;
    expect(e.code).toBe('ERR_CONVERSION_PARTIAL');
    expect('cause' in e).toBe(true);
    expect(e.cause).toBe(thrown);
    expect(e.message).toContain(`(${String(thrown)})`);
    expect(e.applied).toEqual([]);
    expect(e.failed).toEqual(range(0, 1));
    expect(e.notApplied).toEqual([range(2, 1)]);
    expect(h.attributes.ranges()).toEqual([]);
    expect(h.kernel.size).toBe(0);
    expect(h.log.some((x) => x.kind.startsWith('discard'))).toBe(false);
    expect(h.lines().slice(-8)).toEqual([
      'start vm 0x0+0x1000',
      'start G@0x0+0x1000',
      'start vm 0x2000+0x1000',
      'start G@0x2000+0x1000',
      'end vm 0x0+0x1000',
      'end G@0x0+0x1000',
      'end vm 0x2000+0x1000',
      'end G@0x2000+0x1000',
    ]);
    expect(h.lines().filter((l) => l.startsWith('end'))).toHaveLength(8); // 4 invalidation + 4 rollback
    expectBalanced(h.log);
  });
});

describe('conversion engine: coverage', () => {
  test('a coverage gap throws before any listener or setter runs', async () => {
    const h = new Harness();
    const e = (await rejection(h.convert(req(54, 4, 'private')))) as Error & { code?: string };
    expect(e.name).toBe('StateError');
    expect(e.code).toBe('ERR_NOT_GUEST_MEMFD');
    expect(e.message).toContain(`${hex(pg(GAP.first))}..${hex(pg(GAP.first + GAP.pages))}`);
    expect(h.log).toEqual([]);
    // A gap in a later request stops the earlier ones too.
    const e2 = (await rejection(h.convert(req(0, 4, 'private'), req(62, 4, 'private')))) as Error & { code?: string };
    expect(e2.code).toBe('ERR_NOT_GUEST_MEMFD');
    expect(e2.message).toContain(`${hex(pg(64))}..${hex(pg(66))}`);
    expect(h.log).toEqual([]);
    expect(h.attributes.ranges()).toEqual([]);
  });
});

describe('faultRequest', () => {
  test('rounds a memory fault out to whole pages and picks the direction from the private flag', () => {
    expect(faultRequest({ gpa: 0x1234n, size: 8n, private: true })).toEqual({ guestPhysAddr: 0x1000n, size: 0x1000n, to: 'private' });
    expect(faultRequest({ gpa: 0x1ffen, size: 4n, private: false })).toEqual({ guestPhysAddr: 0x1000n, size: 0x2000n, to: 'shared' });
    expect(faultRequest({ gpa: 0x3000n, size: 0x1000n, private: true })).toEqual({ guestPhysAddr: 0x3000n, size: 0x1000n, to: 'private' });
    // A zero-size fault still names the page it hit.
    expect(faultRequest({ gpa: 0x5fffn, size: 0n, private: false })).toEqual({ guestPhysAddr: 0x5000n, size: 0x1000n, to: 'shared' });
    // The top page of the 64-bit space.
    const top = (1n << 64n) - 1n;
    expect(faultRequest({ gpa: top, size: 1n, private: true })).toEqual({ guestPhysAddr: (1n << 64n) - 0x1000n, size: 0x1000n, to: 'private' });
  });
});

// ---------------------------------------------------------------------------------
// Property: the engine against a naive per-page model
// ---------------------------------------------------------------------------------

interface Step {
  requests: { first: number; pages: number; to: 'private' | 'shared' }[];
  veto: { who: string; nth: number } | null;
  fail: { call: number; at: number } | null;
}

const requestArb = fc
  .record({ first: fc.integer({ min: 0, max: NPAGES - 1 }), len: fc.integer({ min: 1, max: 14 }), to: fc.constantFrom<'private' | 'shared'>('private', 'shared') })
  .map(({ first, len, to }) => ({ first, pages: Math.min(len, NPAGES - first), to }));

const overlaps = (a: { first: number; pages: number }, b: { first: number; pages: number }): boolean =>
  a.first < b.first + b.pages && b.first < a.first + a.pages;

const stepArb: fc.Arbitrary<Step> = fc.record({
  // Mostly disjoint requests; sometimes unfiltered ones, which must be refused up front
  // when any two overlap (ERR_OVERLAP, nothing runs).
  requests: fc.oneof(
    {
      weight: 5,
      arbitrary: fc.array(requestArb, { minLength: 1, maxLength: 3 }).map((rs) => {
        const kept: typeof rs = [];
        for (const r of rs) if (kept.every((k) => !overlaps(k, r))) kept.push(r);
        return kept;
      }),
    },
    { weight: 1, arbitrary: fc.array(requestArb, { minLength: 2, maxLength: 3 }) },
  ),
  veto: fc.oneof(
    { weight: 3, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.record({ who: fc.constantFrom('vm', 'A', 'G', 'H'), nth: fc.integer({ min: 0, max: 2 }) }) },
  ),
  fail: fc.oneof(
    { weight: 2, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.record({ call: fc.integer({ min: 0, max: 1 }), at: fc.integer({ min: 0, max: 2 }) }) },
  ),
});

/** Maximal runs of pages in [first, first+pages) whose model state differs from `to`. */
function differingRuns(model: boolean[], first: number, pages: number, to: 'private' | 'shared'): { first: number; pages: number }[] {
  const want = to === 'private';
  const runs: { first: number; pages: number }[] = [];
  for (let p = first; p < first + pages; p++) {
    if (model[p] === want) continue;
    const last = runs[runs.length - 1];
    if (last && last.first + last.pages === p) last.pages++;
    else runs.push({ first: p, pages: 1 });
  }
  return runs;
}

/** `file:page` keys of the backing of page `p` on one side (none for anonymous memory). */
function backingKey(h: Harness, p: number, side: 'shared' | 'private'): string | undefined {
  const s = h.slotOf(p)!;
  const ref = s[side];
  return ref.file ? `${ref.file.name}:${ref.page + (p - s.first)}` : undefined;
}

function isInPlace(h: Harness, p: number): boolean {
  const s = h.slotOf(p)!;
  return s.shared.file === s.private.file && s.shared.page === s.private.page;
}

function fileKeys(h: Harness, log: readonly Entry[], kind: Phase): string[] {
  const keys: string[] = [];
  for (const e of log) {
    if (e.kind !== kind || e.who === 'vm') continue;
    const ev = e.event as FileRangeEvent<FakeFile>;
    expect(ev.file).toBe(h.files[e.who as 'A' | 'G' | 'H']);
    expect(ev.ranges.length).toBe(1);
    const r = ev.ranges[0]!;
    expect(BigInt(ev.length)).toBe(r.size);
    // The event's file offset is where the slot puts that GPA.
    const first = Number(r.guestPhysAddr / PAGE);
    const ref = h.slotOf(first)!;
    expect(h.slotOf(first + ev.length / 4096 - 1)).toBe(ref);
    for (let i = 0; i < ev.length / 4096; i++) keys.push(`${e.who}:${ev.offset / 4096 + i}`);
  }
  return keys.sort();
}

const sorted = (xs: (string | undefined)[]): string[] => xs.filter((x): x is string => x !== undefined).sort();

describe('conversion engine: property', () => {
  test('random conversion sequences agree with a per-page model (map, kernel, discards, events)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 12 }), async (steps) => {
        const h = new Harness();
        const model: boolean[] = Array.from({ length: NPAGES }, () => false);
        for (const step of steps) {
          h.clear();
          const requests = step.requests.map((r) => req(r.first, r.pages, r.to));
          const vetoError = new Error('property veto');
          if (step.veto) h.veto = { ...step.veto, error: vetoError };
          if (step.fail) h.fail = { ...step.fail };

          let result: ConversionResult | undefined;
          let error: unknown;
          try {
            result = await h.convert(...requests);
          } catch (e) {
            error = e;
          }
          const log = [...h.log];

          const overlapping = step.requests.some((r, i) => step.requests.some((q, j) => i < j && overlaps(r, q)));
          const touchesGap = step.requests.some((r) => overlaps(r, GAP));
          if (overlapping) {
            expect(error).toBeInstanceOf(RangeError);
            expect((error as { code?: string }).code).toBe('ERR_OVERLAP');
            expect(log).toEqual([]);
          } else if (touchesGap) {
            expect((error as { code?: string }).code).toBe('ERR_NOT_GUEST_MEMFD');
            expect(log).toEqual([]);
          } else {
            // Plan like the model: differing runs, private work first.
            const plan = step.requests.map((r) => ({ r, runs: differingRuns(model, r.first, r.pages, r.to) }));
            const priv = plan.filter((x) => x.r.to === 'private').flatMap((x) => x.runs);
            const shrd = plan.filter((x) => x.r.to === 'shared').flatMap((x) => x.runs);
            const unchanged = step.requests.reduce((n, r) => n + r.pages, 0) - [...priv, ...shrd].reduce((n, r) => n + r.pages, 0);
            const all = [
              ...plan.flatMap((x) => x.runs.map((run) => ({ ...run, to: x.r.to }))),
            ];

            if (priv.length + shrd.length === 0) {
              expect(error).toBeUndefined();
              expect(result).toEqual({ converted: [], unchangedBytes: pg(unchanged) });
              expect(log).toEqual([]);
            } else if (h.vetoed) {
              expect(error).toBe(vetoError);
              expect(log.some((e) => e.kind === 'set' || e.kind.startsWith('discard'))).toBe(false);
              // Exactly the accepted populates are rolled back, each with a start/end pair.
              const populated = log.filter((e) => e.kind === 'populate').map((e) => (e as { event: unknown }).event);
              const started = log.filter((e) => e.kind === 'start').map((e) => (e as { event: unknown }).event);
              const ended = log.filter((e) => e.kind === 'end').map((e) => (e as { event: unknown }).event);
              expect(started).toEqual(populated);
              started.forEach((ev, i) => expect(ev).toBe(populated[i]));
              ended.forEach((ev, i) => expect(ev).toBe(populated[i]));
              expect(ended.length).toBe(populated.length);
            } else {
              // What the kernel takes.
              const calls: { to: 'private' | 'shared'; runs: typeof priv }[] = [];
              if (priv.length) calls.push({ to: 'private', runs: priv });
              if (shrd.length) calls.push({ to: 'shared', runs: shrd });
              const applied: { first: number; pages: number; to: 'private' | 'shared' }[] = [];
              let failed: { first: number; pages: number } | undefined;
              let notApplied: { first: number; pages: number }[] = [];
              for (let c = 0; c < calls.length; c++) {
                const { to, runs } = calls[c]!;
                const k = step.fail && step.fail.call === c && step.fail.at < runs.length ? step.fail.at : runs.length;
                applied.push(...runs.slice(0, k).map((r) => ({ ...r, to })));
                if (k < runs.length) {
                  failed = runs[k];
                  notApplied = [...runs.slice(k + 1), ...calls.slice(c + 1).flatMap((x) => x.runs)];
                  break;
                }
              }
              const toRange = (r: { first: number; pages: number }) => range(r.first, r.pages);

              // After a refusal, every listener that accepted a populate for unapplied work
              // (the failed run and every not-applied one) hears a rollback pair with that
              // populate event: all starts, then all ends, in acceptance order, after every
              // invalidateEnd and before the rejection. Work that was applied hears none.
              const unapplied = failed ? [failed, ...notApplied] : [];
              const gpaOf = (ev: GpaRangeEvent | FileRangeEvent<FakeFile>) =>
                Number((isFileEvent(ev) ? ev.ranges[0]!.guestPhysAddr : ev.guestPhysAddr) / PAGE);
              const rolled = log.filter(
                (e): e is Extract<Entry, { kind: Phase }> =>
                  e.kind === 'populate' && unapplied.some((r) => overlaps(r, { first: gpaOf(e.event), pages: 1 })),
              );
              const cut = log.length - 2 * rolled.length;
              const tail = log.slice(cut);
              expect(tail.map((e) => e.kind)).toEqual([...rolled.map(() => 'start'), ...rolled.map(() => 'end')]);
              tail.forEach((e, i) => {
                const src = rolled[i % rolled.length]!;
                expect((e as { who: string }).who).toBe(src.who);
                expect((e as { event: unknown }).event).toBe(src.event);
              });
              if (failed) expect(rolled.length).toBeGreaterThan(0); // at least the VM accepted
              // Everything below is about the conversion proper, before the rollback.
              const main = log.slice(0, cut);
              if (failed) {
                expect(error).toBeInstanceOf(ConversionError);
                const e = error as ConversionError;
                expect(e.applied).toEqual(applied.map(toRange));
                expect(e.failed).toEqual(toRange(failed));
                expect(e.notApplied).toEqual(notApplied.map(toRange));
              } else {
                expect(error).toBeUndefined();
                expect(result).toEqual({
                  converted: applied.map((r) => ({ ...toRange(r), to: r.to })),
                  unchangedBytes: pg(unchanged),
                });
              }
              // The setter saw exactly the planned runs, batch by batch, and only differing pages.
              const attempted = failed ? calls.slice(0, calls.findIndex((c) => c.runs.includes(failed!)) + 1) : calls;
              expect(main.filter((e) => e.kind === 'set').map(fmt)).toEqual(
                attempted.map((c) => `set ${c.to} ${c.runs.map((r) => span(pg(r.first), pg(r.pages))).join(' ')}`),
              );
              expect(h.setterProblems).toEqual([]);

              // Discards cover exactly the pages that changed (minus in-place), each once,
              // at the backing the slot puts there.
              const discarded = (kind: 'discardShared' | 'discardPrivate') => {
                const keys: string[] = [];
                for (const e of main) {
                  if (e.kind !== kind) continue;
                  const p0 = Number(e.piece.guestPhysAddr / PAGE);
                  const s = h.slotOf(p0)!;
                  expect(e.piece.slot).toBe(s.id);
                  expect(h.slotOf(p0 + Number(e.piece.size / PAGE) - 1)).toBe(s);
                  expect(e.piece.inPlace).toBe(false);
                  const ref = kind === 'discardShared' ? e.piece.shared : e.piece.private;
                  const side = kind === 'discardShared' ? s.shared : s.private;
                  expect(ref.file).toBe(side.file);
                  expect(ref.offset).toBe(side.file ? fo(side.page + p0 - s.first) : fo(p0 - s.first));
                  keys.push(...pagesOf(e.piece).map(String));
                }
                return keys.sort();
              };
              const changedPages = (to: 'private' | 'shared') =>
                applied.filter((r) => r.to === to).flatMap((r) => pagesOf(toRange(r))).filter((p) => !isInPlace(h, p)).map(String).sort();
              expect(discarded('discardShared')).toEqual(changedPages('private'));
              expect(discarded('discardPrivate')).toEqual(changedPages('shared'));

              // Events: populate the fresh side and invalidate the stale side of every
              // planned page (they are sent before the kernel is asked).
              const planned = all.flatMap((r) => pagesOf(toRange(r)).map((p) => ({ p, to: r.to })));
              expect(fileKeys(h, main, 'populate')).toEqual(sorted(planned.map(({ p, to }) => backingKey(h, p, to))));
              const stale = planned.filter(({ p }) => !isInPlace(h, p));
              const staleKeys = sorted(stale.map(({ p, to }) => backingKey(h, p, to === 'private' ? 'shared' : 'private')));
              expect(fileKeys(h, main, 'start')).toEqual(staleKeys);
              expect(fileKeys(h, main, 'end')).toEqual(staleKeys);
              const vmEvents = (kind: Phase) =>
                main
                  .filter((e) => e.kind === kind && e.who === 'vm')
                  .map((e) => (e as { event: GpaRangeEvent }).event)
                  .map((ev) => `${ev.state} ${span(ev.guestPhysAddr, ev.size)}`);
              const vmPlanned = all.map((r) => `${r.to} ${span(pg(r.first), pg(r.pages))}`);
              expect(vmEvents('populate')).toEqual(vmPlanned);
              expect(vmEvents('start')).toEqual(vmPlanned);
              expect(vmEvents('end')).toEqual(vmPlanned);

              // Order: every populate, then every start, then the kernel, then every end.
              const idx = (pred: (e: Entry) => boolean) => main.map((e, i) => (pred(e) ? i : -1)).filter((i) => i >= 0);
              const pops = idx((e) => e.kind === 'populate');
              const starts = idx((e) => e.kind === 'start');
              const work = idx((e) => e.kind === 'set' || e.kind.startsWith('discard'));
              const ends = idx((e) => e.kind === 'end');
              expect(Math.max(...pops)).toBeLessThan(Math.min(...starts));
              expect(Math.max(...starts)).toBeLessThan(Math.min(...work));
              expect(Math.max(...work)).toBeLessThan(Math.min(...ends));

              for (const r of applied) for (const p of pagesOf(toRange(r))) model[p] = r.to === 'private';
            }
          }
          expectBalanced(log);
          expect(h.listenerErrors).toEqual([]);
          // The record agrees with the model and with the fake kernel, page by page.
          const modelString = model.map((x) => (x ? 'P' : 's')).join('');
          expect(h.mapString()).toBe(modelString);
          let kernelString = '';
          for (let p = 0; p < NPAGES; p++) kernelString += (h.kernel.get(p) ?? SHARED) === PRIVATE ? 'P' : 's';
          expect(kernelString).toBe(modelString);
        }
      }),
      { numRuns: runs(400) },
    );
  });
});

// ---------------------------------------------------------------------------------
// Overlapping requests in one call: refused up front (ERR_OVERLAP)
// ---------------------------------------------------------------------------------

describe('conversion engine: overlapping requests in one call', () => {
  test('overlapping requests are refused before anything runs, naming both', async () => {
    const h = new Harness();
    const error = await rejection(h.convert(req(0, 2, 'private'), req(1, 1, 'shared')));
    expect((error as { code: string }).code).toBe('ERR_OVERLAP');
    expect((error as Error).message).toMatch(/requests\[0\] \(0x0..0x2000\) and requests\[1\] \(0x1000..0x2000\) overlap/);
    expect(h.log).toEqual([]);
    expect(h.attributes.count).toBe(0);
  });

  test('the same range twice is refused', async () => {
    const h = new Harness();
    expect(await rejection(h.convert(req(0, 1, 'private'), req(0, 1, 'private')))).toMatchObject({ code: 'ERR_OVERLAP' });
  });

  test('adjacent requests are not an overlap', async () => {
    const h = new Harness();
    const result = await h.convert(req(0, 1, 'private'), req(1, 1, 'private'));
    expect(result.converted).toHaveLength(2);
  });
});
