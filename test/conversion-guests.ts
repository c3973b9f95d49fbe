/**
 * 64-bit guests that exercise shared/private conversion from the inside, in the
 * spirit of the kernel's x86/private_mem_conversions_test: the guest writes
 * patterns, asks for conversions of several sizes in both directions with
 * KVM_HC_MAP_GPA_RANGE, and checks after each one that private data survives, that
 * shared data is what the host wrote, and that converted ranges read as zeros (this
 * library discards the stale copy on every conversion). The host takes part through
 * "syncs" over port I/O: it checks its side and writes new patterns.
 *
 * Guest ↔ host protocol: `out 0xe0, eax` with eax = command, rdi = GPA, rsi = size,
 * r8 = the pattern the host must see, r9 = the pattern it must write (shared syncs),
 * r10 = the number of the guest's check, for failure reports.
 */
import { Assembler, mem, type GuestProgram } from '../lib/index';

export const SYNC_PORT = 0xe0;
export const Sync = { Shared: 1, Private: 2, Punch: 3, Done: 4, Fail: 0xff, HypercallFailed: 0xfe } as const;
export const PAGE = 4096;
export const SZ_2M = 2 << 20;
/** Per vCPU: 2 MiB and one page, as in the kernel's test. */
export const DATA_SIZE = SZ_2M + PAGE;
/** KVM_HC_MAP_GPA_RANGE and its KVM_MAP_GPA_RANGE_ENCRYPTED attribute bit. */
const HC_MAP_GPA_RANGE = 12;
const MAP_GPA_RANGE_ENCRYPTED = 1 << 4;

/** The sub-ranges the kernel's test converts: [offset, size]. */
export const TEST_RANGES: ReadonlyArray<readonly [number, number]> = [
  [0, PAGE],
  [0, SZ_2M],
  [PAGE, PAGE],
  [PAGE, SZ_2M],
  [SZ_2M, PAGE],
];

/** Builds a straight-line guest: each step is a few instructions; checks jump to a shared failure report. */
class Script {
  readonly a: Assembler;
  #check = 0;
  readonly checks: string[] = [];

  constructor(origin: bigint, stackTop: bigint) {
    this.a = new Assembler({ origin });
    this.a.mov('rsp', stackTop);
  }

  memset(gpa: bigint, pattern: number, size: number): void {
    const a = this.a;
    a.mov('rdi', gpa);
    a.mov('ecx', size);
    a.mov('eax', pattern);
    a.stosb('rep');
  }

  /** Fails (reporting `what`) unless every byte of `[gpa, +size)` is `pattern`. */
  expect(gpa: bigint, pattern: number, size: number, what: string): void {
    const a = this.a;
    this.checks.push(what);
    a.mov('r10d', this.#check++);
    a.mov('rdi', gpa);
    a.mov('ecx', size);
    a.mov('eax', pattern);
    a.scasb('repe');
    a.jne('fail');
  }

  /** KVM_HC_MAP_GPA_RANGE(gpa, pages, private ? ENCRYPTED : 0); fails unless it returns 0. */
  map(gpa: bigint, size: number, to: 'private' | 'shared'): void {
    const a = this.a;
    this.checks.push(`MAP_GPA_RANGE ${to} 0x${gpa.toString(16)}+0x${size.toString(16)} returned 0`);
    a.mov('r10d', this.#check++);
    a.mov('eax', HC_MAP_GPA_RANGE);
    a.mov('rbx', gpa);
    a.mov('ecx', size / PAGE);
    a.mov('edx', to === 'private' ? MAP_GPA_RANGE_ENCRYPTED : 0);
    a.vmcall();
    a.test('rax', 'rax');
    a.jnz('hypercall.failed');
  }

  sync(command: number, gpa: bigint, size: number, seen = 0, next = 0): void {
    const a = this.a;
    a.mov('rdi', gpa);
    a.mov('esi', size);
    a.mov('r8d', seen);
    a.mov('r9d', next);
    a.mov('eax', command);
    a.out(SYNC_PORT, 'eax');
  }

  finish(name: string): { program: GuestProgram; checks: string[] } {
    const a = this.a;
    a.mov('eax', Sync.Done);
    a.out(SYNC_PORT, 'eax');
    a.label('halt').hlt().jmp('halt');
    // A mismatch: repe scasb stopped one past the byte that differed.
    a.label('fail');
    a.dec('rdi');
    a.mov('r8d', 'eax'); //                the pattern expected
    a.movzx('r9d', mem.byte('rdi')); //    the byte found
    a.mov('eax', Sync.Fail);
    a.out(SYNC_PORT, 'eax');
    a.jmp('halt');
    a.label('hypercall.failed');
    a.mov('r9', 'rax'); //                 what the hypercall returned
    a.mov('eax', Sync.HypercallFailed);
    a.out(SYNC_PORT, 'eax');
    a.jmp('halt');
    return { program: a.toProgram(name), checks: this.checks };
  }
}

/**
 * The explicit-conversion guest for the data region at `base`: the region starts
 * shared; each test range is written, converted to private (whose fresh memory reads
 * zeros), written privately, partly converted back page by page, converted back
 * whole, and reset, with the host checking its side at every sync.
 */
export function explicitConversionGuest(base: bigint, codeAt: bigint, stackTop: bigint): { program: GuestProgram; checks: string[] } {
  const s = new Script(codeAt, stackTop);
  const def = 0xaa;
  const init = 0xcc;
  s.memset(base, def, DATA_SIZE);
  s.expect(base, def, DATA_SIZE, 'the region holds what the guest wrote while shared');
  s.sync(Sync.Shared, base, DATA_SIZE, def, init);
  s.expect(base, init, DATA_SIZE, 'the region holds the pattern the host wrote');
  for (const [offset, size] of TEST_RANGES) {
    const gpa = base + BigInt(offset);
    const [p1, p2, p3, p4] = [0x11, 0x22, 0x33, 0x44];
    const at = `range +0x${offset.toString(16)} (0x${size.toString(16)} bytes)`;
    s.memset(gpa, p1, size);
    s.map(gpa, size, 'private');
    // Private memory comes fresh from the guest_memfd: zeros, not the shared bytes.
    s.expect(gpa, 0, size, `${at}: freshly private memory reads zeros`);
    const privateBytes = Math.min(size, PAGE);
    s.memset(gpa, p2, privateBytes);
    s.sync(Sync.Private, gpa, privateBytes, 0);
    s.expect(gpa, p2, privateBytes, `${at}: private data survives the host's look`);
    if (offset > 0) s.expect(base, init, offset, `${at}: shared memory before the range is untouched`);
    const end = offset + size;
    if (end < DATA_SIZE) s.expect(gpa + BigInt(size), init, DATA_SIZE - end, `${at}: shared memory after the range is untouched`);
    if (size === PAGE) {
      // (The kernel's test also punches holes into multi-page private ranges page by page.)
    } else {
      for (let page = 1; page * PAGE < size && page < 4; page += 2) {
        const p = gpa + BigInt(page * PAGE);
        s.map(p, PAGE, 'shared');
        // The shared copy was discarded when the range turned private.
        s.sync(Sync.Shared, p, PAGE, 0, p3);
        s.expect(p, p3, PAGE, `${at}: page ${page} converted back to shared holds the host's pattern`);
        s.expect(gpa, p2, PAGE, `${at}: page 0 is still private and still holds its data`);
      }
    }
    s.map(gpa, size, 'shared');
    s.memset(gpa, p3, size);
    s.sync(Sync.Shared, gpa, size, p3, p4);
    s.expect(gpa, p4, size, `${at}: shared again, the host's write is seen`);
    s.memset(gpa, init, size);
  }
  // The kernel's punch-hole test: private memory whose guest_memfd pages the host
  // punches reads zeros on the next access.
  s.map(base, DATA_SIZE, 'private');
  for (const [offset, size] of TEST_RANGES) {
    const gpa = base + BigInt(offset);
    const at = `punched range +0x${offset.toString(16)} (0x${size.toString(16)} bytes)`;
    s.memset(base, init, DATA_SIZE);
    s.expect(base, init, DATA_SIZE, `${at}: private memory holds what the guest wrote`);
    s.sync(Sync.Punch, gpa, size);
    s.expect(gpa, 0, size, `${at}: after the host punched the guest_memfd, the guest reads zeros`);
    if (offset > 0) s.expect(base, init, offset, `${at}: private memory before the hole is kept`);
  }
  s.map(base, DATA_SIZE, 'shared');
  return s.finish(`explicitConversionGuest(0x${base.toString(16)})`);
}

/** A 64-bit guest that reads `gpa` forever (the kernel's private_mem_kvm_exits_test). */
export function repeatedReadGuest(gpa: bigint, codeAt: bigint): GuestProgram {
  const a = new Assembler({ origin: codeAt });
  a.mov('rsi', gpa);
  a.label('again');
  a.mov('rax', mem.qword('rsi'));
  a.jmp('again');
  return a.toProgram(`repeatedReadGuest(0x${gpa.toString(16)})`);
}
