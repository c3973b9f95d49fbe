/**
 * Dirty page bitmaps (KVM_GET_DIRTY_LOG): one bit per page of a slot, least
 * significant bit first in 64-bit words, as the kernel writes them.
 */

import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import { u64, uint } from '../core/validate';

/** Pages a bitmap may cover: a slot's page count fits in 32 bits. */
const MAX_PAGES = 0xffffffff;
import { guardReceivers } from '../core/receiver';

/** A dirty page: its index in the slot and its guest physical address. */
export interface DirtyPage {
  /** Page index within the slot. */
  readonly index: number;
  /** Guest physical address of the page. */
  readonly guestPhysAddr: bigint;
}

/**
 * The pages of one slot written since the previous KVM_GET_DIRTY_LOG.
 *
 * @example
 * const log = slot.getDirtyLog();
 * for (const page of log) console.log(page.guestPhysAddr);
 */
export class DirtyBitmap implements Iterable<DirtyPage> {
  static {
    guardReceivers(this, (o) => #made in o, 'bitmap', 'slot.getDirtyLog() or new DirtyBitmap()');
  }
  /** Brand: set by the constructor only. */
  readonly #made = true;
  /** First guest physical address of the slot. */
  readonly guestPhysAddr: bigint;
  /** Number of pages the bitmap covers. */
  readonly pages: number;
  /** Page size in bytes. */
  readonly pageSize: number;
  /** The raw bitmap, one bit per page. */
  readonly words: BigUint64Array;

  /** Wraps `words` (default: a zeroed bitmap) for `pages` pages of `pageSize` bytes from `guestPhysAddr`. */
  constructor(guestPhysAddr: bigint, pages: number, pageSize: number, words?: BigUint64Array) {
    const op = 'new DirtyBitmap';
    this.guestPhysAddr = u64(guestPhysAddr, op, 'guestPhysAddr');
    this.pages = uint(pages, op, 'pages', MAX_PAGES);
    const size = uint(pageSize, op, 'pageSize', 2 ** 30);
    if (size === 0 || (size & (size - 1)) !== 0)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: pageSize ${size} is not a power of two`);
    this.pageSize = size;
    if (words !== undefined && !(words instanceof BigUint64Array))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: words must be a BigUint64Array or undefined`);
    this.words = words ?? DirtyBitmap.allocate(this.pages);
    if (this.words.length * 64 < this.pages)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: words (${this.words.length}) cannot hold ${this.pages} pages`);
  }

  /** A zeroed bitmap of the size the kernel expects for `pages` pages. */
  static allocate(pages: number): BigUint64Array {
    return new BigUint64Array(Math.ceil(uint(pages, 'DirtyBitmap.allocate', 'pages', MAX_PAGES) / 64));
  }

  /** True if page `index` is dirty. */
  isDirty(index: number): boolean {
    if (!Number.isInteger(index) || index < 0 || index >= this.pages)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `DirtyBitmap.isDirty: index ${index} is outside 0..${this.pages - 1}`);
    return ((this.words[index >>> 6]! >> BigInt(index & 63)) & 1n) === 1n;
  }

  /** Number of dirty pages. */
  get count(): number {
    let n = 0;
    for (const w of this.words) {
      let v = w;
      while (v) {
        v &= v - 1n;
        n++;
      }
    }
    return n;
  }

  /** Dirty pages in ascending order. */
  *[Symbol.iterator](): Iterator<DirtyPage> {
    const size = BigInt(this.pageSize);
    for (let w = 0; w < this.words.length; w++) {
      let word = this.words[w]!;
      if (word === 0n) continue;
      // Split into 32-bit halves so bit scanning stays in fast number arithmetic.
      for (let half = 0; half < 2; half++) {
        let bits = Number((word >> BigInt(32 * half)) & 0xffffffffn);
        while (bits !== 0) {
          const low = 31 - Math.clz32(bits & -bits);
          const index = w * 64 + half * 32 + low;
          if (index >= this.pages) return;
          yield { index, guestPhysAddr: this.guestPhysAddr + BigInt(index) * size };
          bits &= bits - 1;
        }
      }
      word = 0n;
    }
  }

  /** The dirty pages as an array. */
  dirtyPages(): DirtyPage[] {
    return [...this];
  }
}
