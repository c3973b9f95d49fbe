/**
 * Guest programs as machine code, so that tests and VMM prototypes need no
 * external assembler. Most are byte arrays assembled by hand; `longWritePattern`
 * is built with the {@link Assembler} of `./asm`, the way to write new ones.
 *
 * Every program is position-independent (only relative jumps; every absolute
 * address it uses is data), so `loadAddress` only decides where the bytes go and
 * where execution starts. Every program that finishes ends in `hlt; jmp $-1`: a
 * vCPU run again after its HLT exit halts again instead of running off into
 * whatever follows the program.
 *
 * Real-mode programs expect the state KVM gives a vCPU after KVM_CREATE_VCPU with
 * `cs.base = 0, cs.selector = 0` (so linear address = IP) and `rip = entry`,
 * `rflags = 0x2`. Long-mode programs expect the state described by
 * {@link longModeSetup}.
 *
 * @module
 */

import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import { Assembler } from './asm';

/**
 * A guest program: machine code and where it wants to run.
 *
 * Load `bytes` at guest physical address `loadAddress`, set `rip = entry` (and
 * `rflags = 0x2`), then set the segment state that `mode` asks for:
 * - `'real'`: 16-bit real mode as KVM creates a vCPU, with `cs.base = 0` and
 *   `cs.selector = 0` (what the kernel's reset state has is `0xffff0000`/`0xf000`).
 * - `'long'`: 64-bit mode entered straight from `KVM_SET_SREGS` with the page
 *   tables, GDT and register values of {@link longModeSetup}.
 */
export interface GuestProgram {
  /** Short name of the program and its parameters, for test titles and logs. */
  readonly name: string;
  /** The machine code. */
  readonly bytes: Uint8Array;
  /** Guest physical address the bytes must be copied to. */
  readonly loadAddress: bigint;
  /** Guest address of the first instruction (`rip`); equal to `loadAddress`. */
  readonly entry: bigint;
  /** CPU mode the code was assembled for. */
  readonly mode: 'real' | 'long';
}

/** Where to place a program. */
export interface ProgramOptions {
  /**
   * Guest physical address to load the program at. Default {@link DEFAULT_LOAD_ADDRESS}.
   * Real mode: at most 0xF000, and the whole program must end below 64 KiB (IP is 16 bits).
   */
  loadAddress?: number | bigint;
}

/** Default load address of every program: GPA 0x1000, the page after the real-mode IVT. */
export const DEFAULT_LOAD_ADDRESS = 0x1000n;

/**
 * Default port programs report to: 0x3f8 (COM1), what the benchmark guest uses. KVM
 * has no in-kernel device there, so every `out` to it is a KVM_EXIT_IO.
 */
export const DEFAULT_PORT = 0x3f8;

/** Highest linear address + 1 that real mode can reach: 0xFFFF:0xFFFF + 1 (no A20 wrap in KVM). */
const REAL_MODE_END = 0x10fff0;

// --- argument checks ---------------------------------------------------------------------------

function outOfRange(what: string, value: number | bigint, rule: string): RangeError {
  return new ArgumentRangeError('ERR_OUT_OF_RANGE', `${what} ${formatHex(value)} is out of range: ${rule}`);
}

function formatHex(value: number | bigint): string {
  if (typeof value === 'number' && !Number.isInteger(value)) return String(value);
  const v = BigInt(value);
  return v < 0n ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`;
}

function toBigInt(what: string, value: number | bigint): bigint {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
  throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${what} must be an integer number or a bigint, got ${String(value)}`);
}

function checkInt(what: string, value: number | bigint, min: number, max: number): number {
  const v = toBigInt(what, value);
  if (v < BigInt(min) || v > BigInt(max)) {
    throw outOfRange(what, v, `must be in [${formatHex(min)}, ${formatHex(max)}]`);
  }
  return Number(v);
}

function checkU64(what: string, value: number | bigint): bigint {
  const v = toBigInt(what, value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw outOfRange(what, v, 'must fit in 64 bits');
  return v;
}

const checkPort = (port: number): number => checkInt('port', port, 0, 0xffff);
const checkByte = (value: number): number => checkInt('value', value, 0, 0xff);

// --- little-endian immediates ------------------------------------------------------------------

function imm16(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff];
}

function imm32(v: number | bigint): number[] {
  const n = Number(BigInt.asUintN(32, BigInt(v)));
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

function imm64(v: bigint): number[] {
  const out: number[] = [];
  let n = BigInt.asUintN(64, v);
  for (let i = 0; i < 8; i++) {
    out.push(Number(n & 0xffn));
    n >>= 8n;
  }
  return out;
}

// --- program construction ----------------------------------------------------------------------

function program(name: string, mode: 'real' | 'long', code: number[], options?: ProgramOptions): GuestProgram {
  const load = toBigInt('loadAddress', options?.loadAddress ?? DEFAULT_LOAD_ADDRESS);
  if (mode === 'real') {
    if (load < 0n || load > 0xf000n) throw outOfRange('real-mode loadAddress', load, 'must be in [0x0, 0xf000]');
    if (load + BigInt(code.length) > 0x10000n) {
      throw outOfRange('real-mode loadAddress', load, `the ${code.length}-byte program must end below 0x10000 (16-bit IP)`);
    }
  } else if (load < 0n || load + BigInt(code.length) > 1n << 52n) {
    throw outOfRange('long-mode loadAddress', load, 'must be a guest physical address below 2^52');
  }
  return Object.freeze({ name, bytes: Uint8Array.from(code), loadAddress: load, entry: load, mode });
}

/** `hlt` forever: every run after the first HLT exit gives another HLT exit. Same bytes in both modes. */
const HALT_FOREVER = [
  0xf4, //       hlt           ; KVM_EXIT_HLT (no in-kernel irqchip)
  0xeb, 0xfd, // jmp $-3       ; back to the hlt if the vCPU is run again
];

/**
 * Splits `[start, start + length)` into pieces a 16-bit segment:offset pair can
 * address: segment = linear >> 4 (capped at 0xFFFF), offset < 0x10000 for every byte.
 */
function realModeChunks(start: number, length: number): Array<{ seg: number; off: number; count: number }> {
  const chunks: Array<{ seg: number; off: number; count: number }> = [];
  let at = start;
  let left = length;
  while (left > 0) {
    const seg = Math.min(at >>> 4, 0xffff);
    const off = at - seg * 16;
    const count = Math.min(left, 0x10000 - off);
    chunks.push({ seg, off, count });
    at += count;
    left -= count;
  }
  return chunks;
}

function checkRealRange(what: string, addr: number | bigint, length: number): number {
  const a = checkInt(what, addr, 0, 0xfffff);
  if (a + length > REAL_MODE_END) {
    throw outOfRange(`${what} + length`, a + length, `real mode reaches linear addresses below ${formatHex(REAL_MODE_END)}`);
  }
  return a;
}

// --- real-mode programs ------------------------------------------------------------------------

/**
 * The benchmark guest: `out` to `port` forever, one KVM_EXIT_IO (out, size 1,
 * count 1) per KVM_RUN. Same bytes as the C baseline (`ba f8 03 ee eb fd` for 0x3f8).
 */
export function outLoop(port: number = DEFAULT_PORT, options?: ProgramOptions): GuestProgram {
  const p = checkPort(port);
  return program(`outLoop(${formatHex(p)})`, 'real', [
    0xba, ...imm16(p), // mov dx, port   ; I/O port for out
    0xee, //              out dx, al     ; <- loop: KVM_EXIT_IO, 1 byte out
    0xeb, 0xfd, //        jmp $-3        ; back to the out
  ], options);
}

/**
 * Reads `length` bytes starting at linear address `srcAddr` (real mode: below
 * 1 MiB, the range may run up to 0x10FFEF) one at a time and sends each with
 * `out dx, al` to `port` (one KVM_EXIT_IO per byte, in order), then halts.
 * Loads ds from the address so any address works; a range crossing a 64 KiB
 * window reloads ds.
 */
export function readAndReport(srcAddr: number | bigint, length: number, port: number = DEFAULT_PORT,
  options?: ProgramOptions): GuestProgram {
  const n = checkInt('length', length, 0, 0xffff);
  const src = checkRealRange('srcAddr', srcAddr, n);
  const p = checkPort(port);
  const code: number[] = [
    0xba, ...imm16(p), // mov dx, port   ; I/O port for out
    0xfc, //              cld            ; lodsb counts si upwards
  ];
  for (const { seg, off, count } of realModeChunks(src, n)) {
    code.push(
      0xb8, ...imm16(seg), //   mov ax, seg    ; segment of this 64 KiB window
      0x8e, 0xd8, //            mov ds, ax
      0xbe, ...imm16(off), //   mov si, off    ; first byte within the window
      0xb9, ...imm16(count), // mov cx, count  ; bytes in this window (>= 1)
      0xac, //                  lodsb          ; <- loop: al = ds:[si++] (KVM_EXIT_MMIO if unmapped)
      0xee, //                  out dx, al     ; KVM_EXIT_IO with the byte
      0xe2, 0xfc, //            loop $-4       ; --cx, back to the lodsb while cx != 0
    );
  }
  code.push(...HALT_FOREVER);
  return program(`readAndReport(${formatHex(src)}, ${n}, ${formatHex(p)})`, 'real', code, options);
}

/**
 * Fills `length` bytes at linear address `dstAddr` with `value` (`rep stosb`
 * through es), then sends `value` to `port` as a done marker, then halts.
 */
export function writePattern(dstAddr: number | bigint, length: number, value: number, port: number = DEFAULT_PORT,
  options?: ProgramOptions): GuestProgram {
  const n = checkInt('length', length, 0, 0xffff);
  const dst = checkRealRange('dstAddr', dstAddr, n);
  const v = checkByte(value);
  const p = checkPort(port);
  const code: number[] = [
    0xfc, //       cld            ; stosb counts di upwards
    0xb0, v, //    mov al, value  ; the fill byte
  ];
  for (const { seg, off, count } of realModeChunks(dst, n)) {
    code.push(
      0xbb, ...imm16(seg), //   mov bx, seg    ; segment of this 64 KiB window (bx: al holds the fill byte)
      0x8e, 0xc3, //            mov es, bx
      0xbf, ...imm16(off), //   mov di, off    ; first byte within the window
      0xb9, ...imm16(count), // mov cx, count  ; bytes in this window (>= 1)
      0xf3, 0xaa, //            rep stosb      ; es:[di++] = al, cx times
    );
  }
  code.push(
    0xba, ...imm16(p), // mov dx, port   ; done marker port
    0xee, //              out dx, al     ; KVM_EXIT_IO carrying value: the fill is complete
    ...HALT_FOREVER,
  );
  return program(`writePattern(${formatHex(dst)}, ${n}, ${formatHex(v)}, ${formatHex(p)})`, 'real', code, options);
}

/**
 * Reads one byte at linear address `addr` (below 1 MiB) into al, sends it to
 * `port`, then halts. Aimed at an unmapped GPA, the read is a KVM_EXIT_MMIO
 * (read, length 1); the byte the VMM puts in the exit's data is what then
 * comes out on the port.
 */
export function touch(addr: number | bigint, port: number = DEFAULT_PORT, options?: ProgramOptions): GuestProgram {
  const a = checkRealRange('addr', addr, 1);
  const p = checkPort(port);
  const seg = Math.min(a >>> 4, 0xffff);
  const off = a - seg * 16;
  return program(`touch(${formatHex(a)}, ${formatHex(p)})`, 'real', [
    0xb8, ...imm16(seg), // mov ax, seg     ; segment holding addr
    0x8e, 0xd8, //          mov ds, ax
    0xa0, ...imm16(off), // mov al, [off]   ; the read (KVM_EXIT_MMIO if unmapped)
    0xba, ...imm16(p), //   mov dx, port
    0xee, //                out dx, al      ; KVM_EXIT_IO with the byte read
    ...HALT_FOREVER,
  ], options);
}

/**
 * `jmp $` forever: the vCPU never exits on its own (for testing kicks:
 * `immediate_exit` plus a signal make KVM_RUN return EINTR). The bytes are the
 * same in both modes; `mode` only says which state to run them in.
 */
export function spin(options?: ProgramOptions & { mode?: 'real' | 'long' }): GuestProgram {
  const mode = options?.mode ?? 'real';
  return program(`spin(${mode})`, mode, [
    0xeb, 0xfe, // jmp $  ; spin without exiting
  ], options);
}

/** Options of {@link hypercall} and {@link longHypercall}. */
export interface HypercallOptions extends ProgramOptions {
  /**
   * Port to send the result to after the call (`out dx, eax`: a 4-byte KVM_EXIT_IO
   * carrying the low 32 bits of rax), so the guest-visible result can be checked.
   * Default: none, the program halts right after the call.
   */
  reportPort?: number;
  /**
   * `'vmcall'` (0F 01 C1, Intel's; the default, what KVM guests use) or `'vmmcall'`
   * (0F 01 D9, AMD's). KVM accepts both: on the other vendor it emulates the
   * instruction and may patch it into the native one in guest memory.
   */
  instruction?: 'vmcall' | 'vmmcall';
}

function hypercallInstruction(options?: HypercallOptions): number[] {
  const insn = options?.instruction ?? 'vmcall';
  if (insn !== 'vmcall' && insn !== 'vmmcall') {
    throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `hypercall: options.instruction must be 'vmcall' or 'vmmcall', got ${String(insn)}`);
  }
  return insn === 'vmcall' ? [0x0f, 0x01, 0xc1] : [0x0f, 0x01, 0xd9];
}

/**
 * A KVM hypercall from real mode: `vmcall` with eax = nr, ebx = a0, ecx = a1,
 * edx = a2 (32-bit registers via the 0x66 operand-size prefix; KVM truncates
 * hypercall registers to 32 bits outside 64-bit mode), then halts.
 *
 * KVM handles hypercalls itself; only those enabled with KVM_CAP_EXIT_HYPERCALL
 * (today only KVM_HC_MAP_GPA_RANGE = 12) exit to userspace as
 * KVM_EXIT_HYPERCALL. Others return a status in eax (-KVM_ENOSYS = -1000 for
 * an unknown nr), which `reportPort` makes visible.
 *
 * Not every host completes hypercalls: on a KVM with the PVM backend (AMD) the
 * vCPU stays on the `vmcall` inside KVM_RUN until it is kicked.
 */
export function hypercall(nr: number | bigint, a0: number | bigint = 0, a1: number | bigint = 0,
  a2: number | bigint = 0, options?: HypercallOptions): GuestProgram {
  const names = ['nr', 'a0', 'a1', 'a2'];
  const [n, x0, x1, x2] = [nr, a0, a1, a2].map((v, i) => checkInt(names[i]!, v, 0, 0xffff_ffff)) as
    [number, number, number, number];
  const code: number[] = [
    0x66, 0xb8, ...imm32(n), //  mov eax, nr  ; hypercall number
    0x66, 0xbb, ...imm32(x0), // mov ebx, a0
    0x66, 0xb9, ...imm32(x1), // mov ecx, a1
    0x66, 0xba, ...imm32(x2), // mov edx, a2
    ...hypercallInstruction(options), // vmcall (or vmmcall) ; KVM_EXIT_HYPERCALL if enabled; result in eax
  ];
  const port = options?.reportPort;
  if (port !== undefined) {
    code.push(
      0xba, ...imm16(checkPort(port)), // mov dx, port
      0x66, 0xef, //                      out dx, eax  ; KVM_EXIT_IO, 4 bytes: the hypercall's result
    );
  }
  code.push(...HALT_FOREVER);
  const name = `hypercall(${[n, x0, x1, x2].map(formatHex).join(', ')}${port === undefined ? '' : `, port ${formatHex(port)}`})`;
  return program(name, 'real', code, options);
}

// --- long mode ---------------------------------------------------------------------------------

/** A segment register as `struct kvm_segment` (KVM_GET_SREGS / KVM_SET_SREGS) holds it. */
export interface KvmSegment {
  /** `kvm_segment.base`: the segment's base address. */
  base: bigint;
  /** Byte-granular limit (0xFFFFFFFF for a flat segment), not the descriptor's 20-bit field. */
  limit: number;
  /** `kvm_segment.selector`: the value of the segment register (GDT/LDT index, TI, RPL). */
  selector: number;
  /** `kvm_segment.type`: the descriptor's 4-bit type (e.g. 0xB execute/read accessed code, 0x3 read/write accessed data). */
  type: number;
  /** `kvm_segment.present`: P bit. */
  present: number;
  /** `kvm_segment.dpl`: descriptor privilege level, 0..3. */
  dpl: number;
  /** `kvm_segment.db`: D/B bit, 32-bit default operand size (0 for a 64-bit code segment). */
  db: number;
  /** `kvm_segment.s`: S bit, 1 for a code or data segment, 0 for a system segment. */
  s: number;
  /** `kvm_segment.l`: L bit, 64-bit code segment. */
  l: number;
  /** `kvm_segment.g`: G bit, the descriptor's limit is in 4 KiB units. */
  g: number;
  /** `kvm_segment.avl`: the descriptor's AVL bit, available to software. */
  avl: number;
  /** `kvm_segment.unusable`: 1 when the register holds no usable segment (e.g. a null selector). */
  unusable: number;
}

/** A descriptor table register as `struct kvm_dtable` holds it (`gdt`, `idt`). */
export interface KvmDtable {
  /** `kvm_dtable.base`: address of the table. */
  base: bigint;
  /** `kvm_dtable.limit`: size of the table in bytes, minus one. */
  limit: number;
}

/**
 * The `struct kvm_sregs` fields that put a vCPU in 64-bit mode. Apply them over
 * what KVM_GET_SREGS returns (keep its `tr`, `ldt`, `idt`, `apic_base`), then
 * KVM_SET_SREGS; set `rflags = 0x2` with KVM_SET_REGS.
 */
export interface LongModeSregs {
  /** PE | MP | ET | NE | WP | AM | PG = 0x80050033. */
  cr0: bigint;
  /** Guest physical address of the PML4. */
  cr3: bigint;
  /** PAE | OSFXSR | OSXMMEXCPT = 0x620. */
  cr4: bigint;
  /** LME | LMA = 0x500 (no NX: the page tables do not use it). */
  efer: bigint;
  /** `kvm_sregs.cs`: flat 64-bit code segment (L = 1), selector {@link LONG_MODE_CODE_SELECTOR}. */
  cs: KvmSegment;
  /** `kvm_sregs.ds`: flat read/write data segment, selector {@link LONG_MODE_DATA_SELECTOR}. */
  ds: KvmSegment;
  /** `kvm_sregs.es`: same as `ds`. */
  es: KvmSegment;
  /** `kvm_sregs.fs`: same as `ds`. */
  fs: KvmSegment;
  /** `kvm_sregs.gs`: same as `ds`. */
  gs: KvmSegment;
  /** `kvm_sregs.ss`: same as `ds`. */
  ss: KvmSegment;
  /** `kvm_sregs.gdt`: the GDT written to guest memory (null, code and data descriptors). */
  gdt: KvmDtable;
}

/** Everything needed to start a vCPU directly in 64-bit mode. */
export interface LongModeSetup {
  /** Bytes to write into guest memory before the first KVM_RUN: page tables and the GDT. */
  memory: Array<{ gpa: bigint; bytes: Uint8Array }>;
  /** Register state for KVM_SET_SREGS. */
  sregs: LongModeSregs;
  /** Where each structure sits; `end` is the first GPA after all of them. */
  layout: { pml4: bigint; pdpt: bigint; pageDirectories: bigint; gdt: bigint; end: bigint; mappedBytes: bigint };
}

/** Options of {@link longModeSetup}. */
export interface LongModeOptions {
  /**
   * Page-aligned GPA where the tables start. Default 0x10000, so that together
   * (0x10000..0x1B000 for 8 GiB) they sit in a 2 MiB slot at GPA 0, clear of
   * programs at 0x1000.
   */
  baseGpa?: number | bigint;
  /** GiB of guest physical memory to identity-map from GPA 0, 1..512. Default 8 (covers 4 GiB slots). */
  mappedGiB?: number;
}

/** Selector of the 64-bit code segment in the GDT of {@link longModeSetup}. */
export const LONG_MODE_CODE_SELECTOR = 0x08;
/** Selector of the data segment in the GDT of {@link longModeSetup}. */
export const LONG_MODE_DATA_SELECTOR = 0x10;

const PAGE = 4096;
const PTE_PRESENT = 1n << 0n;
const PTE_WRITABLE = 1n << 1n;
/** PS in a page-directory entry: it maps a 2 MiB page. */
const PDE_LARGE = 1n << 7n;

const X86_CR0_PE = 1n << 0n;
const X86_CR0_MP = 1n << 1n;
const X86_CR0_ET = 1n << 4n;
const X86_CR0_NE = 1n << 5n;
const X86_CR0_WP = 1n << 16n;
const X86_CR0_AM = 1n << 18n;
const X86_CR0_PG = 1n << 31n;
const X86_CR4_PAE = 1n << 5n;
const X86_CR4_OSFXSR = 1n << 9n;
const X86_CR4_OSXMMEXCPT = 1n << 10n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;

/** Encodes a segment as the 8-byte GDT descriptor the CPU would load it from. */
export function encodeSegmentDescriptor(seg: KvmSegment): Uint8Array {
  const base = Number(BigInt.asUintN(32, seg.base));
  // The descriptor holds a 20-bit limit, in 4 KiB units when g = 1.
  const limit = seg.g ? seg.limit >>> 12 : seg.limit;
  const access = (seg.present << 7) | (seg.dpl << 5) | (seg.s << 4) | seg.type;
  const flags = (seg.g << 3) | (seg.db << 2) | (seg.l << 1) | seg.avl;
  return Uint8Array.from([
    limit & 0xff, (limit >>> 8) & 0xff,
    base & 0xff, (base >>> 8) & 0xff, (base >>> 16) & 0xff,
    access,
    (flags << 4) | ((limit >>> 16) & 0x0f),
    (base >>> 24) & 0xff,
  ]);
}

/** Decodes an 8-byte code/data GDT descriptor into a `struct kvm_segment` (selector given by its slot). */
export function decodeSegmentDescriptor(bytes: Uint8Array, selector: number): KvmSegment {
  const b = bytes;
  const rawLimit = b[0]! | (b[1]! << 8) | ((b[6]! & 0x0f) << 16);
  const g = (b[6]! >>> 7) & 1;
  return {
    base: BigInt((b[2]! | (b[3]! << 8) | (b[4]! << 16) | (b[7]! << 24)) >>> 0),
    limit: g ? ((rawLimit << 12) | 0xfff) >>> 0 : rawLimit,
    selector,
    type: b[5]! & 0x0f,
    s: (b[5]! >>> 4) & 1,
    dpl: (b[5]! >>> 5) & 3,
    present: (b[5]! >>> 7) & 1,
    avl: (b[6]! >>> 4) & 1,
    l: (b[6]! >>> 5) & 1,
    db: (b[6]! >>> 6) & 1,
    g,
    unusable: 0,
  };
}

/**
 * Page tables, GDT and sregs to enter 64-bit mode directly from KVM_SET_SREGS,
 * with no real-mode trampoline. Values follow the KVM selftests
 * (tools/testing/selftests/kvm/lib/x86/processor.c: vcpu_init_sregs,
 * kvm_seg_set_kernel_code_64bit, kvm_seg_set_kernel_data_64bit).
 *
 * The first `mappedGiB` GiB of guest physical memory are identity-mapped
 * (virtual = physical), read/write, with 2 MiB pages: a PDPTE with PS (1 GiB page)
 * is a reserved-bit fault unless the vCPU's CPUID has PDPE1GB, which a vCPU
 * without KVM_SET_CPUID2 lacks. Without CPUID, KVM also assumes MAXPHYADDR = 36,
 * so mappings stay below 64 GiB.
 *
 * No IDT is set up: any exception in the guest ends in a triple fault (KVM_EXIT_SHUTDOWN).
 */
export function longModeSetup(options?: LongModeOptions): LongModeSetup {
  const base = toBigInt('baseGpa', options?.baseGpa ?? 0x10000n);
  if (base < 0n || base % BigInt(PAGE) !== 0n) throw outOfRange('baseGpa', base, 'must be a non-negative multiple of 4096');
  const gib = checkInt('mappedGiB', options?.mappedGiB ?? 8, 1, 512);

  const pml4Gpa = base;
  const pdptGpa = base + BigInt(PAGE);
  const pdGpa = base + 2n * BigInt(PAGE);
  const gdtGpa = pdGpa + BigInt(gib * PAGE);
  const end = gdtGpa + BigInt(PAGE);
  const mapped = BigInt(gib) << 30n;
  if (end > mapped) throw outOfRange('baseGpa', base, `the tables must lie inside the ${gib} GiB they map`);

  const pml4 = new Uint8Array(PAGE);
  const pdpt = new Uint8Array(PAGE);
  const pd = new Uint8Array(gib * PAGE);
  const pml4View = new DataView(pml4.buffer);
  const pdptView = new DataView(pdpt.buffer);
  const pdView = new DataView(pd.buffer);

  pml4View.setBigUint64(0, pdptGpa | PTE_PRESENT | PTE_WRITABLE, true);
  for (let i = 0; i < gib; i++) {
    pdptView.setBigUint64(i * 8, (pdGpa + BigInt(i * PAGE)) | PTE_PRESENT | PTE_WRITABLE, true);
  }
  for (let i = 0; i < gib * 512; i++) {
    pdView.setBigUint64(i * 8, (BigInt(i) << 21n) | PTE_PRESENT | PTE_WRITABLE | PDE_LARGE, true);
  }

  const code: KvmSegment = {
    base: 0n, limit: 0xffffffff, selector: LONG_MODE_CODE_SELECTOR,
    type: 0x0b, // execute/read, accessed
    present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
  };
  const data: KvmSegment = {
    base: 0n, limit: 0xffffffff, selector: LONG_MODE_DATA_SELECTOR,
    type: 0x03, // read/write, accessed
    present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0,
  };
  const gdt = new Uint8Array(3 * 8); // null, code (0x08), data (0x10)
  gdt.set(encodeSegmentDescriptor(code), LONG_MODE_CODE_SELECTOR);
  gdt.set(encodeSegmentDescriptor(data), LONG_MODE_DATA_SELECTOR);

  return {
    memory: [
      { gpa: pml4Gpa, bytes: pml4 },
      { gpa: pdptGpa, bytes: pdpt },
      { gpa: pdGpa, bytes: pd },
      { gpa: gdtGpa, bytes: gdt },
    ],
    sregs: {
      cr0: X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_AM | X86_CR0_PG,
      cr3: pml4Gpa,
      cr4: X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT,
      efer: EFER_LME | EFER_LMA,
      cs: code,
      ds: { ...data },
      es: { ...data },
      fs: { ...data },
      gs: { ...data },
      ss: { ...data },
      gdt: { base: gdtGpa, limit: gdt.length - 1 },
    },
    layout: { pml4: pml4Gpa, pdpt: pdptGpa, pageDirectories: pdGpa, gdt: gdtGpa, end, mappedBytes: mapped },
  };
}

/**
 * Long mode: reads `length` bytes from 64-bit guest address `srcGpa` (identity
 * mapped, so = GPA) one at a time and sends each to `port`, then halts.
 */
export function longReadAndReport(srcGpa: number | bigint, length: number, port: number = DEFAULT_PORT,
  options?: ProgramOptions): GuestProgram {
  const src = checkU64('srcGpa', srcGpa);
  const n = checkInt('length', length, 0, 0xffff_ffff);
  const p = checkPort(port);
  return program(`longReadAndReport(${formatHex(src)}, ${n}, ${formatHex(p)})`, 'long', [
    0x48, 0xbe, ...imm64(src), // movabs rsi, src  ; first byte to read
    0xb9, ...imm32(n), //         mov ecx, length  ; byte count (zero-extends into rcx)
    0xba, ...imm32(p), //         mov edx, port
    0xfc, //                      cld              ; lodsb counts rsi upwards
    0xe3, 0x04, //                jrcxz $+6        ; nothing to read: go to the hlt
    0xac, //                      lodsb            ; <- loop: al = [rsi++] (KVM_EXIT_MMIO if unmapped)
    0xee, //                      out dx, al       ; KVM_EXIT_IO with the byte
    0xe2, 0xfc, //                loop $-4         ; --rcx, back to the lodsb while rcx != 0
    ...HALT_FOREVER,
  ], options);
}

/**
 * Long mode: fills `length` bytes at 64-bit guest address `dstGpa` with `value`
 * (`rep stosb`), sends `value` to `port` as a done marker, then halts.
 */
export function longWritePattern(dstGpa: number | bigint, length: number, value: number, port: number = DEFAULT_PORT,
  options?: ProgramOptions): GuestProgram {
  const dst = checkU64('dstGpa', dstGpa);
  const n = checkInt('length', length, 0, 0xffff_ffff);
  const v = checkByte(value);
  const p = checkPort(port);
  // Position-independent, so the origin does not matter.
  const a = new Assembler();
  a.movabs('rdi', dst); //  first byte to write
  a.mov('ecx', n); //       byte count (zero-extends into rcx)
  a.mov('al', v); //        the fill byte
  a.cld(); //               stosb counts rdi upwards
  a.stosb('rep'); //        [rdi++] = al, rcx times
  a.mov('edx', p);
  a.out('dx', 'al'); //     KVM_EXIT_IO carrying value: the fill is complete
  a.label('halt').hlt().jmp('halt'); // as HALT_FOREVER
  return program(`longWritePattern(${formatHex(dst)}, ${n}, ${formatHex(v)}, ${formatHex(p)})`, 'long', [...a.assemble()], options);
}

/**
 * Long mode: reads one byte at 64-bit guest address `gpa` into al, sends it to
 * `port`, then halts. Aimed at an unmapped GPA (inside the identity map), the read
 * is a KVM_EXIT_MMIO.
 */
export function longTouch(gpa: number | bigint, port: number = DEFAULT_PORT, options?: ProgramOptions): GuestProgram {
  const a = checkU64('gpa', gpa);
  const p = checkPort(port);
  return program(`longTouch(${formatHex(a)}, ${formatHex(p)})`, 'long', [
    0x48, 0xbe, ...imm64(a), // movabs rsi, gpa  ; address to read
    0x8a, 0x06, //              mov al, [rsi]    ; the read (KVM_EXIT_MMIO if unmapped)
    0xba, ...imm32(p), //       mov edx, port
    0xee, //                    out dx, al       ; KVM_EXIT_IO with the byte read
    ...HALT_FOREVER,
  ], options);
}

/**
 * Long mode: `vmcall` with rax = nr, rbx = a0, rcx = a1, rdx = a2, rsi = a3 (the
 * KVM hypercall ABI), then halts. See {@link hypercall} for what KVM does with it.
 * A KVM_EXIT_HYPERCALL from here has KVM_EXIT_HYPERCALL_LONG_MODE in its flags.
 */
export function longHypercall(nr: number | bigint, args: ReadonlyArray<number | bigint> = [],
  options?: HypercallOptions): GuestProgram {
  if (args.length > 4) throw outOfRange('args.length', args.length, 'a KVM hypercall takes at most 4 arguments');
  const n = checkU64('nr', nr);
  const a = [0, 1, 2, 3].map((i) => checkU64(`a${i}`, args[i] ?? 0));
  const code: number[] = [
    0x48, 0xb8, ...imm64(n), //     movabs rax, nr  ; hypercall number
    0x48, 0xbb, ...imm64(a[0]!), // movabs rbx, a0
    0x48, 0xb9, ...imm64(a[1]!), // movabs rcx, a1
    0x48, 0xba, ...imm64(a[2]!), // movabs rdx, a2
    0x48, 0xbe, ...imm64(a[3]!), // movabs rsi, a3
    ...hypercallInstruction(options), // vmcall (or vmmcall) ; KVM_EXIT_HYPERCALL if enabled; result in rax
  ];
  const port = options?.reportPort;
  if (port !== undefined) {
    code.push(
      0xba, ...imm32(checkPort(port)), // mov edx, port
      0xef, //                            out dx, eax  ; KVM_EXIT_IO, 4 bytes: the hypercall's result
    );
  }
  code.push(...HALT_FOREVER);
  const name = `longHypercall(${[n, ...a].map(formatHex).join(', ')}${port === undefined ? '' : `, port ${formatHex(port)}`})`;
  return program(name, 'long', code, options);
}
