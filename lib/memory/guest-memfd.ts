/**
 * guest_memfd: a file of guest memory created by KVM_CREATE_GUEST_MEMFD.
 */
import { GuestMemfdFlag } from '../core/caps';
import { StateError } from '../core/errors';
import { FALLOC_FL_KEEP_SIZE, MemoryFile } from './memory-file';
import { native } from '../native';
import type { FdCell } from '../core/ownership';
import { guardReceivers } from '../core/receiver';

/** Options of `vm.createGuestMemfd`. */
export interface GuestMemfdOptions {
  /** Size in bytes: a positive multiple of the page size. */
  size: number | bigint;
  /** GUEST_MEMFD_FLAG_MMAP: allow `map()` (default false). */
  mmap?: boolean;
  /** GUEST_MEMFD_FLAG_INIT_SHARED: pages start shared, so the host may touch them (default false). */
  initShared?: boolean;
}

/** The VM side a guest_memfd reports to. @internal */
export interface GuestMemfdOwner {
  forgetGuestMemfd(file: GuestMemfd): void;
  /** The owner's fd cell: its finalizer also closes the files it holds. */
  readonly fdCell: FdCell;
}

/**
 * A guest_memfd file (KVM_CREATE_GUEST_MEMFD), owned by the VM that created it.
 *
 * The kernel's rules, checked here before any syscall: the size is a positive
 * multiple of the page size; only flags the VM reports in KVM_CAP_GUEST_MEMFD_FLAGS
 * are accepted; `read`/`write` are refused by the kernel (EINVAL); `mmap` needs the
 * MMAP flag, and this library also needs INIT_SHARED to map (private pages would
 * SIGBUS); fallocate always keeps the size; ranges are page-aligned.
 *
 * @example
 * using gmem = vm.createGuestMemfd({ size: 2 << 20, mmap: true, initShared: true });
 * const view = gmem.map();
 * view.buffer[0] = 1;
 * await gmem.punchHole(0, 4096); // view.buffer[0] === 0
 */
export class GuestMemfd extends MemoryFile {
  static {
    guardReceivers(this, (o) => #fdNumber in o, 'guestMemfd', 'vm.createGuestMemfd()');
  }
  /** The GUEST_MEMFD_FLAG_* bits the file was created with. */
  readonly flags: bigint;
  /** The VM the file belongs to. @internal */
  readonly owner: GuestMemfdOwner;
  readonly #fdNumber: number;

  /** @internal */
  static create(owner: GuestMemfdOwner, fd: number, size: number, flags: bigint): GuestMemfd {
    return new GuestMemfd(owner, fd, size, flags);
  }

  /** Made by the library only. */
  private constructor(owner: GuestMemfdOwner, fd: number, size: number, flags: bigint) {
    super(fd, size, owner.fdCell);
    this.owner = owner;
    this.flags = flags;
    this.#fdNumber = fd;
  }

  /** @inheritdoc */
  get description(): string {
    return `guest_memfd (fd ${this.#fdNumber})`;
  }

  /** @inheritdoc */
  get granule(): number {
    return native.pageSize;
  }

  /** True if created with GUEST_MEMFD_FLAG_MMAP. */
  get mmapable(): boolean {
    return (this.flags & GuestMemfdFlag.Mmap) !== 0n;
  }

  /** True if created with GUEST_MEMFD_FLAG_INIT_SHARED. */
  get initShared(): boolean {
    return (this.flags & GuestMemfdFlag.InitShared) !== 0n;
  }

  /** @internal */
  protected get kind(): string {
    return 'guest_memfd';
  }

  /** guest_memfd only supports fallocate with KEEP_SIZE (otherwise EOPNOTSUPP). @internal */
  protected get allocateMode(): number {
    return FALLOC_FL_KEEP_SIZE;
  }

  /** @internal */
  protected prepareMap(_offset: number, _length: number): void {
    if (!this.mmapable)
      throw new StateError(
        'ERR_NOT_MAPPABLE',
        `guest_memfd.map: ${this.description} was created without mmap: true; the kernel refuses mmap of it (ENODEV)`,
      );
    if (!this.initShared)
      throw new StateError(
        'ERR_NOT_MAPPABLE',
        `guest_memfd.map: ${this.description} was created without initShared: true; its pages are private and touching a mapping would raise SIGBUS`,
      );
  }

  /** @internal */
  protected override get mapReasons(): Partial<Record<string, string>> {
    return { ENODEV: 'the guest_memfd was created without GUEST_MEMFD_FLAG_MMAP' };
  }

  /** @internal */
  protected override onClosed(): void {
    this.owner.forgetGuestMemfd(this);
  }
}
