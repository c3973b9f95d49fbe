/**
 * memfd: anonymous shared memory files (memfd_create(2), memfd_secret(2)), the usual
 * shared backing of guest memory slots.
 */
import { ArgumentRangeError, ArgumentTypeError, explain, StateError } from '../core/errors';
import { MemoryFile } from './memory-file';
import { native } from '../native';
import { bool, fileNumber, hex, oneOf, options as readOptions, given } from '../core/validate';
import { guardReceivers } from '../core/receiver';

const MFD_ALLOW_SEALING = 0x0002;
const MFD_HUGETLB = 0x0004;
const MFD_NOEXEC_SEAL = 0x0008;
const MFD_HUGE_SHIFT = 26;

/** Huge page sizes for hugetlb memfds. */
export type HugePageSize = '2MB' | '1GB';
const hugeSizes: Record<HugePageSize, { bytes: number; log2: number }> = {
  '2MB': { bytes: 2 << 20, log2: 21 },
  '1GB': { bytes: 1 << 30, log2: 30 },
};

/** File seals (F_SEAL_*), by name. */
export const Seal = {
  /** F_SEAL_SEAL: no further seals. */
  seal: 0x0001,
  /** F_SEAL_SHRINK: the file cannot shrink. */
  shrink: 0x0002,
  /** F_SEAL_GROW: the file cannot grow. */
  grow: 0x0004,
  /** F_SEAL_WRITE: no writes at all (needs no writable mapping). */
  write: 0x0008,
  /** F_SEAL_FUTURE_WRITE: no new writable mappings or writes. */
  'future-write': 0x0010,
  /** F_SEAL_EXEC: the exec bits cannot change. */
  exec: 0x0020,
} as const;

/** A seal name of {@link Seal}. */
export type SealName = keyof typeof Seal;

/** Options of {@link Memfd.create}. */
export interface MemfdOptions {
  /** Initial size in bytes (default 0); a multiple of the huge page size for hugetlb. */
  size?: number | bigint;
  /** MFD_ALLOW_SEALING (default false). */
  allowSealing?: boolean;
  /** MFD_HUGETLB with this page size. Needs reserved huge pages (/proc/sys/vm/nr_hugepages). */
  hugetlb?: HugePageSize;
  /** MFD_NOEXEC_SEAL: not executable, and sealed so. */
  noExecSeal?: boolean;
  /** Use memfd_secret(2): memory removed from the kernel's direct map. */
  secret?: boolean;
  /**
   * Allow the file to shrink (default false). By default a memfd is sealed against
   * shrinking (F_SEAL_SHRINK) once sized, so no process holding the fd (another
   * process can open /proc/PID/fd/N) can truncate it under a mapping, where the next
   * touch past the new end would kill this process with SIGBUS. `shrinkable: true`
   * gives that guarantee up: only this library's own `truncate` is checked against
   * live views and slots.
   */
  shrinkable?: boolean;
}

/**
 * A memfd. Created with {@link Memfd.create}; independent of any VM (a slot maps it
 * for as long as the slot exists).
 *
 * @example
 * using ram = Memfd.create('ram', { size: 2 << 20, allowSealing: true });
 * ram.seal(['shrink', 'grow']);
 * const view = ram.map();
 */
export class Memfd extends MemoryFile {
  static {
    guardReceivers(this, (o) => #fdNumber in o, 'memfd', 'Memfd.create()');
  }
  /** The name given at creation (`memfd:NAME` in /proc/self/fd). */
  readonly name: string;
  /** Huge page size, for hugetlb memfds. */
  readonly hugetlb: HugePageSize | undefined;
  /** True for memfd_secret files. */
  readonly secret: boolean;
  readonly #fdNumber: number;
  #shrinkSealed = false;
  /** F_SEAL_WRITE or F_SEAL_FUTURE_WRITE was added through {@link Memfd.seal}. */
  #writeSealed = false;

  private constructor(fd: number, name: string, hugetlb: HugePageSize | undefined, secret: boolean) {
    super(fd, 0);
    this.name = name;
    this.hugetlb = hugetlb;
    this.secret = secret;
    this.#fdNumber = fd;
  }

  /**
   * Creates a memfd (memfd_create with MFD_CLOEXEC, or memfd_secret with `secret`),
   * sizes it and, unless `shrinkable`, seals it against shrinking (F_SEAL_SHRINK).
   * Without `allowSealing` no other seal can be added later (F_SEAL_SEAL).
   *
   * @example
   * using ram = Memfd.create('ram', { size: 2 << 20 });
   */
  static create(name: string, options?: MemfdOptions): Memfd {
    const op = 'Memfd.create';
    if (typeof name !== 'string')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: name must be a string, got ${typeof name}`);
    if (Buffer.byteLength(name) > 249 || name.includes('\0'))
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: name must be at most 249 bytes without NUL characters`);
    const o = readOptions<MemfdOptions>(options, op);
    const size = fileNumber(given(o.size, 0), op, 'options.size');
    const allowSealing = bool(o.allowSealing, false, op, 'options.allowSealing');
    const noExecSeal = bool(o.noExecSeal, false, op, 'options.noExecSeal');
    const secret = bool(o.secret, false, op, 'options.secret');
    const shrinkable = bool(o.shrinkable, false, op, 'options.shrinkable');
    const huge = o.hugetlb === undefined ? undefined : oneOf(o.hugetlb, ['2MB', '1GB'] as const, op, 'options.hugetlb');
    const granule = huge ? hugeSizes[huge].bytes : native.pageSize;
    if (size % granule !== 0)
      throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: options.size ${hex(size)} is not a multiple of ${granule} bytes`);
    if (secret && (huge || allowSealing || noExecSeal))
      throw new ArgumentRangeError(
        'ERR_INVALID_ARG_VALUE',
        `${op}: options.secret cannot be combined with hugetlb, allowSealing or noExecSeal (memfd_secret takes no such flags)`,
      );
    let flags = 0;
    // Sealing is always on: the shrink seal needs it (F_SEAL_SEAL closes it again
    // for callers who did not ask for it).
    if (!secret) flags |= MFD_ALLOW_SEALING;
    if (noExecSeal) flags |= MFD_NOEXEC_SEAL;
    if (huge) flags |= MFD_HUGETLB | (hugeSizes[huge].log2 << MFD_HUGE_SHIFT);
    let fd: number;
    try {
      fd = secret ? native.memfdSecret() : native.memfdCreate(name, flags);
    } catch (e) {
      throw explain(e, secret ? `${op}('${name}', secret)` : `${op}('${name}')`, {
        ENOSYS: 'memfd_secret is not enabled in this kernel (secretmem.enable=1 on the command line)',
        EINVAL: huge ? `this kernel does not offer ${huge} huge pages` : 'the kernel refused these memfd flags',
      });
    }
    const file = new Memfd(fd, name, huge, secret);
    try {
      if (size > 0) file.resize(size);
      if (!secret) {
        const seals = (shrinkable ? 0 : Seal.shrink) | (allowSealing ? 0 : Seal.seal);
        if (seals) native.addSeals(fd, seals);
        file.#shrinkSealed = !shrinkable;
      }
    } catch (e) {
      file.close();
      throw explain(e, `${op}('${name}'): sealing`);
    }
    return file;
  }

  /** @inheritdoc */
  get description(): string {
    return `memfd '${this.name}' (fd ${this.#fdNumber})`;
  }

  /** @inheritdoc */
  get granule(): number {
    return this.hugetlb ? hugeSizes[this.hugetlb].bytes : native.pageSize;
  }

  /** @internal */
  protected get kind(): string {
    return 'memfd';
  }

  /** @internal */
  protected override get mapReasons(): Partial<Record<string, string>> {
    return { EPERM: 'the memfd is sealed against writes (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE), perhaps by another process holding its fd' };
  }

  /** @internal */
  protected get allocateMode(): number {
    return 0;
  }

  /**
   * A hugetlb mapping faults in huge pages on first touch and raises SIGBUS when none
   * are free; reserve them now so the failure is an error instead. @internal
   */
  protected prepareMap(offset: number, length: number): void {
    if (this.#writeSealed)
      throw new StateError(
        'ERR_SEALED',
        `memfd.map: ${this.description} is sealed against writes (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE), and views are shared writable mappings`,
      );
    if (!this.hugetlb) return;
    const g = this.granule;
    if (offset % g !== 0 || length % g !== 0)
      throw new ArgumentRangeError(
        'ERR_UNALIGNED',
        `memfd.map: a hugetlb memfd maps in whole ${this.hugetlb} pages; offset ${hex(offset)} and length ${hex(length)} must be multiples of ${hex(g)}`,
      );
    try {
      native.fallocate(this.fd, 0, offset, length);
    } catch (e) {
      throw explain(e, `memfd.map: reserving ${length / g} ${this.hugetlb} huge page(s) for ${this.description}`, {
        ENOSPC: `no free ${this.hugetlb} huge pages; reserve some in /sys/kernel/mm/hugepages (nr_hugepages) first`,
        ENOMEM: `no free ${this.hugetlb} huge pages; reserve some in /sys/kernel/mm/hugepages (nr_hugepages) first`,
      });
    }
  }

  #refuseSecret(op: string, what: string): void {
    if (this.secret)
      throw new StateError('ERR_SECRET_MEMFD', `${op}: ${this.description} is a memfd_secret file, which ${what}`);
  }

  protected override checkAllocate(op: string): void {
    this.#refuseSecret(op, 'has no fallocate: its pages are allocated when first touched through a view');
  }

  private resize(size: number): void {
    if (this.size !== 0 && size !== this.size)
      this.#refuseSecret(`memfd.truncate(${hex(size)})`, 'keeps the size it was first given (secretmem refuses a second size change)');
    try {
      native.ftruncate(this.fd, size);
    } catch (e) {
      throw explain(e, `memfd.truncate(${hex(size)}) of ${this.description}`, {
        EPERM: 'a seal forbids this size change (F_SEAL_SHRINK or F_SEAL_GROW)',
      });
    }
    this.setSize(size);
  }

  /**
   * Changes the size. Shrinking discards the tail, so listeners hear a `'truncate'`
   * invalidation of it; shrinking below a live view or a slot's range is refused
   * (touching the lost tail through a mapping would raise SIGBUS).
   */
  async truncate(size: number | bigint): Promise<void> {
    const op = 'memfd.truncate';
    this.checkOpen(op);
    const n = fileNumber(size, op, 'size');
    if (n % this.granule !== 0)
      throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: size ${hex(n)} is not a multiple of ${this.granule} bytes`);
    const old = this.size;
    if (n === old) return;
    if (n > old) return this.resize(n);
    this.#refuseSecret(op, 'keeps the size it was first given (secretmem refuses a second size change)');
    if (this.#shrinkSealed)
      throw new StateError(
        'ERR_SEALED',
        `${op}: ${this.description} is sealed against shrinking (the default: no process holding its fd can cut it under a mapping, which would raise SIGBUS); create it with shrinkable: true to allow shrinking`,
      );
    this.#checkShrink(op, n);
    this.shrinkingTo = n;
    try {
      await this.discard(n, old - n, 'truncate', () => {
        // Listeners were awaited: check again before the tail goes.
        this.#checkShrink(op, n);
        this.resize(n);
      });
    } finally {
      this.shrinkingTo = undefined;
    }
  }

  #checkShrink(op: string, n: number): void {
    for (const b of this.bindings)
      if (b.fileOffset + Number(b.size) > n)
        throw new StateError(
          'ERR_IN_USE',
          `${op}: cannot shrink ${this.description} to ${hex(n)}: slot ${b.slot} uses it up to ${hex(b.fileOffset + Number(b.size))}`,
        );
    for (const v of this.views.reachableRanges())
      if (v.offset + v.length > n)
        throw new StateError(
          'ERR_IN_USE',
          `${op}: cannot shrink ${this.description} to ${hex(n)}: a live view maps it up to ${hex(v.offset + v.length)} (touching the lost tail would raise SIGBUS); unmap it first`,
        );
  }

  /**
   * Punching a hugetlb memfd returns its huge pages to the pool; a mapping over the
   * hole would then fault with SIGBUS once another user takes them. @internal
   */
  protected override get guardsDiscards(): boolean {
    return this.hugetlb !== undefined || this.secret || this.#writeSealed;
  }

  protected override checkDiscard(op: string, offset: number, length: number): void {
    this.#refuseSecret(op, 'has no fallocate: its pages cannot be punched (they are freed when the file is closed)');
    if (this.#writeSealed)
      throw new StateError(
        'ERR_SEALED',
        `${op}: ${this.description} is sealed against writes (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE): punching would change its contents`,
      );
    if (!this.hugetlb) return;
    for (const v of this.views.reachableRanges())
      if (v.offset < offset + length && offset < v.offset + v.length)
        throw new StateError(
          'ERR_IN_USE',
          `${op}: a live view maps ${hex(v.offset)}..${hex(v.offset + v.length)} of hugetlb ${this.description}; punching it would drop the huge-page reservation under the mapping (SIGBUS on the next touch); unmap the view first`,
        );
  }

  /** Adds seals (F_ADD_SEALS). The memfd must have been created with `allowSealing`. */
  seal(seals: readonly SealName[]): void {
    const op = 'memfd.seal';
    const fd = this.checkOpen(op);
    if (!Array.isArray(seals))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: seals must be an array of seal names`);
    let bits = 0;
    for (const [i, s] of seals.entries()) bits |= Seal[oneOf(s, Object.keys(Seal) as SealName[], op, `seals[${i}]`)];
    this.#refuseSecret(op, 'cannot be sealed (only memfd_create files can)');
    try {
      native.addSeals(fd, bits);
      if (bits & Seal.shrink) this.#shrinkSealed = true;
      if (bits & (Seal.write | Seal['future-write'])) {
        this.#writeSealed = true;
        this.relearn();
      }
    } catch (e) {
      throw explain(e, `${op}([${seals.join(', ')}]) of ${this.description}`, {
        EPERM: 'the memfd was created without allowSealing, or F_SEAL_SEAL is already set',
        EBUSY: "'write' needs no writable shared mapping: unmap every view first",
      });
    }
  }

  /** The seals in force (F_GET_SEALS), by name. */
  get seals(): SealName[] {
    const fd = this.checkOpen('memfd.seals');
    // memfd_secret files take no seals (F_GET_SEALS fails with EINVAL): none are in force.
    if (this.secret) return [];
    const bits = native.getSeals(fd);
    return (Object.keys(Seal) as SealName[]).filter((name) => (bits & Seal[name]) !== 0);
  }
}
