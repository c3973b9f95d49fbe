/**
 * The VM's record of its memory slots, ordered by guest physical address, per
 * address space. Pure bookkeeping: overlap checks and GPA lookups by binary search.
 * @internal
 */

/** What the table needs to know of a slot. */
export interface SlotExtent {
  readonly id: number;
  readonly addressSpace: number;
  readonly guestPhysAddr: bigint;
  readonly size: bigint;
}

/** Slots of one VM, sorted by GPA within each address space. */
export class SlotTable<S extends SlotExtent> {
  readonly #byKey = new Map<number, S>();
  readonly #sorted = new Map<number, S[]>();

  /** Kernel slot field: address space in the high 16 bits, id in the low 16. */
  static key(addressSpace: number, id: number): number {
    return addressSpace * 0x10000 + id;
  }

  get size(): number {
    return this.#byKey.size;
  }

  get(addressSpace: number, id: number): S | undefined {
    return this.#byKey.get(SlotTable.key(addressSpace, id));
  }

  /** All slots, by address space then GPA. */
  all(): S[] {
    return [...this.#sorted.keys()].sort((a, b) => a - b).flatMap((as) => this.#sorted.get(as)!);
  }

  /** Slots of one address space, by GPA. */
  inSpace(addressSpace: number): readonly S[] {
    return this.#sorted.get(addressSpace) ?? [];
  }

  /** Index of the first slot whose end is above `gpa`. */
  #lowerBound(list: readonly S[], gpa: bigint): number {
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const s = list[mid]!;
      if (s.guestPhysAddr + s.size <= gpa) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The slot containing `gpa`, if any. */
  at(addressSpace: number, gpa: bigint): S | undefined {
    const list = this.#sorted.get(addressSpace);
    if (!list) return undefined;
    const s = list[this.#lowerBound(list, gpa)];
    return s && s.guestPhysAddr <= gpa ? s : undefined;
  }

  /** Slots overlapping `[gpa, gpa+size)`, in GPA order. */
  overlapping(addressSpace: number, gpa: bigint, size: bigint): S[] {
    const list = this.#sorted.get(addressSpace);
    if (!list) return [];
    const out: S[] = [];
    for (let i = this.#lowerBound(list, gpa); i < list.length; i++) {
      const s = list[i]!;
      if (s.guestPhysAddr >= gpa + size) break;
      out.push(s);
    }
    return out;
  }

  /**
   * Pieces of `[gpa, gpa+size)` covered by slots and the gaps between them, in order.
   */
  cover(addressSpace: number, gpa: bigint, size: bigint): Array<{ slot: S | undefined; guestPhysAddr: bigint; size: bigint }> {
    const out: Array<{ slot: S | undefined; guestPhysAddr: bigint; size: bigint }> = [];
    let cursor = gpa;
    const end = gpa + size;
    for (const s of this.overlapping(addressSpace, gpa, size)) {
      if (s.guestPhysAddr > cursor) out.push({ slot: undefined, guestPhysAddr: cursor, size: s.guestPhysAddr - cursor });
      const from = s.guestPhysAddr > cursor ? s.guestPhysAddr : cursor;
      const to = s.guestPhysAddr + s.size < end ? s.guestPhysAddr + s.size : end;
      out.push({ slot: s, guestPhysAddr: from, size: to - from });
      cursor = to;
    }
    if (cursor < end) out.push({ slot: undefined, guestPhysAddr: cursor, size: end - cursor });
    return out;
  }

  /** Adds a slot; the caller has checked it overlaps nothing. */
  insert(slot: S): void {
    this.#byKey.set(SlotTable.key(slot.addressSpace, slot.id), slot);
    let list = this.#sorted.get(slot.addressSpace);
    if (!list) this.#sorted.set(slot.addressSpace, (list = []));
    list.splice(this.#lowerBound(list, slot.guestPhysAddr), 0, slot);
  }

  /** Removes a slot. */
  delete(slot: S): boolean {
    if (!this.#byKey.delete(SlotTable.key(slot.addressSpace, slot.id))) return false;
    const list = this.#sorted.get(slot.addressSpace)!;
    const i = list.indexOf(slot);
    if (i >= 0) list.splice(i, 1);
    return true;
  }

  /** The lowest free slot id in an address space below `limit`, if any. */
  freeId(addressSpace: number, limit: number): number | undefined {
    for (let id = 0; id < limit; id++) if (!this.#byKey.has(SlotTable.key(addressSpace, id))) return id;
    return undefined;
  }
}
