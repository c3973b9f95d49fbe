/**
 * Guest-physical memory access for the host: `vm.memory.read/write/view`, through the
 * shared backing's views of each slot.
 */
import { ArgumentRangeError, ArgumentTypeError, StateError } from '../core/errors';
import type { MemorySlot } from './memory-slot';
import type { SlotTable } from './slot-table';
import { hex, u64 } from '../core/validate';
import { guardReceivers } from '../core/receiver';

/** The VM parts guest memory access needs. @internal */
export interface GuestMemoryHost {
  readonly slotTable: SlotTable<MemorySlot>;
  checkOpen(operation: string): number;
  /** The private sub-ranges of `[gpa, gpa+size)`, if any. */
  privateRanges(gpa: bigint, size: bigint): Array<{ guestPhysAddr: bigint; size: bigint }>;
}

/**
 * Reads and writes guest physical memory (address space 0) through the userspace
 * mappings of the VM's slots. Ranges may cross slot boundaries; unmapped GPAs and
 * private ranges (the host cannot see them) are errors that name the range.
 *
 * @example
 * vm.memory.write(0x1000n, Buffer.from([0xf4]));   // hlt
 * vm.memory.read(0x1000n, 1);                       // <Buffer f4>
 */
export class GuestMemory {
  static {
    guardReceivers(this, (o) => #host in o, 'memory', 'vm.memory');
  }
  readonly #host: GuestMemoryHost;

  /** @internal */
  static create(host: GuestMemoryHost): GuestMemory {
    return new GuestMemory(host);
  }

  /** Made by the library only. */
  private constructor(host: GuestMemoryHost) {
    this.#host = host;
  }

  #pieces(op: string, gpa: number | bigint, length: number | bigint) {
    this.#host.checkOpen(op);
    const start = u64(gpa, op, 'guestPhysAddr');
    const size = u64(length, op, 'length');
    if (start + size > 1n << 64n) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: range wraps past 2^64`);
    const pieces = this.#host.slotTable.cover(0, start, size);
    const hole = pieces.find((p) => !p.slot);
    if (hole)
      throw new StateError(
        'ERR_UNMAPPED_GPA',
        `${op}: GPA ${hex(hole.guestPhysAddr)}..${hex(hole.guestPhysAddr + hole.size)} is not covered by any memory slot`,
      );
    const priv = this.#host.privateRanges(start, size)[0];
    if (priv)
      throw new StateError(
        'ERR_PRIVATE_GPA',
        `${op}: GPA ${hex(priv.guestPhysAddr)}..${hex(priv.guestPhysAddr + priv.size)} is private; the host cannot access it (convert it to shared first)`,
      );
    return pieces.map((p) => {
      const slot = p.slot!;
      const at = Number(p.guestPhysAddr - slot.guestPhysAddr);
      return { buffer: slot.userspace.view.buffer, at, length: Number(p.size) };
    });
  }

  /**
   * Copies `length` bytes at `guestPhysAddr` into a new Buffer. The new Buffer's
   * memory is fresh (the kernel faults it in as it is filled); loops that read
   * often are faster with {@link GuestMemory.readInto} and a buffer of their own.
   */
  read(guestPhysAddr: number | bigint, length: number | bigint): Buffer {
    const pieces = this.#pieces('vm.memory.read', guestPhysAddr, length);
    if (pieces.length === 1) {
      const p = pieces[0]!;
      return Buffer.from(p.buffer.subarray(p.at, p.at + p.length));
    }
    return Buffer.concat(pieces.map((p) => p.buffer.subarray(p.at, p.at + p.length)));
  }

  /**
   * Copies `target.length` bytes at `guestPhysAddr` into `target` (any Uint8Array),
   * allocating nothing: the form for hot loops. Returns `target`.
   *
   * @example
   * const page = Buffer.allocUnsafe(4096);
   * for (;;) { vm.memory.readInto(0x1000, page); ... }
   */
  readInto<T extends Uint8Array>(guestPhysAddr: number | bigint, target: T): T {
    if (!(target instanceof Uint8Array))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', 'vm.memory.readInto: target must be a Buffer or Uint8Array');
    let offset = 0;
    for (const p of this.#pieces('vm.memory.readInto', guestPhysAddr, target.length)) {
      target.set(p.buffer.subarray(p.at, p.at + p.length), offset);
      offset += p.length;
    }
    return target;
  }

  /** Copies `bytes` to guest memory at `guestPhysAddr`. */
  write(guestPhysAddr: number | bigint, bytes: Uint8Array): void {
    if (!(bytes instanceof Uint8Array))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', 'vm.memory.write: bytes must be a Buffer or Uint8Array');
    let offset = 0;
    for (const p of this.#pieces('vm.memory.write', guestPhysAddr, bytes.length)) {
      p.buffer.set(bytes.subarray(offset, offset + p.length), p.at);
      offset += p.length;
    }
  }

  /**
   * A zero-copy Buffer over `[guestPhysAddr, +length)`. The range must lie in one
   * slot (a Buffer cannot span two mappings); it is detached with the slot's view.
   */
  view(guestPhysAddr: number | bigint, length: number | bigint): Buffer {
    const pieces = this.#pieces('vm.memory.view', guestPhysAddr, length);
    if (pieces.length !== 1)
      throw new StateError(
        'ERR_NOT_CONTIGUOUS',
        `vm.memory.view: GPA ${hex(u64(guestPhysAddr, 'vm.memory.view', 'guestPhysAddr'))} (+${hex(u64(length, 'vm.memory.view', 'length'))}) spans ${pieces.length} slots; use read()/write() or view each slot's part`,
      );
    const p = pieces[0]!;
    return p.buffer.subarray(p.at, p.at + p.length);
  }
}
