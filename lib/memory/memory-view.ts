/**
 * Zero-copy views over shared mappings of guest memory files.
 */
import { ArgumentRangeError, explain, StateError, UnsupportedError } from '../core/errors';
import { fileNumber, hex, PAGE_SIZE } from '../core/validate';
import { native, type NativeMapping } from '../native';
import { checkPolicy, maskNodes, MemoryPolicyMode, modeName, nodeMask, type MemoryPolicy, type MemoryPolicyModeName } from './numa';
import { guardReceivers } from '../core/receiver';

const EMPTY = Buffer.alloc(0);

/** What a view set knows of the file it maps. @internal */
export interface ViewFile {
  readonly fd: number;
  readonly description: string;
  /** `'guest_memfd'` or `'memfd'`. */
  readonly fileKind: string;
}

/** A policy as `view.getMemoryPolicy` reports it. */
export interface MemoryPolicyInfo {
  /** The mode, or `'mode N'` for one this library does not name (e.g. MPOL_LOCAL). */
  readonly mode: MemoryPolicyModeName | `mode ${number}`;
  /** The nodes of the policy's mask (empty for `'default'`). */
  readonly nodes: number[];
}

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
    readonly file: ViewFile | null = null,
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
  static {
    guardReceivers(this, (o) => #id in o, 'view', 'file.map()');
  }
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

  #live(op: string): void {
    if (!this.#mapped) throw new StateError('ERR_CLOSED', `${op}: this view of ${this.#set.description} is unmapped`);
  }

  /**
   * mbind(2) on the view's range: where the kernel places the pages allocated from
   * now on (pages already there stay put). For a file (memfd, guest_memfd) the policy
   * must belong to the file's range, so that every mapping of it, and the guest's
   * accesses through KVM, follow it: after mbind a fresh mapping of the file is asked
   * for the policy (get_mempolicy), and where the kernel kept it in this mapping only
   * (guest_memfd before Linux 6.19, which has no set_policy) the change is undone and
   * an {@link UnsupportedError} says so. A policy on anonymous slot memory belongs to
   * the slot's mapping, which is the one the guest faults through.
   *
   * @example
   * view.setMemoryPolicy({ mode: 'bind', nodes: [1] });
   * view.buffer.fill(0);          // the pages are allocated on node 1
   * view.pageNodes();             // [1, 1, 1, ...]
   */
  setMemoryPolicy(policy: MemoryPolicy): void {
    const op = 'view.setMemoryPolicy';
    const p = checkPolicy(op, policy);
    this.#live(op);
    const file = this.#set.file;
    const what = file ? file.description : this.#set.description;
    try {
      native.mbind(this.address, this.length, p.number, p.mask, 0);
    } catch (e) {
      const err = explain(e, `${op}({ mode: '${p.mode}', nodes: [${p.nodes.join(', ')}] }) on ${what}`, {
        ENOSYS: 'this kernel has no NUMA memory policies (CONFIG_NUMA)',
        EINVAL: 'the kernel refused the policy for this mapping',
        EPERM: 'moving pages needs CAP_SYS_NICE',
      });
      if (file?.fileKind === 'guest_memfd' && (e as { code?: string }).code && ['EINVAL', 'EOPNOTSUPP', 'ENODEV'].includes((e as { code: string }).code))
        throw unsupportedPolicy(op, file, `mbind on its mapping failed with ${(e as { code: string }).code}`, err);
      throw err;
    }
    if (!file || p.mode === 'default') return;
    const seen = nodeMask();
    let got: number;
    try {
      got = native.filePolicy(file.fd, this.offset, seen);
    } catch (e) {
      this.#undoPolicy();
      throw explain(e, `${op}: reading the policy back from ${what}`);
    }
    if (got !== p.number || maskNodes(seen).join() !== p.nodes.join()) {
      this.#undoPolicy();
      throw unsupportedPolicy(op, file, `mbind succeeded, but a fresh mapping of the file reports ${modeName(got)} [${maskNodes(seen).join(', ')}]: the kernel kept the policy in this mapping only, and allocations for the guest ignore it`);
    }
  }

  #undoPolicy(): void {
    try {
      native.mbind(this.address, this.length, MemoryPolicyMode.default, nodeMask(), 0);
    } catch {
      // best effort: the error being reported is the one that matters
    }
  }

  /**
   * get_mempolicy(2) with MPOL_F_ADDR: the policy that governs the page at `offset`
   * of the view (for a file with policies of its own, the file's).
   *
   * @example
   * view.getMemoryPolicy();   // { mode: 'bind', nodes: [0] }
   */
  getMemoryPolicy(offset: number | bigint = 0): MemoryPolicyInfo {
    const op = 'view.getMemoryPolicy';
    const o = fileNumber(offset, op, 'offset');
    if (o >= this.length) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: offset ${hex(o)} is past the view's ${hex(this.length)} bytes`);
    this.#live(op);
    const mask = nodeMask();
    let mode: number;
    try {
      mode = native.addressPolicy(this.address + BigInt(o), mask);
    } catch (e) {
      throw explain(e, op, { ENOSYS: 'this kernel has no NUMA memory policies (CONFIG_NUMA)' });
    }
    return { mode: modeName(mode), nodes: maskNodes(mask) };
  }

  /**
   * The NUMA node of each page of `[offset, offset+length)` of the view (default:
   * all of it), from move_pages(2) with no target nodes, which moves nothing. `null`
   * for a page not mapped in this view: never touched through it, or discarded since.
   * Pages the guest touched through another mapping show up here once this view
   * touches them too.
   *
   * @example
   * view.buffer.fill(1);
   * view.pageNodes(0, 8192);   // [0, 0]
   */
  pageNodes(offset: number | bigint = 0, length?: number | bigint): Array<number | null> {
    const op = 'view.pageNodes';
    const o = fileNumber(offset, op, 'offset');
    const n = length === undefined ? this.length - o : fileNumber(length, op, 'length');
    if (o % PAGE_SIZE !== 0) throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: offset ${hex(o)} is not page-aligned (${PAGE_SIZE})`);
    if (n % PAGE_SIZE !== 0) throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: length ${hex(n)} is not page-aligned (${PAGE_SIZE})`);
    if (n <= 0) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: length must be greater than 0`);
    if (o + n > this.length)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: range ${hex(o)}..${hex(o + n)} ends past the view's ${hex(this.length)} bytes`);
    this.#live(op);
    const pages = n / PAGE_SIZE;
    const status = new Int32Array(pages);
    try {
      native.pageNodes(this.address + BigInt(o), pages, status);
    } catch (e) {
      throw explain(e, op, { ENOSYS: 'this kernel has no NUMA page migration (CONFIG_MIGRATION)' });
    }
    // Negative: -ENOENT (no page there yet) or another errno for the page.
    return Array.from(status, (s) => (s >= 0 ? s : null));
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

function unsupportedPolicy(op: string, file: ViewFile, why: string, cause?: unknown): UnsupportedError {
  const err = new UnsupportedError(`a NUMA memory policy on ${file.fileKind} (set_policy)`, 0, op);
  err.message = `${op}: this kernel cannot give ${file.description} a NUMA memory policy: ${why}${file.fileKind === 'guest_memfd' ? ' (guest_memfd takes one from Linux 6.19)' : ''}`;
  if (cause !== undefined) (err as { cause?: unknown }).cause = cause;
  return err;
}
