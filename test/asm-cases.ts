/**
 * Instruction generators for the assembler tests: each case is one source line for
 * GNU as (Intel syntax) and the same instruction through the Assembler API, drawn
 * from a seeded generator so every run checks the same set.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  type Assembler,
  type Condition,
  type Gpr,
  mem,
  type Mem,
  type OperandSize,
  type Reg16,
  type Reg32,
  type Reg64,
  type Reg8,
  type Scale,
} from '../lib/guest/asm';

/** One instruction (or directive) in both notations. */
export interface Case {
  /** Source line for `as --64` after `.intel_syntax noprefix`. */
  readonly text: string;
  /** The same through the Assembler. */
  emit(a: Assembler): void;
}

/** Whether GNU as and objdump can be run here. */
export const hasGnuAs: boolean = (() => {
  try {
    execFileSync('as', ['--version'], { stdio: 'ignore' });
    execFileSync('objdump', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/** Assembles Intel-syntax lines with GNU as; returns the .text bytes (read back with objdump -s). */
export function gnuAssemble(lines: readonly string[]): Uint8Array {
  const dir = mkdtempSync(path.join(tmpdir(), 'gmem-asm-'));
  try {
    const src = path.join(dir, 'x.s');
    const obj = path.join(dir, 'x.o');
    writeFileSync(src, ['.intel_syntax noprefix', '.text', ...lines, ''].join('\n'));
    execFileSync('as', ['--64', '-o', obj, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    const dump = execFileSync('objdump', ['-s', '-j', '.text', obj], { encoding: 'utf8', maxBuffer: 64 << 20 });
    const bytes: number[] = [];
    for (const line of dump.split('\n')) {
      // " 0010 48c7c034 120000b9 0a000000 48c7c730  H..4..." : address, 4 groups of hex, ASCII.
      const m = /^ ([0-9a-f]{4,}) (.{35})/.exec(line);
      if (!m) continue;
      for (const group of m[2]!.trim().split(/\s+/)) {
        for (let i = 0; i < group.length; i += 2) bytes.push(parseInt(group.slice(i, i + 2), 16));
      }
    }
    return Uint8Array.from(bytes);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** objdump's reading of some bytes, for failure messages. */
export function disassemble(bytes: Uint8Array): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'gmem-asm-'));
  try {
    const bin = path.join(dir, 'x.bin');
    writeFileSync(bin, bytes);
    const out = execFileSync('objdump', ['-D', '-b', 'binary', '-mi386:x86-64', '-M', 'intel', bin], { encoding: 'utf8' });
    return out.split('\n').filter((l) => /^\s+[0-9a-f]+:/.test(l)).join('\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function hexBytes(bytes: ArrayLike<number>): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}

// --- seeded choice -----------------------------------------------------------------------------

/** mulberry32: small, fast, and the same sequence everywhere. */
export class Rand {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

// --- operands ----------------------------------------------------------------------------------

const R64: readonly Reg64[] = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];
const R32: readonly Reg32[] = ['eax', 'ecx', 'edx', 'ebx', 'esp', 'ebp', 'esi', 'edi', 'r8d', 'r9d', 'r10d', 'r11d', 'r12d', 'r13d', 'r14d', 'r15d'];
const R16: readonly Reg16[] = ['ax', 'cx', 'dx', 'bx', 'sp', 'bp', 'si', 'di', 'r8w', 'r9w', 'r10w', 'r11w', 'r12w', 'r13w', 'r14w', 'r15w'];
const R8: readonly Reg8[] = ['al', 'cl', 'dl', 'bl', 'spl', 'bpl', 'sil', 'dil', 'r8b', 'r9b', 'r10b', 'r11b', 'r12b', 'r13b', 'r14b', 'r15b'];
const R8_LEGACY: readonly Reg8[] = ['al', 'cl', 'dl', 'bl', 'ah', 'ch', 'dh', 'bh'];
const BY_BITS = { 8: R8, 16: R16, 32: R32, 64: R64 } as const;
type Bits = 8 | 16 | 32 | 64;
const SIZES: Record<Bits, OperandSize> = { 8: 'byte', 16: 'word', 32: 'dword', 64: 'qword' };

/** Operand generation state: `legacy` keeps to registers encodable without REX (so ah..bh may appear). */
interface Ctx {
  readonly r: Rand;
  readonly legacy: boolean;
}

function reg(c: Ctx, bits: Bits): Gpr {
  if (c.legacy) return bits === 8 ? c.r.pick(R8_LEGACY) : BY_BITS[bits][c.r.int(8)]!;
  return c.r.pick(BY_BITS[bits]);
}

function hexText(v: bigint): string {
  return v < 0n ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`;
}

const DISPS = [0n, 1n, -1n, 8n, 0x7fn, -0x80n, 0x80n, -0x81n, 0x1234n, -0x4000n, 0x7fffffffn, -0x80000000n];

/** A memory operand both ways; `size` adds the `ptr` keyword. */
function memory(c: Ctx, size?: OperandSize): { m: Mem; text: string } {
  const r = c.r;
  const pool = c.legacy ? R64.slice(0, 8) : R64;
  const kind = r.int(10);
  let base: Reg64 | undefined = kind === 0 ? undefined : r.pick(pool);
  // The corner cases: rsp/r12 need a SIB byte, rbp/r13 need a displacement.
  if (kind === 1) base = r.pick(c.legacy ? ['rsp', 'rbp'] as const : ['rsp', 'rbp', 'r12', 'r13'] as const);
  const index: Reg64 | undefined = kind === 0 || r.chance(0.4) ? r.pick(pool.filter((x) => x !== 'rsp')) : undefined;
  const scale: Scale = index ? r.pick([1, 2, 4, 8] as const) : 1;
  let disp = r.chance(0.35) ? 0n : r.pick(DISPS);
  if (base === undefined && index === undefined) disp = BigInt(r.int(0x7fffffff));
  const parts: string[] = [];
  if (base) parts.push(base);
  if (index) parts.push(`${index}*${scale}`);
  let text = parts.join('+');
  if (disp !== 0n || !text) text += disp < 0n ? hexText(disp) : `${text ? '+' : ''}${hexText(disp)}`;
  const ptr = size ? `${size} ptr ` : '';
  const spec = { base, index, scale: index ? scale : undefined, disp, size };
  return { m: mem(spec), text: `${ptr}[${text}]` };
}

/** Interesting immediates of an `opBits` operation held in `immBits`, as GNU as would take them. */
function immediate(r: Rand, opBits: Bits, immBits: number): bigint {
  const candidates = [0n, 1n, -1n, 2n, 0x7fn, 0x80n, -0x80n, -0x81n, 0xffn, 0x100n, 0x7fffn, -0x8000n, 0x8000n, 0xffffn,
    0x12345678n, 0x7fffffffn, -0x80000000n, 0x80000000n, 0xffffffffn, 0x123456789abcdef0n, -(2n ** 63n), 2n ** 64n - 1n];
  const ok = (v: bigint): boolean => {
    const ob = BigInt(opBits);
    if (v < -(1n << (ob - 1n)) || v >= 1n << ob) return false;
    if (immBits >= opBits) return true;
    const s = BigInt.asIntN(opBits, v);
    return s >= -(1n << BigInt(immBits - 1)) && s < 1n << BigInt(immBits - 1);
  };
  for (;;) {
    const v = r.chance(0.3) ? BigInt(r.int(1 << 30)) - (1n << 29n) : r.pick(candidates);
    if (ok(v)) return v;
  }
}

const CONDS: readonly Condition[] = ['o', 'no', 'b', 'c', 'nae', 'ae', 'nb', 'nc', 'e', 'z', 'ne', 'nz', 'be', 'na', 'a', 'nbe',
  's', 'ns', 'p', 'pe', 'np', 'po', 'l', 'nge', 'ge', 'nl', 'le', 'ng', 'g', 'nle'];

type AluName = 'add' | 'or' | 'adc' | 'sbb' | 'and' | 'sub' | 'xor' | 'cmp';
const ALU: readonly AluName[] = ['add', 'or', 'adc', 'sbb', 'and', 'sub', 'xor', 'cmp'];
type ShiftName = 'rol' | 'ror' | 'rcl' | 'rcr' | 'shl' | 'sal' | 'shr' | 'sar';
const SHIFTS: readonly ShiftName[] = ['rol', 'ror', 'rcl', 'rcr', 'shl', 'sal', 'shr', 'sar'];
type UnaryName = 'inc' | 'dec' | 'neg' | 'not' | 'mul' | 'div' | 'idiv' | 'imul';
const UNARY: readonly UnaryName[] = ['inc', 'dec', 'neg', 'not', 'mul', 'div', 'idiv', 'imul'];

// The generators call the API through this loose view: operand types are drawn at
// run time, and the typed overloads are tested at compile time by asm.test.ts.
type Loose = Record<string, (...args: unknown[]) => unknown>;
const call = (a: Assembler, name: string, ...args: unknown[]): void => {
  (a as unknown as Loose)[name]!(...args);
};

function bits(r: Rand, from: readonly Bits[] = [8, 16, 32, 64]): Bits {
  return r.pick(from);
}

/** One random instruction that does not refer to labels. */
export function randomInstruction(r: Rand): Case {
  const c: Ctx = { r, legacy: r.chance(0.15) };
  const b = bits(r, c.legacy ? [8, 16, 32] : [8, 16, 32, 64]);
  const pick = r.int(33);
  switch (pick) {
    case 0: case 1: { // mov / alu reg, reg
      const name = pick === 0 ? 'mov' : r.pick(ALU);
      const [x, y] = [reg(c, b), reg(c, b)];
      return { text: `${name} ${x}, ${y}`, emit: (a) => call(a, name, x, y) };
    }
    case 2: case 3: { // reg, mem / mem, reg
      const name = r.chance(0.3) ? 'mov' : r.pick([...ALU, 'test', 'xchg']);
      const x = reg(c, b);
      const m = memory(c, r.chance(0.5) ? SIZES[b] : undefined);
      if (pick === 2 && name !== 'test' && name !== 'xchg') return { text: `${name} ${x}, ${m.text}`, emit: (a) => call(a, name, x, m.m) };
      return { text: `${name} ${m.text}, ${x}`, emit: (a) => call(a, name, m.m, x) };
    }
    case 4: case 5: { // reg, imm
      const name = pick === 4 ? 'mov' : r.pick([...ALU, 'test']);
      const x = reg(c, b);
      const v = immediate(r, b, name === 'mov' ? (b === 64 ? 64 : b) : b === 64 ? 32 : b);
      return { text: `${name} ${x}, ${hexText(v)}`, emit: (a) => call(a, name, x, v) };
    }
    case 6: { // mem, imm
      const name = r.pick(['mov', ...ALU, 'test']);
      const m = memory(c, SIZES[b]);
      const v = immediate(r, b, b === 64 ? 32 : b);
      return { text: `${name} ${m.text}, ${hexText(v)}`, emit: (a) => call(a, name, m.m, v) };
    }
    case 7: { // movabs
      const x = reg({ r, legacy: false }, 64);
      const v = immediate(r, 64, 64);
      return { text: `movabs ${x}, ${hexText(v)}`, emit: (a) => call(a, 'movabs', x, v) };
    }
    case 8: { // movzx / movsx
      const name = r.pick(['movzx', 'movsx'] as const);
      const from = r.pick([8, 16] as const);
      const to = r.pick(from === 8 ? [16, 32, 64] as const : [32, 64] as const);
      if (c.legacy && to === 64) return randomInstruction(r);
      const x = reg(c, to);
      if (r.chance(0.5)) {
        const y = reg(c, from);
        return { text: `${name} ${x}, ${y}`, emit: (a) => call(a, name, x, y) };
      }
      const m = memory(c, SIZES[from]);
      return { text: `${name} ${x}, ${m.text}`, emit: (a) => call(a, name, x, m.m) };
    }
    case 9: { // movsxd
      const x = reg({ r, legacy: false }, 64);
      const y = r.chance(0.5) ? reg({ r, legacy: false }, 32) : memory({ r, legacy: false }, 'dword');
      const [yt, yv] = typeof y === 'string' ? [y, y] : [y.text, y.m];
      return { text: `movsxd ${x}, ${yt}`, emit: (a) => call(a, 'movsxd', x, yv) };
    }
    case 10: { // lea
      const x = reg(c, bits(r, c.legacy ? [16, 32] : [16, 32, 64]));
      const m = memory(c);
      return { text: `lea ${x}, ${m.text}`, emit: (a) => call(a, 'lea', x, m.m) };
    }
    case 11: { // unary
      const name = r.pick(UNARY);
      if (r.chance(0.5)) {
        const x = reg(c, b);
        return { text: `${name} ${x}`, emit: (a) => call(a, name, x) };
      }
      const m = memory(c, SIZES[b]);
      return { text: `${name} ${m.text}`, emit: (a) => call(a, name, m.m) };
    }
    case 12: { // imul r, r/m (, imm)
      const w = bits(r, c.legacy ? [16, 32] : [16, 32, 64]);
      const x = reg(c, w);
      const src = r.chance(0.5) ? { v: reg(c, w) as Gpr | Mem, t: '' } : (() => { const m = memory(c, r.chance(0.5) ? SIZES[w] : undefined); return { v: m.m as Gpr | Mem, t: m.text }; })();
      const st = typeof src.v === 'string' ? src.v : src.t;
      const form = r.int(3);
      if (form === 0) return { text: `imul ${x}, ${st}`, emit: (a) => call(a, 'imul', x, src.v) };
      const v = immediate(r, w, w === 64 ? 32 : w);
      if (form === 1) return { text: `imul ${x}, ${st}, ${hexText(v)}`, emit: (a) => call(a, 'imul', x, src.v, v) };
      return { text: `imul ${x}, ${hexText(v)}`, emit: (a) => call(a, 'imul', x, v) };
    }
    case 13: { // shifts
      const name = r.pick(SHIFTS);
      const target = r.chance(0.5) ? { v: reg(c, b) as Gpr | Mem, t: '' } : (() => { const m = memory(c, SIZES[b]); return { v: m.m as Gpr | Mem, t: m.text }; })();
      const tt = typeof target.v === 'string' ? target.v : target.t;
      const k = r.int(4);
      if (k === 0) return { text: `${name} ${tt}, cl`, emit: (a) => call(a, name, target.v, 'cl') };
      const n = k === 1 ? 1 : r.int(b === 64 ? 64 : 32);
      return { text: `${name} ${tt}, ${n}`, emit: (a) => call(a, name, target.v, n) };
    }
    case 14: { // push / pop
      const name = r.pick(['push', 'pop'] as const);
      const k = r.int(4);
      if (k === 0) {
        const x = reg(c, 16);
        return { text: `${name} ${x}`, emit: (a) => call(a, name, x) };
      }
      if (k === 1) {
        const m = memory(c, r.pick([undefined, 'qword', 'word'] as const));
        return { text: `${name} ${m.m.size ? m.text : `qword ptr ${m.text}`}`, emit: (a) => call(a, name, m.m) };
      }
      if (k === 2 && name === 'push') {
        const v = immediate(r, 64, 32);
        return { text: `push ${hexText(v)}`, emit: (a) => call(a, 'push', v) };
      }
      const x = reg({ r, legacy: false }, 64);
      return { text: `${name} ${x}`, emit: (a) => call(a, name, x) };
    }
    case 15: { // xchg, cmpxchg, xadd reg forms
      const name = r.pick(['xchg', 'cmpxchg', 'xadd'] as const);
      const [x, y] = [reg(c, b), reg(c, b)];
      return { text: `${name} ${x}, ${y}`, emit: (a) => call(a, name, x, y) };
    }
    case 16: { // cmpxchg, xadd memory forms, maybe locked
      const name = r.pick(['cmpxchg', 'xadd'] as const);
      const m = memory(c, r.chance(0.5) ? SIZES[b] : undefined);
      const x = reg(c, b);
      const lock = r.chance(0.5);
      return {
        text: `${lock ? 'lock ' : ''}${name} ${m.text}, ${x}`,
        emit: (a) => { if (lock) a.lock(); call(a, name, m.m, x); },
      };
    }
    case 17: { // bswap
      const x = reg({ r, legacy: false }, r.pick([32, 64] as const));
      return { text: `bswap ${x}`, emit: (a) => call(a, 'bswap', x) };
    }
    case 18: { // cmovcc / setcc
      const cond = r.pick(CONDS);
      if (r.chance(0.5)) {
        const w = bits(r, c.legacy ? [16, 32] : [16, 32, 64]);
        const x = reg(c, w);
        const s = r.chance(0.5) ? { v: reg(c, w) as Gpr | Mem, t: '' } : (() => { const m = memory(c); return { v: m.m as Gpr | Mem, t: m.text }; })();
        return { text: `cmov${cond} ${x}, ${typeof s.v === 'string' ? s.v : s.t}`, emit: (a) => a.cmovcc(cond, x as Reg64, s.v as Reg64) };
      }
      if (r.chance(0.5)) {
        const x = reg(c, 8) as Reg8;
        return { text: `set${cond} ${x}`, emit: (a) => a.setcc(cond, x) };
      }
      const m = memory(c, 'byte');
      return { text: `set${cond} ${m.text}`, emit: (a) => a.setcc(cond, m.m) };
    }
    case 19: { // in / out
      const acc = r.pick(['al', 'ax', 'eax'] as const);
      const port = r.chance(0.5) ? 'dx' as const : r.int(256);
      if (r.chance(0.5)) return { text: `in ${acc}, ${port}`, emit: (a) => a.in(acc, port) };
      return { text: `out ${port}, ${acc}`, emit: (a) => a.out(port, acc) };
    }
    case 20: { // string instructions
      const [base, cond] = r.pick([['movs', false], ['stos', false], ['lods', false], ['cmps', true], ['scas', true], ['ins', false], ['outs', false]] as const);
      const widths = base === 'ins' || base === 'outs' ? ['b', 'w', 'd'] : ['b', 'w', 'd', 'q'];
      const name = `${base}${r.pick(widths)}`;
      const prefix = r.chance(0.4) ? undefined : cond ? r.pick(['rep', 'repe', 'repz', 'repne', 'repnz']) : 'rep';
      return { text: `${prefix ? `${prefix} ` : ''}${name}`, emit: (a) => call(a, name, prefix) };
    }
    case 21: { // no operands
      const name = r.pick(['hlt', 'nop', 'pause', 'cli', 'sti', 'cld', 'std', 'clc', 'stc', 'cmc', 'int3', 'int1', 'iretq', 'ud2',
        'vmcall', 'vmmcall', 'cpuid', 'rdmsr', 'wrmsr', 'rdtsc', 'rdtscp', 'wbinvd', 'mfence', 'lfence', 'sfence', 'cdq', 'cqo',
        'cdqe', 'pushfq', 'popfq', 'leave', 'ret']);
      return { text: name, emit: (a) => call(a, name) };
    }
    case 22: { // int n, ret n
      if (r.chance(0.5)) {
        const n = r.pick([0, 1, 2, 4, 0x20, 0x80, 0xff]);
        return { text: `int ${n}`, emit: (a) => a.int(n) };
      }
      const n = r.pick([0, 8, 0x10, 0xffff]);
      return { text: `ret ${n}`, emit: (a) => a.ret(n) };
    }
    case 23: { // descriptor tables, invlpg
      const name = r.pick(['lgdt', 'lidt', 'sgdt', 'sidt', 'invlpg']);
      const m = memory(c);
      return { text: `${name} ${m.text}`, emit: (a) => call(a, name, m.m) };
    }
    case 24: { // control and debug registers
      const sys = r.chance(0.5) ? r.pick(['cr0', 'cr2', 'cr3', 'cr4', 'cr8']) : `dr${r.int(8)}`;
      const x = reg({ r, legacy: false }, 64);
      if (r.chance(0.5)) return { text: `mov ${sys}, ${x}`, emit: (a) => call(a, 'mov', sys, x) };
      return { text: `mov ${x}, ${sys}`, emit: (a) => call(a, 'mov', x, sys) };
    }
    case 25: { // indirect jmp / call
      const name = r.pick(['jmp', 'call']);
      if (r.chance(0.5)) {
        const x = reg({ r, legacy: false }, 64);
        return { text: `${name} ${x}`, emit: (a) => call(a, name, x) };
      }
      const m = memory(c, r.chance(0.5) ? 'qword' : undefined);
      return { text: `${name} ${m.m.size ? m.text : `qword ptr ${m.text}`}`, emit: (a) => call(a, name, m.m) };
    }
    case 26: { // mov with the accumulator and 8-bit registers that need REX
      const x = r.pick(['spl', 'bpl', 'sil', 'dil'] as const);
      const y = r.pick(R8.filter((n) => n !== x));
      return { text: `mov ${x}, ${y}`, emit: (a) => a.mov(x, y) };
    }
    case 27: { // test reg, reg
      const [x, y] = [reg(c, b), reg(c, b)];
      return { text: `test ${x}, ${y}`, emit: (a) => call(a, 'test', x, y) };
    }
    case 28: { // xchg with the accumulator (short forms)
      const w = bits(r, [16, 32, 64]);
      const acc = BY_BITS[w][0]!;
      const x = r.pick(BY_BITS[w]);
      if (r.chance(0.5)) return { text: `xchg ${acc}, ${x}`, emit: (a) => call(a, 'xchg', acc, x) };
      return { text: `xchg ${x}, ${acc}`, emit: (a) => call(a, 'xchg', x, acc) };
    }
    case 29: { // mov r64, imm: sign-extended imm32 or movabs
      const x = reg({ r, legacy: false }, 64);
      const v = immediate(r, 64, 64);
      return { text: `mov ${x}, ${hexText(v)}`, emit: (a) => call(a, 'mov', x, v) };
    }
    case 30: { // data
      const w = r.pick([1, 2, 4, 8] as const);
      const v = BigInt.asUintN(w * 8, BigInt(r.int(1 << 30)) * 0x10001n);
      const directive = { 1: '.byte', 2: '.short', 4: '.long', 8: '.quad' }[w];
      const method = { 1: 'u8', 2: 'u16', 4: 'u32', 8: 'u64' }[w];
      return { text: `${directive} ${hexText(v)}`, emit: (a) => call(a, method, v) };
    }
    case 31: { // RIP-relative with a raw displacement
      const disp = r.pick([0n, 8n, -8n, 0x1000n, -0x80000000n]);
      const x = reg({ r, legacy: false }, 64);
      return { text: `lea ${x}, [rip${disp < 0n ? '' : '+'}${hexText(disp)}]`, emit: (a) => a.lea(x as Reg64, mem('rip', disp)) };
    }
    default: { // ALU with the accumulator and an immediate
      const name = r.pick([...ALU, 'test']);
      const acc = BY_BITS[b][0]!;
      const v = immediate(r, b, b === 64 ? 32 : b);
      return { text: `${name} ${acc}, ${hexText(v)}`, emit: (a) => call(a, name, acc, v) };
    }
  }
}

/**
 * A program of labels, branches to them (forward and backward, some just beyond
 * the short range) and RIP-relative references, with other instructions between;
 * with `align`, also `.balign 16` here and there.
 */
export function randomBranchProgram(r: Rand, labels: number, options: { align: boolean }): Case[] {
  const out: Case[] = [];
  const name = (i: number): string => `L${i}`;
  for (let i = 0; i < labels; i++) {
    out.push({ text: `${name(i)}:`, emit: (a) => a.label(name(i)) });
    // loop, loope, loopne and jrcxz reach only -128..127: target the label just placed.
    if (r.chance(0.2)) {
      const insn = r.pick(['loop', 'loope', 'loopne', 'jrcxz'] as const);
      const here = name(i);
      out.push({ text: 'nop', emit: (a) => a.nop() });
      out.push({ text: `${insn} ${here}`, emit: (a) => a[insn](here) });
    }
    const n = 2 + r.int(40);
    for (let k = 0; k < n; k++) {
      const roll = r.int(12);
      const to = name(r.int(labels));
      if (roll === 0) {
        const cond = r.pick(CONDS);
        out.push({ text: `j${cond} ${to}`, emit: (a) => a.jcc(cond, to) });
      } else if (roll === 1) {
        out.push({ text: `jmp ${to}`, emit: (a) => a.jmp(to) });
      } else if (roll === 2 && r.chance(0.3)) {
        out.push({ text: `call ${to}`, emit: (a) => a.call(to) });
      } else if (roll === 3 && r.chance(0.3)) {
        const x = reg({ r, legacy: false }, 64) as Reg64;
        out.push({ text: `lea ${x}, [rip+${to}]`, emit: (a) => a.lea(x, mem.rip(to)) });
      } else if (roll === 4 && r.chance(0.3)) {
        // RIP-relative with an immediate after the displacement.
        const v = BigInt(r.int(1 << 20));
        out.push({ text: `mov dword ptr [rip+${to}], ${hexText(v)}`, emit: (a) => a.mov(mem.dword({ rip: to }), v) });
      } else if (roll === 5 && options.align && r.chance(0.1)) {
        out.push({ text: '.balign 16, 0xcc', emit: (a) => a.align(16, 0xcc) });
      } else {
        out.push(randomInstruction(r));
      }
    }
  }
  return out;
}

/**
 * Compares the Assembler's bytes with GNU as's for `cases`; returns a description
 * of the first mismatch. With `pin`, each relaxable jump is given to GNU as with the
 * displacement size the Assembler chose (`{disp8}`/`{disp32}`): GNU as then checks
 * the encodings and displacements of that layout, which alignment may make differ
 * from the one its own relaxation would pick (both valid).
 */
export function compareWithGnuAs(cases: readonly Case[], build: () => Assembler, pin = false): string | undefined {
  const a = build();
  // Labels emit nothing: they only mark where each case starts, for the report.
  cases.forEach((c, i) => {
    a.label(`case.${i}`);
    c.emit(a);
  });
  const ours = a.assemble();
  const starts = cases.map((_, i) => a.offsetOf(`case.${i}`));
  const length = (i: number): number => (i + 1 < starts.length ? starts[i + 1]! : ours.length) - starts[i]!;
  const texts = cases.map((c, i) => {
    if (!pin || !/^j[a-z]+ L\d+$/.test(c.text)) return c.text;
    return `${length(i) === 2 ? '{disp8}' : '{disp32}'} ${c.text}`;
  });
  const theirs = gnuAssemble(texts);
  const n = Math.min(ours.length, theirs.length);
  let diff = 0;
  while (diff < n && ours[diff] === theirs[diff]) diff++;
  if (diff === n && ours.length === theirs.length) return undefined;
  let i = starts.length - 1;
  while (i > 0 && starts[i]! > diff) i--;
  const from = starts[i]!;
  const to = from + Math.max(length(i), 1);
  return `first difference at byte ${diff}, in case ${i}: '${texts[i]}'\n`
    + `  ours:   ${hexBytes(ours.subarray(from, to))}\n`
    + `  GNU as: ${hexBytes(theirs.subarray(from, to + 4))}\n`
    + `  (lengths: ours ${ours.length}, GNU as ${theirs.length})\n`
    + `objdump reads ours as:\n${disassemble(ours.subarray(from, to))}\n`
    + `and GNU as's as:\n${disassemble(theirs.subarray(from, to + 4))}`;
}
