/**
 * Zero-copy views over shared mappings of guest memory files.
 */
import { StateError } from '../core/errors';
import { native, type NativeMapping } from '../native';

const EMPTY = Buffer.alloc(0);

interface ViewEntry {
  readonly arrayBuffer: WeakRef<ArrayBuffer>;
  readonly view: WeakRef<MemoryView>;
  readonly offset: number;
  readonly length: number;
}

// The held value reaches its set only weakly: a strong path from it to the file, its
// slots, their VM and back to the buffer would keep the whole setup alive forever.
const collected = new FinalizationRegistry<{ set: WeakRef<ViewSet>; id: number }>(({ set, id }) => {
  // The ArrayBuffer is gone and its native finalizer released the address range.
  set.deref()?.forget(id);
});

/**
 * The views one owner (a file, or a slot's anonymous memory) has handed out. Tracks
 * each mapping's ArrayBuffer weakly, so a view whose object was dropped while its
 * `buffer` is still held is still detached on close instead of left dangling.
 * @internal
 */
export class ViewSet {
  readonly #entries = new Map<number, ViewEntry>();

  /**
   * @param description what is mapped, for messages
   * @param file the file the views map, or null for anonymous memory
   */
  constructor(
    readonly description: string,
    readonly file: object | null = null,
  ) {}

  /** Wraps a fresh native mapping into a view this set owns. */
  adopt(mapping: NativeMapping, offset: number, length: number): MemoryView {
    const view = MemoryView.create(mapping, offset, length, this);
    this.#entries.set(mapping[1], {
      arrayBuffer: new WeakRef(mapping[0]),
      view: new WeakRef(view),
      offset,
      length,
    });
    collected.register(mapping[0], { set: new WeakRef(this), id: mapping[1] });
    return view;
  }

  /**
   * Releases one mapping: its memory becomes anonymous zero pages (nothing reaches
   * the file through it any more); the address range goes when the buffer is
   * collected, so native code still holding the buffer never faults.
   */
  release(id: number): void {
    native.unmap(id);
    this.#entries.delete(id);
  }

  /** @internal */
  forget(id: number): void {
    this.#entries.delete(id);
  }

  /** Number of live mappings. */
  get size(): number {
    return this.#entries.size;
  }

  /** Live views (whose objects are still reachable). */
  views(): MemoryView[] {
    const out: MemoryView[] = [];
    for (const e of this.#entries.values()) {
      const v = e.view.deref();
      if (v?.mapped) out.push(v);
    }
    return out;
  }

  /** File ranges still reachable from JavaScript through a buffer. */
  reachableRanges(): Array<{ offset: number; length: number; pinned: boolean }> {
    const out: Array<{ offset: number; length: number; pinned: boolean }> = [];
    for (const e of this.#entries.values())
      if (e.arrayBuffer.deref() !== undefined)
        out.push({ offset: e.offset, length: e.length, pinned: e.view.deref()?.pinned ?? false });
    return out;
  }

  /**
   * Detaches and unmaps every view overlapping `[offset, offset+length)` except those
   * pinned by a slot. Returns how many were released.
   */
  releaseOverlapping(offset: number, length: number): number {
    let released = 0;
    for (const [id, e] of [...this.#entries]) {
      if (e.offset >= offset + length || e.offset + e.length <= offset) continue;
      const view = e.view.deref();
      if (view?.pinned) continue;
      if (view) view.release();
      else this.release(id);
      released++;
    }
    return released;
  }

  /** Detaches and unmaps every view, pinned or not (the owner is closing). */
  releaseAll(): void {
    for (const [id, e] of [...this.#entries]) {
      const view = e.view.deref();
      if (view) view.release();
      else this.release(id);
    }
  }
}

/**
 * A shared mapping of (part of) a file, exposed as a zero-copy `Buffer`.
 *
 * One external ArrayBuffer backs each mapping. `unmap()`, closing the file, or
 * closing the VM that owns the file cuts the view off its file: `view.buffer` becomes
 * an empty Buffer, and a Buffer taken from it earlier now reads zeros and keeps
 * writes to itself (anonymous memory at the same address), so neither JavaScript nor
 * native code still holding it (a crypto or zlib job on the libuv threadpool) can
 * fault or reach the file. The address range goes back to the kernel when that
 * buffer is garbage-collected. A view that is simply forgotten is unmapped then too.
 *
 * @example
 * using view = gmem.map(0, 4096);
 * view.buffer.write('hello');
 */
export class MemoryView {
  /** Offset of the view in its file (0 for anonymous memory). */
  readonly offset: number;
  /** Length of the view in bytes. */
  readonly length: number;
  /** The virtual address of the mapping in this process, for raw calls. */
  readonly address: bigint;
  #buffer: Buffer;
  #id: number;
  #set: ViewSet;
  #pins = 0;
  #mapped = true;
  #slotOwned = false;

  /** @internal */
  static create(mapping: NativeMapping, offset: number, length: number, set: ViewSet): MemoryView {
    return new MemoryView(mapping, offset, length, set);
  }

  /** Made by the library only. */
  private constructor(mapping: NativeMapping, offset: number, length: number, set: ViewSet) {
    this.#buffer = Buffer.from(mapping[0], 0, length);
    this.#id = mapping[1];
    this.address = mapping[2];
    this.#set = set;
    this.offset = offset;
    this.length = length;
  }

  /** The file this view maps (a GuestMemfd or Memfd), or null for anonymous memory. */
  get file(): object | null {
    return this.#set.file;
  }

  /** The bytes. After `unmap()` this is an empty Buffer. */
  get buffer(): Buffer {
    return this.#buffer;
  }

  /** False once unmapped. */
  get mapped(): boolean {
    return this.#mapped;
  }

  /** True while a memory slot uses this view as its guest memory. */
  get pinned(): boolean {
    return this.#pins > 0;
  }

  /**
   * Unmaps the file: `buffer` becomes empty, Buffers taken from it earlier see zeros.
   * Idempotent. Refused while a memory slot uses the view (the guest would lose its
   * memory): remove the slot first.
   */
  unmap(): void {
    if (!this.#mapped) return;
    if (this.#pins > 0)
      throw new StateError(
        'ERR_IN_USE',
        `view.unmap: this view of ${this.#set.description} (offset ${this.offset}, ${this.length} bytes) is the userspace memory of a memory slot; remove the slot first`,
      );
    this.release();
  }

  /** Unmaps regardless of pins: for the owner's close path. @internal */
  release(): void {
    if (!this.#mapped) return;
    this.#mapped = false;
    this.#pins = 0;
    this.#set.release(this.#id);
    // Only what others still hold keeps the old buffer, and so its address range, alive.
    this.#buffer = EMPTY;
  }

  /** True for a mapping a memory slot made for itself (released with the slot). */
  get slotOwned(): boolean {
    return this.#slotOwned;
  }

  /** @internal */
  markSlotOwned(): void {
    this.#slotOwned = true;
  }

  /** @internal */
  pin(): void {
    this.#pins++;
  }

  /** @internal */
  unpin(): void {
    if (this.#pins > 0) this.#pins--;
  }

  /** Same as {@link MemoryView.unmap}. */
  [Symbol.dispose](): void {
    this.unmap();
  }
}
