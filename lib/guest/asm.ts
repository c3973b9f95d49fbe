/**
 * A small x86-64 assembler for 64-bit guest code, so that tests and VMM prototypes
 * can write guests as instructions instead of byte arrays, with no external
 * assembler at run time.
 *
 * Operands follow Intel order (destination first). Registers are their names
 * (`'rax'`, `'r9d'`, `'sil'`), immediates are numbers, bigints or lazily resolved
 * {@link AsmValue}s, memory operands come from {@link mem}, and branch targets are
 * label names. Encodings are those GNU as (`as --64`, no `-O`) chooses for the same
 * Intel-syntax source; the one deliberate difference is `int(3)`, which stays
 * `CD 03` (GNU as turns `int 3` into `int3`, `CC`).
 *
 * Every argument is checked when the instruction is added; what depends on label
 * positions (branch distances, label addresses used as immediates) is checked by
 * {@link Assembler.assemble}. Errors name the instruction, the operand and the rule:
 * - `TypeError` `ERR_INVALID_ARG_TYPE`: an operand of the wrong JavaScript type.
 * - `TypeError` `ERR_INVALID_ARG_VALUE`: an unknown register, prefix or condition
 *   name, or a bad label name.
 * - `TypeError` `ERR_INVALID_OPERANDS`: an operand kind or combination the
 *   instruction has no encoding for (`mov [m], [m]`, `ah` with a REX prefix, ...).
 * - `TypeError` `ERR_OPERAND_SIZE`: operand sizes disagree, or a memory operand lacks
 *   the size an immediate operand needs.
 * - `RangeError` `ERR_OUT_OF_RANGE`: an immediate, displacement, port, count,
 *   alignment or branch distance beyond what the encoding holds.
 * - `TypeError` `ERR_DUPLICATE_LABEL`, `RangeError` `ERR_UNDEFINED_LABEL`.
 *
 * @example
 * const a = new Assembler({ origin: 0x1000n });
 * a.mov('rdi', a.addressOf('buffer'));
 * a.mov('ecx', 16);
 * a.label('fill');
 * a.mov(mem.byte('rdi'), 0x5a);
 * a.inc('rdi');
 * a.dec('ecx');
 * a.jnz('fill');
 * a.mov('dx', 0x3f8).out('dx', 'al').hlt();
 * a.align(8).label('buffer').space(16);
 * const code = a.assemble();
 *
 * @module
 */

import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import type { GuestProgram } from './programs';

// --- registers ---------------------------------------------------------------------------------

const R64 = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const;
const R32 = ['eax', 'ecx', 'edx', 'ebx', 'esp', 'ebp', 'esi', 'edi', 'r8d', 'r9d', 'r10d', 'r11d', 'r12d', 'r13d', 'r14d', 'r15d'] as const;
const R16 = ['ax', 'cx', 'dx', 'bx', 'sp', 'bp', 'si', 'di', 'r8w', 'r9w', 'r10w', 'r11w', 'r12w', 'r13w', 'r14w', 'r15w'] as const;
const R8 = ['al', 'cl', 'dl', 'bl', 'spl', 'bpl', 'sil', 'dil', 'r8b', 'r9b', 'r10b', 'r11b', 'r12b', 'r13b', 'r14b', 'r15b'] as const;
const R8_HIGH = ['ah', 'ch', 'dh', 'bh'] as const;
const CREGS = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8'] as const;
const DREGS = ['dr0', 'dr1', 'dr2', 'dr3', 'dr4', 'dr5', 'dr6', 'dr7'] as const;

/** A 64-bit general-purpose register. */
export type Reg64 = (typeof R64)[number];
/** A 32-bit general-purpose register (writing one zero-extends into the 64-bit register). */
export type Reg32 = (typeof R32)[number];
/** A 16-bit general-purpose register. */
export type Reg16 = (typeof R16)[number];
/**
 * An 8-bit general-purpose register. `spl`, `bpl`, `sil`, `dil` and `r8b`–`r15b`
 * need a REX prefix; `ah`, `ch`, `dh`, `bh` exist only in instructions without one.
 */
export type Reg8 = (typeof R8)[number] | (typeof R8_HIGH)[number];
/** Any general-purpose register. */
export type Gpr = Reg8 | Reg16 | Reg32 | Reg64;
/** A control register `mov` can read or write (CR1, CR5–CR7 do not exist). */
export type ControlRegister = (typeof CREGS)[number];
/** A debug register `mov` can read or write. */
export type DebugRegister = (typeof DREGS)[number];
/** The size of a memory operand: 8, 16, 32 or 64 bits. */
export type OperandSize = 'byte' | 'word' | 'dword' | 'qword';
/** Index scale of a memory operand. */
export type Scale = 1 | 2 | 4 | 8;

/** Registers of the same size as `R`: the operand types that may pair with it. */
export type SameSize<R extends Gpr> = R extends Reg64 ? Reg64 : R extends Reg32 ? Reg32 : R extends Reg16 ? Reg16 : Reg8;

type Bits = 8 | 16 | 32 | 64;

interface RegInfo {
  readonly name: string;
  /** Register number 0..15 (4..7 for ah..bh, which share numbers with spl..dil). */
  readonly num: number;
  readonly bits: Bits;
  /** spl, bpl, sil, dil: only reachable with a REX prefix. */
  readonly rexOnly: boolean;
  /** ah, ch, dh, bh: only reachable without one. */
  readonly high: boolean;
}

const GPRS = new Map<string, RegInfo>();
for (const [names, bits] of [[R64, 64], [R32, 32], [R16, 16], [R8, 8]] as const) {
  names.forEach((name, num) => GPRS.set(name, { name, num, bits, rexOnly: bits === 8 && num >= 4 && num < 8, high: false }));
}
R8_HIGH.forEach((name, i) => GPRS.set(name, { name, num: 4 + i, bits: 8, rexOnly: false, high: true }));
const CREG_NUM = new Map<string, number>(CREGS.map((n) => [n, Number(n.slice(2))]));
const DREG_NUM = new Map<string, number>(DREGS.map((n) => [n, Number(n.slice(2))]));

const SIZE_BITS: Record<OperandSize, Bits> = { byte: 8, word: 16, dword: 32, qword: 64 };

/** Whether `name` is a register name of any kind (such names cannot be labels). */
function isRegisterName(name: string): boolean {
  return GPRS.has(name) || CREG_NUM.has(name) || DREG_NUM.has(name) || name === 'rip';
}

// --- numbers -----------------------------------------------------------------------------------

function hex(v: bigint): string {
  return v < 0n ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`;
}

function describe(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'string') return `'${value}'`;
  if (typeof value === 'number') return String(value);
  if (value instanceof Mem || value instanceof AsmValue) return value.toString();
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return `a value of type ${typeof value}`;
}

/**
 * Whether `v`, as an `opBits` operand, is what an `immBits` immediate sign-extended
 * to `opBits` gives. A value counts as an `opBits` operand when it is one read
 * either signed or unsigned: `0xff` and `-1` are both the byte `ff`.
 */
function fits(v: bigint, opBits: number, immBits: number): boolean {
  const ob = BigInt(opBits);
  if (v < -(1n << (ob - 1n)) || v >= 1n << ob) return false;
  if (immBits >= opBits) return true;
  const s = BigInt.asIntN(opBits, v);
  const ib = BigInt(immBits - 1);
  return s >= -(1n << ib) && s < 1n << ib;
}

/** The rule `fits` checks, in words, for messages. */
function fitRule(opBits: number, immBits: number): string {
  const ib = BigInt(immBits);
  const ob = BigInt(opBits);
  if (immBits >= opBits) return `must fit in ${opBits} bits: [${hex(-(1n << (ob - 1n)))}, ${hex((1n << ob) - 1n)}]`;
  return `must be a ${immBits}-bit value sign-extended to ${opBits} bits: [${hex(-(1n << (ib - 1n)))}, ${hex((1n << (ib - 1n)) - 1n)}]`
    + ` (or the same values as unsigned ${opBits}-bit numbers)`;
}

function le(v: bigint, bytes: number): number[] {
  const out: number[] = [];
  let n = BigInt.asUintN(bytes * 8, v);
  for (let i = 0; i < bytes; i++) {
    out.push(Number(n & 0xffn));
    n >>= 8n;
  }
  return out;
}

const s8 = (v: bigint): boolean => v >= -128n && v <= 127n;
const s32 = (v: bigint): boolean => v >= -(1n << 31n) && v < 1n << 31n;

function outOfRange(message: string): ArgumentRangeError {
  return new ArgumentRangeError('ERR_OUT_OF_RANGE', message);
}

/** An exact integer from a number or bigint, or undefined for anything else. */
function integer(value: unknown): bigint | undefined {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
  return undefined;
}

// --- lazily resolved values --------------------------------------------------------------------

/** What values are computed from: the origin and the label offsets of a layout. */
interface Env {
  readonly origin: bigint;
  /** Offset of `label` from the start of the code. */
  offset(label: string): number;
}

/**
 * An integer that depends on where labels end up, such as a label's address: usable
 * wherever an immediate, a displacement or a data value is, and resolved by
 * {@link Assembler.assemble}. Get one from {@link Assembler.addressOf} or
 * {@link Assembler.distance}; combine with {@link AsmValue.plus} and friends (for
 * example to split a handler address into the fields of an IDT gate).
 */
export class AsmValue {
  /** The assembler whose labels this value refers to. @internal */
  readonly owner: Assembler;
  /** Labels the value refers to, checked to exist at assembly. @internal */
  readonly labels: readonly string[];
  /** Computes the value from label offsets. @internal */
  readonly evaluate: (env: Env) => bigint;
  readonly #text: string;

  /** @internal */
  constructor(owner: Assembler, labels: readonly string[], evaluate: (env: Env) => bigint, text: string) {
    this.owner = owner;
    this.labels = labels;
    this.evaluate = evaluate;
    this.#text = text;
  }

  /** This value plus `other` (an integer or another value of the same assembler). */
  plus(other: number | bigint | AsmValue): AsmValue {
    return this.#combine('plus', other, (a, b) => a + b, '+');
  }

  /** This value minus `other` (an integer or another value of the same assembler). */
  minus(other: number | bigint | AsmValue): AsmValue {
    return this.#combine('minus', other, (a, b) => a - b, '-');
  }

  /** This value shifted right by `bits` (0..63), e.g. the high half of an address. */
  shiftRight(bits: number): AsmValue {
    const n = integer(bits);
    if (n === undefined) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `AsmValue.shiftRight: bits must be an integer, got ${describe(bits)}`);
    if (n < 0n || n > 63n) throw outOfRange(`AsmValue.shiftRight: bits ${n} must be in [0, 63]`);
    const ev = this.evaluate;
    return new AsmValue(this.owner, this.labels, (env) => ev(env) >> n, `(${this.#text} >> ${n})`);
  }

  /** This value AND `mask` (a non-negative integer), e.g. the low 16 bits of an address. */
  and(mask: number | bigint): AsmValue {
    const m = integer(mask);
    if (m === undefined) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `AsmValue.and: mask must be an integer, got ${describe(mask)}`);
    if (m < 0n) throw outOfRange(`AsmValue.and: mask ${hex(m)} must not be negative`);
    const ev = this.evaluate;
    return new AsmValue(this.owner, this.labels, (env) => BigInt.asUintN(64, ev(env)) & m, `(${this.#text} & ${hex(m)})`);
  }

  /** The expression, as it appears in error messages: `addressOf('buffer')+0x8`. */
  toString(): string {
    return this.#text;
  }

  #combine(what: string, other: number | bigint | AsmValue, op: (a: bigint, b: bigint) => bigint, sign: string): AsmValue {
    const ev = this.evaluate;
    if (other instanceof AsmValue) {
      if (other.owner !== this.owner) {
        throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `AsmValue.${what}: ${other} belongs to another Assembler`);
      }
      const ov = other.evaluate;
      return new AsmValue(this.owner, [...this.labels, ...other.labels], (env) => op(ev(env), ov(env)), `${this.#text}${sign}${other}`);
    }
    const n = integer(other);
    if (n === undefined) {
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE',
        `AsmValue.${what}: operand must be an integer number, a bigint or an AsmValue, got ${describe(other)}`);
    }
    return new AsmValue(this.owner, this.labels, (env) => op(ev(env), n), `${this.#text}${sign}${hex(n)}`);
  }
}

/** An immediate operand: an integer, or a value resolved at assembly. */
export type Immediate = number | bigint | AsmValue;
/** A memory displacement: an integer that fits in 32 bits sign-extended, or a value resolved at assembly. */
export type Displacement = number | bigint | AsmValue;
/**
 * Where a branch goes: a label name, or an absolute address (an integer, or an
 * {@link AsmValue}) reached relative to the assembler's origin.
 */
export type Target = string | number | bigint | AsmValue;

// --- memory operands ---------------------------------------------------------------------------

/** A memory operand described field by field, for {@link mem}. */
export interface MemSpec {
  /** Base register. Omit for `[index*scale + disp]` or an absolute `[disp]`. */
  base?: Reg64 | undefined;
  /** Index register (any 64-bit register but rsp). */
  index?: Reg64 | undefined;
  /** Index scale; default 1. Only with `index`. */
  scale?: Scale | undefined;
  /** Displacement; default 0. An absolute `[disp]` is sign-extended from 32 bits. */
  disp?: Displacement | undefined;
  /**
   * RIP-relative operand pointing at a label (by name) or at an absolute address;
   * excludes `base`, `index` and `disp`. `mem('rip', disp)` gives a raw RIP displacement.
   */
  rip?: Target | undefined;
  /** Operand size, needed where no register operand implies it (with an immediate, `movzx`, `inc`...). */
  size?: OperandSize | undefined;
}

/**
 * A memory operand: `[base + index*scale + disp]`, or RIP-relative. Make one with
 * {@link mem}; instances are immutable.
 */
export class Mem {
  /** Base register, `'rip'` for RIP-relative, or undefined. */
  readonly base: Reg64 | 'rip' | undefined;
  /** Index register, or undefined. */
  readonly index: Reg64 | undefined;
  /** Index scale (1 without an index). */
  readonly scale: Scale;
  /** Displacement (for `mem.rip(target)`, 0: the CPU's displacement is computed from the target). */
  readonly disp: bigint | AsmValue;
  /** For a RIP-relative operand made from a target: the label or address it points at. */
  readonly target: string | bigint | AsmValue | undefined;
  /** Operand size, if given. */
  readonly size: OperandSize | undefined;

  /** @internal */
  constructor(fields: {
    base: Reg64 | 'rip' | undefined; index: Reg64 | undefined; scale: Scale; disp: bigint | AsmValue;
    target: string | bigint | AsmValue | undefined; size: OperandSize | undefined;
  }) {
    this.base = fields.base;
    this.index = fields.index;
    this.scale = fields.scale;
    this.disp = fields.disp;
    this.target = fields.target;
    this.size = fields.size;
    Object.freeze(this);
  }

  /** Intel syntax, e.g. `qword [rdi + rcx*8 + 0x10]`. */
  toString(): string {
    const size = this.size ? `${this.size} ` : '';
    if (this.target !== undefined) {
      const t = typeof this.target === 'string' ? `'${this.target}'` : typeof this.target === 'bigint' ? hex(this.target) : String(this.target);
      return `${size}[rip -> ${t}]`;
    }
    const parts: string[] = [];
    if (this.base) parts.push(this.base);
    if (this.index) parts.push(this.scale === 1 ? this.index : `${this.index}*${this.scale}`);
    const d = this.disp;
    let text = parts.join(' + ');
    if (typeof d !== 'bigint') text = text ? `${text} + ${d}` : String(d);
    else if (d !== 0n || !text) text = text ? `${text} ${d < 0n ? '-' : '+'} ${hex(d < 0n ? -d : d)}` : hex(d);
    return `${size}[${text}]`;
  }
}

/** Builds memory operands; the call forms of {@link mem}. */
export interface MemBuilder {
  /** `[base + disp]`; `'rip'` as base gives `[rip + disp]`. */
  (base: Reg64 | 'rip', disp?: Displacement): Mem;
  /** `[base + index*scale + disp]`. */
  (base: Reg64, index: Reg64, scale?: Scale, disp?: Displacement): Mem;
  /** Any form, field by field; or a copy of an existing operand (with this builder's size). */
  (spec: MemSpec | Mem): Mem;
}

/** {@link mem}: unsized operands when called, sized ones through its properties. */
export interface MemFactory extends MemBuilder {
  /** An 8-bit memory operand: `mem.byte('rdi', 8)` is `byte [rdi + 8]`. */
  readonly byte: MemBuilder;
  /** A 16-bit memory operand. */
  readonly word: MemBuilder;
  /** A 32-bit memory operand. */
  readonly dword: MemBuilder;
  /** A 64-bit memory operand. */
  readonly qword: MemBuilder;
  /**
   * A RIP-relative operand at a label or an absolute address (the displacement from
   * the next instruction is computed at assembly); `size` optional.
   */
  rip(target: Target, size?: OperandSize): Mem;
}

function memError(message: string): ArgumentTypeError {
  return new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `mem: ${message}`);
}

function checkAddrReg(what: string, reg: unknown): Reg64 {
  if (typeof reg !== 'string') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `mem: ${what} must be a register name, got ${describe(reg)}`);
  const info = GPRS.get(reg);
  if (!info) throw memError(`${what} '${reg}' is not a register`);
  if (info.bits !== 64) throw memError(`${what} '${reg}' is a ${info.bits}-bit register; 64-bit code addresses memory with 64-bit registers`);
  return reg as Reg64;
}

function checkDisp(disp: unknown): bigint | AsmValue {
  if (disp instanceof AsmValue) return disp;
  const d = integer(disp);
  if (d === undefined) {
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `mem: disp must be an integer number, a bigint or an AsmValue, got ${describe(disp)}`);
  }
  if (!fits(d, 64, 32)) throw outOfRange(`mem: disp ${hex(d)} ${fitRule(64, 32)}`);
  return BigInt.asIntN(64, d);
}

function checkTarget(what: string, target: unknown): string | bigint | AsmValue {
  if (target instanceof AsmValue) return target;
  if (typeof target === 'string') {
    checkLabelName(what, target);
    return target;
  }
  const t = integer(target);
  if (t === undefined) {
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${what} must be a label name, an address or an AsmValue, got ${describe(target)}`);
  }
  if (t < 0n || t >= 1n << 64n) throw outOfRange(`${what} ${hex(t)} is not a 64-bit address`);
  return t;
}

function checkSize(what: string, size: unknown): OperandSize | undefined {
  if (size === undefined) return undefined;
  if (typeof size !== 'string' || !Object.hasOwn(SIZE_BITS, size)) {
    throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${what} ${describe(size)} must be 'byte', 'word', 'dword' or 'qword'`);
  }
  return size as OperandSize;
}

function buildMem(size: OperandSize | undefined, args: unknown[]): Mem {
  const [first] = args;
  if (first instanceof Mem) {
    if (args.length > 1) throw memError('an existing operand takes no further arguments');
    return new Mem({ ...first, size: size ?? first.size });
  }
  if (typeof first === 'object' && first !== null) {
    if (args.length > 1) throw memError('a MemSpec takes no further arguments');
    const spec = first as MemSpec;
    const known = new Set(['base', 'index', 'scale', 'disp', 'rip', 'size']);
    for (const key of Object.keys(spec)) if (!known.has(key)) throw memError(`unknown field '${key}' (MemSpec has ${[...known].join(', ')})`);
    const sz = size ?? checkSize('mem: size', spec.size);
    if (spec.rip !== undefined) {
      if (spec.base !== undefined || spec.index !== undefined || spec.disp !== undefined || spec.scale !== undefined) {
        throw memError('rip excludes base, index, scale and disp');
      }
      return new Mem({ base: 'rip', index: undefined, scale: 1, disp: 0n, target: checkTarget('mem: rip', spec.rip), size: sz });
    }
    return makeMem(spec.base, spec.index, spec.scale, spec.disp ?? 0, sz);
  }
  if (typeof first !== 'string') {
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `mem: first argument must be a base register, a MemSpec or a Mem, got ${describe(first)}`);
  }
  if (args.length > 4) throw memError(`takes at most 4 arguments (base, index, scale, disp), got ${args.length}`);
  if (typeof args[1] === 'string') return makeMem(first, args[1], args[2], args[3] ?? 0, size);
  if (args.length > 2) throw memError('a third argument (scale) needs an index register as the second');
  return makeMem(first, undefined, undefined, args[1] ?? 0, size);
}

function makeMem(base: unknown, index: unknown, scale: unknown, disp: unknown, size: OperandSize | undefined): Mem {
  const d = checkDisp(disp);
  if (base === 'rip') {
    if (index !== undefined) throw memError('a RIP-relative operand has no index');
    return new Mem({ base: 'rip', index: undefined, scale: 1, disp: d, target: undefined, size });
  }
  const b = base === undefined ? undefined : checkAddrReg('base', base);
  const i = index === undefined ? undefined : checkAddrReg('index', index);
  if (i === 'rsp') throw memError("index 'rsp' cannot be an index register (its index encoding means no index)");
  if (scale !== undefined && i === undefined) throw memError('scale needs an index register');
  const sc = scale ?? 1;
  if (sc !== 1 && sc !== 2 && sc !== 4 && sc !== 8) throw memError(`scale ${describe(scale)} must be 1, 2, 4 or 8`);
  return new Mem({ base: b, index: i, scale: sc, disp: d, target: undefined, size });
}

function memBuilder(size: OperandSize | undefined): MemBuilder {
  return ((...args: unknown[]) => buildMem(size, args)) as MemBuilder;
}

/**
 * Makes a memory operand. Unsized by default (the register operand gives the size);
 * `mem.byte`, `mem.word`, `mem.dword`, `mem.qword` make sized ones, which
 * instructions with an immediate or no register operand need.
 *
 * @example
 * mem('rdi')                        // [rdi]
 * mem('rbp', -8)                    // [rbp - 8]
 * mem('rbx', 'rcx', 8, 0x10)        // [rbx + rcx*8 + 0x10]
 * mem({ index: 'rax', scale: 4 })   // [rax*4 + 0]
 * mem({ disp: 0xb8000 })            // [0xb8000], absolute
 * mem.qword('rsp', 8)               // qword [rsp + 8]
 * mem.rip('counter')                // [rip + counter], RIP-relative to a label
 * mem.dword({ rip: 'counter' })     // dword [rip + counter]
 */
export const mem: MemFactory = Object.assign(memBuilder(undefined), {
  byte: memBuilder('byte'),
  word: memBuilder('word'),
  dword: memBuilder('dword'),
  qword: memBuilder('qword'),
  rip(target: Target, size?: OperandSize): Mem {
    return new Mem({
      base: 'rip', index: undefined, scale: 1, disp: 0n,
      target: checkTarget('mem.rip: target', target), size: checkSize('mem.rip: size', size),
    });
  },
});

// --- classified operands -----------------------------------------------------------------------

interface OpBase {
  /** 1-based position, for messages. */
  readonly pos: number;
}
interface RegOp extends OpBase { readonly kind: 'reg'; readonly reg: RegInfo }
interface MemOp extends OpBase { readonly kind: 'mem'; readonly mem: Mem }
interface ImmOp extends OpBase { readonly kind: 'imm'; readonly value: bigint | AsmValue }
interface SysOp extends OpBase { readonly kind: 'cr' | 'dr'; readonly name: string; readonly num: number }
type Op = RegOp | MemOp | ImmOp | SysOp;

function opText(op: Op): string {
  switch (op.kind) {
    case 'reg': return op.reg.name;
    case 'mem': return `memory ${op.mem}`;
    case 'imm': return typeof op.value === 'bigint' ? `immediate ${hex(op.value)}` : `immediate ${op.value}`;
    default: return op.name;
  }
}

/** `mov: operand 2 (eax)`, the start of every operand message. */
function where(insn: string, op: Op): string {
  return `${insn}: operand ${op.pos} (${opText(op)})`;
}

function badOperand(insn: string, op: Op, rule: string): ArgumentTypeError {
  return new ArgumentTypeError('ERR_INVALID_OPERANDS', `${where(insn, op)} ${rule}`);
}

function sizeError(insn: string, op: Op, rule: string): ArgumentTypeError {
  return new ArgumentTypeError('ERR_OPERAND_SIZE', `${where(insn, op)} ${rule}`);
}

// --- encoding ----------------------------------------------------------------------------------

/** Label positions for encoding one instruction, and what to do with a value that does not fit. */
interface Pass extends Env {
  /** Offset of the instruction being encoded. */
  readonly at: number;
  /**
   * `'throw'`: a value that does not fit is an error. `'check'`: it sets `failed`
   * (a relaxation question, asked often, so no exception). `'size'`: values are
   * placeholders, only the length counts.
   */
  readonly mode: 'throw' | 'check' | 'size';
  failed: boolean;
}

/** Whether to throw for a value that fits (`ok`) or not: a 'check' pass records it instead, a 'size' pass ignores it. */
function rangeFails(p: Pass, ok: boolean): boolean {
  if (ok || p.mode === 'size') return false;
  if (p.mode === 'check') {
    p.failed = true;
    return false;
  }
  return true;
}

function valueOf(p: Pass, v: bigint | AsmValue): bigint {
  return typeof v === 'bigint' ? v : v.evaluate(p);
}

/** An immediate field: `bytes` wide, for an operation of `opBits`. */
interface ImmField {
  readonly op: Op;
  readonly value: bigint | AsmValue;
  readonly bytes: 1 | 2 | 4 | 8;
  readonly opBits: number;
}

function immBytes(p: Pass, insn: string, f: ImmField): number[] {
  const v = valueOf(p, f.value);
  if (rangeFails(p, fits(v, f.opBits, f.bytes * 8))) {
    const is = typeof f.value === 'bigint' ? '' : ` is ${hex(v)}, which`;
    throw outOfRange(`${where(insn, f.op)}${is} ${fitRule(f.opBits, f.bytes * 8)}`);
  }
  return le(v, f.bytes);
}

/** One encoding of an instruction: prefixes, REX, opcode, ModRM/SIB/displacement, immediate. */
interface Enc {
  /** Legacy prefixes (0x66, 0xF3, ...), which go before REX. */
  readonly prefixes?: readonly number[];
  /** REX.W: 64-bit operand size. */
  readonly w?: boolean;
  readonly opcode: readonly number[];
  /** ModRM.reg: a register operand, or an opcode extension / control or debug register number. */
  readonly reg?: RegOp | number;
  /** ModRM.rm operand. */
  readonly rm?: RegOp | MemOp;
  /** Register in the low 3 bits of the last opcode byte (`B8+r` forms). */
  readonly plus?: RegOp;
  readonly imm?: ImmField;
}

function encode(p: Pass, insn: string, e: Enc): number[] {
  const out: number[] = [...(e.prefixes ?? [])];
  const regNum = e.reg === undefined ? 0 : typeof e.reg === 'number' ? e.reg : e.reg.reg.num;
  let rex = e.w ? 0x48 : 0x40;
  if (regNum & 8) rex |= 4;
  const regs: RegOp[] = [];
  if (typeof e.reg === 'object') regs.push(e.reg);
  if (e.plus) {
    regs.push(e.plus);
    if (e.plus.reg.num & 8) rex |= 1;
  }
  const m = e.rm?.kind === 'mem' ? e.rm.mem : undefined;
  if (e.rm?.kind === 'reg') {
    regs.push(e.rm);
    if (e.rm.reg.num & 8) rex |= 1;
  } else if (m) {
    if (m.base && m.base !== 'rip' && GPRS.get(m.base)!.num & 8) rex |= 1;
    if (m.index && GPRS.get(m.index)!.num & 8) rex |= 2;
  }
  const needsRex = rex !== 0x40 || regs.some((r) => r.reg.rexOnly);
  if (needsRex) {
    const high = regs.find((r) => r.reg.high);
    if (high) {
      const cause = regs.find((r) => r.reg.rexOnly || r.reg.num >= 8);
      const why = cause ? `operand ${cause.pos} (${cause.reg.name}) needs` : e.w ? 'a 64-bit operation needs' : 'an r8-r15 address register needs';
      throw badOperand(insn, high, `cannot be encoded with a REX prefix, which ${why}: use al, cl, dl or bl instead`);
    }
    out.push(rex);
  }
  out.push(...e.opcode);
  if (e.plus) out[out.length - 1]! += e.plus.reg.num & 7;
  let ripAt = -1;
  let ripTarget: bigint | undefined;
  if (e.rm?.kind === 'reg') {
    out.push(0xc0 | ((regNum & 7) << 3) | (e.rm.reg.num & 7));
  } else if (e.rm && m) {
    const r = (regNum & 7) << 3;
    const disp = m.disp;
    if (m.base === 'rip') {
      out.push(0x05 | r);
      ripAt = out.length;
      if (m.target !== undefined) {
        const t = m.target;
        ripTarget = typeof t === 'string' ? p.origin + BigInt(p.offset(t)) : valueOf(p, t);
        out.push(0, 0, 0, 0);
      } else {
        out.push(...dispBytes(p, insn, e.rm, disp));
      }
    } else {
      const scaleBits = ({ 1: 0, 2: 1, 4: 2, 8: 3 } as const)[m.scale] << 6;
      const index = m.index ? GPRS.get(m.index)!.num & 7 : 4;
      if (m.base === undefined) {
        out.push(0x04 | r, scaleBits | (index << 3) | 5, ...dispBytes(p, insn, e.rm, disp));
      } else {
        const base = GPRS.get(m.base)!.num & 7;
        const mod = typeof disp !== 'bigint' ? 2 : disp === 0n && base !== 5 ? 0 : s8(disp) ? 1 : 2;
        const sib = m.index !== undefined || base === 4;
        out.push((mod << 6) | r | (sib ? 4 : base));
        if (sib) out.push(scaleBits | (index << 3) | base);
        if (mod === 1) out.push(Number(BigInt.asUintN(8, disp as bigint)));
        if (mod === 2) out.push(...dispBytes(p, insn, e.rm, disp));
      }
    }
  }
  if (e.imm) out.push(...immBytes(p, insn, e.imm));
  if (ripTarget !== undefined) {
    // Relative to the end of the instruction, immediate included.
    const rel = ripTarget - (p.origin + BigInt(p.at + out.length));
    if (rangeFails(p, s32(rel))) throw outOfRange(`${where(insn, e.rm!)} is ${hex(rel)} bytes from the next instruction, beyond RIP-relative reach (signed 32 bits)`);
    out.splice(ripAt, 4, ...le(rel, 4));
  }
  return out;
}

function dispBytes(p: Pass, insn: string, op: Op, disp: bigint | AsmValue): number[] {
  const v = valueOf(p, disp);
  if (rangeFails(p, fits(v, 64, 32))) throw outOfRange(`${where(insn, op)} has displacement ${hex(v)}, which ${fitRule(64, 32)}`);
  return le(v, 4);
}

/** One way to encode an instruction: a fixed length, and bytes from label positions. */
interface Form {
  readonly length: number;
  /** The bytes; a value that does not fit is handled as `p.mode` says. */
  encode(p: Pass): number[];
}

type Item =
  | { readonly kind: 'bytes'; readonly bytes: readonly number[] }
  | { readonly kind: 'label'; readonly name: string }
  | { readonly kind: 'align'; readonly boundary: number; readonly fill: number }
  | { readonly kind: 'var'; readonly insn: string; readonly forms: readonly Form[]; readonly labels: readonly string[]; choice: number };

interface Layout {
  readonly code: Uint8Array;
  readonly offsets: ReadonlyMap<string, number>;
}

const sizing = (): Pass => ({ at: 0, origin: 0n, mode: 'size', failed: false, offset: () => 0 });
const fixed = (): Pass => ({ at: 0, origin: 0n, mode: 'throw', failed: false, offset: () => 0 });

function labelsOf(...values: Array<bigint | AsmValue | string | undefined>): string[] {
  const out: string[] = [];
  for (const v of values) {
    if (typeof v === 'string') out.push(v);
    else if (v instanceof AsmValue) out.push(...v.labels);
  }
  return out;
}

function memLabels(m: Mem): string[] {
  return labelsOf(m.disp, m.target);
}

function checkLabelName(what: string, name: unknown): string {
  if (typeof name !== 'string') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${what} must be a label name (a string), got ${describe(name)}`);
  if (!/^[A-Za-z_.$][\w.$@]*$/.test(name)) {
    throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${what} '${name}' is not a label name: letters, digits, _ . $ @, not starting with a digit`);
  }
  if (isRegisterName(name)) throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${what} '${name}' is a register name, not a label`);
  return name;
}

// --- instruction tables ------------------------------------------------------------------------

/** A condition code of `jcc`, `setcc` and `cmovcc`, with its usual aliases. */
export type Condition =
  | 'o' | 'no' | 'b' | 'c' | 'nae' | 'ae' | 'nb' | 'nc' | 'e' | 'z' | 'ne' | 'nz' | 'be' | 'na' | 'a' | 'nbe'
  | 's' | 'ns' | 'p' | 'pe' | 'np' | 'po' | 'l' | 'nge' | 'ge' | 'nl' | 'le' | 'ng' | 'g' | 'nle';

const CONDITIONS: Record<Condition, number> = {
  o: 0, no: 1, b: 2, c: 2, nae: 2, ae: 3, nb: 3, nc: 3, e: 4, z: 4, ne: 5, nz: 5, be: 6, na: 6, a: 7, nbe: 7,
  s: 8, ns: 9, p: 10, pe: 10, np: 11, po: 11, l: 12, nge: 12, ge: 13, nl: 13, le: 14, ng: 14, g: 15, nle: 15,
};

/** Options of branches that have a short and a near form. */
export interface JumpOptions {
  /**
   * `'short'` (rel8) or `'near'` (rel32). Default: the shortest form that reaches,
   * found by relaxation at assembly. A `'short'` branch that does not reach is an error.
   */
  size?: 'short' | 'near' | undefined;
}

/** `rep` for `movs`, `stos`, `lods`, `ins`, `outs`: repeat rcx times. */
export type RepPrefix = 'rep';
/** Prefixes for `cmps` and `scas`: repeat while equal / not equal, at most rcx times. */
export type RepCondPrefix = 'rep' | 'repe' | 'repz' | 'repne' | 'repnz';

/** Options of {@link Assembler}. */
export interface AssemblerOptions {
  /**
   * Linear address of the first byte: what {@link Assembler.addressOf} adds to label
   * offsets, and what branches to absolute addresses and `mem.rip` to an address are
   * relative to. Default 0. With the identity map of `longModeSetup`, the guest
   * physical address the code is loaded at.
   */
  origin?: number | bigint;
}

const ALU = { add: 0, or: 1, adc: 2, sbb: 3, and: 4, sub: 5, xor: 6, cmp: 7 } as const;
const SHIFT = { rol: 0, ror: 1, rcl: 2, rcr: 3, shl: 4, sal: 4, shr: 5, sar: 7 } as const;
const UNARY = { not: [0xf6, 2], neg: [0xf6, 3], mul: [0xf6, 4], div: [0xf6, 6], idiv: [0xf6, 7], inc: [0xfe, 0], dec: [0xfe, 1] } as const;

/** What `lock` may precede (with a memory destination). */
const LOCKABLE = new Set(['add', 'or', 'adc', 'sbb', 'and', 'sub', 'xor', 'inc', 'dec', 'neg', 'not', 'xchg', 'cmpxchg', 'xadd']);

type AluName = keyof typeof ALU;
type ShiftName = keyof typeof SHIFT;
type UnaryName = keyof typeof UNARY;
type Src<D extends Gpr> = SameSize<D> | Mem | Immediate;
type StringWidth = 'b' | 'w' | 'd' | 'q';

/**
 * Assembles 64-bit x86 code. Add instructions and data in order (every method
 * returns the assembler, so calls chain), then {@link Assembler.assemble}.
 * See the module documentation for the conventions and error codes.
 */
export class Assembler {
  /** Linear address of the first byte (see {@link AssemblerOptions.origin}). */
  readonly origin: bigint;
  readonly #items: Item[] = [];
  readonly #labels = new Set<string>();
  #layout: Layout | undefined;
  #unique = 0;
  /** A lock() waiting for its instruction. */
  #lock = false;

  /** An empty program at `options.origin`. */
  constructor(options: AssemblerOptions = {}) {
    if (typeof options !== 'object' || options === null) {
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `Assembler: options must be an object, got ${describe(options)}`);
    }
    const origin = integer(options.origin ?? 0n);
    if (origin === undefined) {
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `Assembler: options.origin must be an integer number or a bigint, got ${describe(options.origin)}`);
    }
    if (origin < 0n || origin >= 1n << 64n) throw outOfRange(`Assembler: options.origin ${hex(origin)} is not a 64-bit address`);
    this.origin = origin;
  }

  // --- labels and values ---------------------------------------------------------------------

  /** Defines `name` at the current position. Names are unique and cannot be register names. */
  label(name: string): this {
    checkLabelName('label: name', name);
    if (this.#labels.has(name)) throw new ArgumentTypeError('ERR_DUPLICATE_LABEL', `label: '${name}' is already defined`);
    this.#labels.add(name);
    return this.#push({ kind: 'label', name });
  }

  /** A label name not used so far (not defined: pass it to {@link Assembler.label}), for code generators. */
  uniqueLabel(hint = 'L'): string {
    checkLabelName('uniqueLabel: hint', hint);
    for (;;) {
      const name = `${hint}.${this.#unique++}`;
      if (!this.#labels.has(name)) return name;
    }
  }

  /** The address of `label` (origin + offset) plus `addend`, resolved at assembly; the label may come later. */
  addressOf(label: string, addend: number | bigint = 0): AsmValue {
    checkLabelName('addressOf: label', label);
    const add = integer(addend);
    if (add === undefined) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `addressOf: addend must be an integer number or a bigint, got ${describe(addend)}`);
    const text = add === 0n ? `addressOf('${label}')` : `addressOf('${label}')${add < 0n ? '-' : '+'}${hex(add < 0n ? -add : add)}`;
    return new AsmValue(this, [label], (env) => env.origin + BigInt(env.offset(label)) + add, text);
  }

  /** Bytes from label `from` to label `to` (negative if `to` comes first), resolved at assembly. */
  distance(from: string, to: string): AsmValue {
    checkLabelName('distance: from', from);
    checkLabelName('distance: to', to);
    return new AsmValue(this, [from, to], (env) => BigInt(env.offset(to) - env.offset(from)), `distance('${from}', '${to}')`);
  }

  /** Offset of `label` from the start of the code; lays the program out (as {@link Assembler.assemble} does). */
  offsetOf(label: string): number {
    checkLabelName('offsetOf: label', label);
    const offset = this.#laidOut().offsets.get(label);
    if (offset === undefined) throw new ArgumentRangeError('ERR_UNDEFINED_LABEL', `offsetOf: label '${label}' is not defined`);
    return offset;
  }

  /** The value of `value` in the laid-out program, as a bigint (an address, a distance...). */
  resolve(value: AsmValue): bigint {
    const v = this.#value('resolve', 1, value);
    const layout = this.#laidOut();
    return v.evaluate({ origin: this.origin, offset: (l) => layout.offsets.get(l)! });
  }

  // --- output --------------------------------------------------------------------------------

  /**
   * Lays the program out and returns its bytes (a new array each call). Branches take
   * their shortest form that reaches (relaxation only ever grows a branch, as GNU as
   * does). Throws for undefined labels and for label-dependent values out of range.
   * More code may be added afterwards; the next call lays out everything again.
   */
  assemble(): Uint8Array {
    return this.#laidOut().code.slice();
  }

  /**
   * The assembled code as a long-mode {@link GuestProgram} loaded at the origin,
   * for `loadLongMode` (whose identity map makes the origin the load GPA).
   */
  toProgram(name: string): GuestProgram {
    if (typeof name !== 'string') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `toProgram: name must be a string, got ${describe(name)}`);
    const bytes = this.assemble();
    if (this.origin + BigInt(bytes.length) > 1n << 52n) {
      throw outOfRange(`toProgram: origin ${hex(this.origin)} + ${bytes.length} bytes must stay below 2^52, the guest physical address limit`);
    }
    return Object.freeze({ name, bytes, loadAddress: this.origin, entry: this.origin, mode: 'long' as const });
  }

  // --- data ----------------------------------------------------------------------------------

  /** Raw bytes, for data or for instructions this assembler has no method for. */
  bytes(data: ArrayLike<number>): this {
    if (typeof data !== 'object' || data === null || typeof data.length !== 'number') {
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `bytes: data must be an array of bytes or a Uint8Array, got ${describe(data)}`);
    }
    const out: number[] = [];
    for (let i = 0; i < data.length; i++) {
      const b = data[i];
      if (typeof b !== 'number' || !Number.isInteger(b) || b < 0 || b > 0xff) {
        throw outOfRange(`bytes: data[${i}] ${describe(b)} must be an integer in [0, 0xff]`);
      }
      out.push(b);
    }
    return this.#push({ kind: 'bytes', bytes: out });
  }

  /** The characters of `text` (ASCII only), one byte each, no terminator. */
  ascii(text: string): this {
    if (typeof text !== 'string') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `ascii: text must be a string, got ${describe(text)}`);
    const out: number[] = [];
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c > 0x7f) throw outOfRange(`ascii: text[${i}] (U+${c.toString(16).padStart(4, '0')}) is not an ASCII character`);
      out.push(c);
    }
    return this.#push({ kind: 'bytes', bytes: out });
  }

  /** A byte (signed or unsigned). */
  u8(value: Immediate): this {
    return this.#data('u8', 1, value);
  }

  /** A 16-bit little-endian value (signed or unsigned). */
  u16(value: Immediate): this {
    return this.#data('u16', 2, value);
  }

  /** A 32-bit little-endian value (signed or unsigned). */
  u32(value: Immediate): this {
    return this.#data('u32', 4, value);
  }

  /** A 64-bit little-endian value (signed or unsigned), e.g. a label's address. */
  u64(value: Immediate): this {
    return this.#data('u64', 8, value);
  }

  /** `count` bytes of `fill` (default 0). */
  space(count: number, fill = 0): this {
    if (!Number.isSafeInteger(count) || count < 0 || count > 1 << 30) throw outOfRange(`space: count ${describe(count)} must be an integer in [0, 2^30]`);
    if (!Number.isInteger(fill) || fill < 0 || fill > 0xff) throw outOfRange(`space: fill ${describe(fill)} must be an integer in [0, 0xff]`);
    return this.#push({ kind: 'bytes', bytes: new Array<number>(count).fill(fill) });
  }

  /**
   * Pads with `fill` (default 0x90, `nop`, so code may run through the padding)
   * until the address (origin + offset) is a multiple of `boundary`, a power of two
   * up to 4096.
   */
  align(boundary: number, fill = 0x90): this {
    if (!Number.isInteger(boundary) || boundary < 1 || boundary > 4096 || (boundary & (boundary - 1)) !== 0) {
      throw outOfRange(`align: boundary ${describe(boundary)} must be a power of two in [1, 4096]`);
    }
    if (!Number.isInteger(fill) || fill < 0 || fill > 0xff) throw outOfRange(`align: fill ${describe(fill)} must be an integer in [0, 0xff]`);
    return this.#push({ kind: 'align', boundary, fill });
  }

  // --- moves ---------------------------------------------------------------------------------

  /**
   * `mov`: register or memory from a register, memory or immediate; and 64-bit
   * registers to and from control and debug registers. `mov r64, imm` takes the
   * 7-byte sign-extended form when the value fits in 32 bits signed, `movabs` otherwise.
   */
  mov<D extends Gpr>(dst: D, src: Src<D>): this;
  mov(dst: Mem, src: Gpr | Immediate): this;
  mov(dst: Reg64, src: ControlRegister | DebugRegister): this;
  mov(dst: ControlRegister | DebugRegister, src: Reg64): this;
  mov(dst: Gpr | Mem | ControlRegister | DebugRegister, src: Gpr | Mem | Immediate | ControlRegister | DebugRegister): this {
    const insn = 'mov';
    const d = this.#op(insn, 1, dst, { sys: true });
    const s = this.#op(insn, 2, src, { sys: true, imm: true });
    if (d.kind === 'cr' || d.kind === 'dr' || s.kind === 'cr' || s.kind === 'dr') {
      const [sys, gpr] = (d.kind === 'cr' || d.kind === 'dr' ? [d, s] : [s, d]) as [SysOp, Op];
      if (gpr.kind !== 'reg' || gpr.reg.bits !== 64) throw badOperand(insn, gpr, `must be a 64-bit register: ${sys.name} moves only to and from 64-bit registers`);
      const opcode = (sys.kind === 'cr' ? 0x20 : 0x21) | (sys === d ? 2 : 0);
      return this.#emit(insn, { opcode: [0x0f, opcode], reg: sys.num, rm: gpr });
    }
    if (s.kind === 'imm') {
      const bits = this.#sizeOf(insn, d, undefined, 'an immediate source');
      if (d.kind === 'reg') {
        const plus = d;
        if (bits === 8) return this.#emit(insn, { opcode: [0xb0], plus, imm: imm(s, 1, 8) });
        if (bits === 16) return this.#emit(insn, { prefixes: [0x66], opcode: [0xb8], plus, imm: imm(s, 2, 16) });
        if (bits === 32) return this.#emit(insn, { opcode: [0xb8], plus, imm: imm(s, 4, 32) });
        const sx: Enc = { w: true, opcode: [0xc7], reg: 0, rm: d, imm: imm(s, 4, 64) };
        const abs: Enc = { w: true, opcode: [0xb8], plus, imm: imm(s, 8, 64) };
        if (typeof s.value !== 'bigint') return this.#variable(insn, [sx, abs], labelsOf(s.value));
        return this.#emit(insn, fits(s.value, 64, 32) ? sx : abs);
      }
      return this.#emit(insn, { ...opSize(bits), opcode: [bits === 8 ? 0xc6 : 0xc7], reg: 0, rm: d as MemOp, imm: imm(s, Math.min(bits / 8, 4) as 1 | 2 | 4, bits) });
    }
    return this.#regRm(insn, d, s, 0x88, 0x8a);
  }

  /** `movabs r64, imm64`: always the 10-byte form with a full 64-bit immediate. */
  movabs(dst: Reg64, value: Immediate): this {
    const insn = 'movabs';
    const d = this.#reg(insn, 1, dst, [64]);
    const s = this.#op(insn, 2, value, { imm: true, only: ['imm'] }) as ImmOp;
    return this.#emit(insn, { w: true, opcode: [0xb8], plus: d, imm: imm(s, 8, 64) });
  }

  /** `movzx`: zero-extends an 8- or 16-bit register or memory operand (memory needs `mem.byte`/`mem.word`). */
  movzx(dst: Reg16 | Reg32 | Reg64, src: Reg8 | Reg16 | Mem): this {
    return this.#extend('movzx', dst, src, 0xb6);
  }

  /** `movsx`: sign-extends an 8- or 16-bit operand; a 32-bit source gives `movsxd`. */
  movsx(dst: Reg16 | Reg32 | Reg64, src: Reg8 | Reg16 | Reg32 | Mem): this {
    return this.#extend('movsx', dst, src, 0xbe);
  }

  /** `movsxd r64, r/m32`: sign-extends a 32-bit operand into a 64-bit register. */
  movsxd(dst: Reg64, src: Reg32 | Mem): this {
    const insn = 'movsxd';
    const d = this.#reg(insn, 1, dst, [64]);
    const s = this.#op(insn, 2, src, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    this.#sizeOf(insn, s, 32);
    return this.#emit(insn, { w: true, opcode: [0x63], reg: d, rm: s });
  }

  /** `lea`: the address a memory operand computes, into a 16-, 32- or 64-bit register. */
  lea(dst: Reg16 | Reg32 | Reg64, src: Mem): this {
    const insn = 'lea';
    const d = this.#reg(insn, 1, dst, [16, 32, 64]);
    const s = this.#op(insn, 2, src, { only: ['mem'] }) as MemOp;
    return this.#emit(insn, { ...opSize(d.reg.bits), opcode: [0x8d], reg: d, rm: s });
  }

  /** `xchg`: swaps two registers, or a register and memory (implicitly locked by the CPU). */
  xchg<D extends Gpr>(a: D, b: SameSize<D> | Mem): this;
  xchg(a: Mem, b: Gpr): this;
  xchg(a: Gpr | Mem, b: Gpr | Mem): this {
    const insn = 'xchg';
    const x = this.#op(insn, 1, a, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    const y = this.#op(insn, 2, b, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    if (x.kind === 'reg' && y.kind === 'reg') {
      const bits = this.#sameSize(insn, x, y);
      if (bits !== 8) {
        // The one-byte 90+r form, as GNU as picks it. 90 alone is nop, not xchg eax, eax
        // (which clears the top of rax), so eax, eax keeps the ModRM form.
        const acc = x.reg.num === 0 ? y : y.reg.num === 0 ? x : undefined;
        if (acc && !(bits === 32 && x.reg.num === 0 && y.reg.num === 0)) {
          if (bits === 64 && x.reg.num === 0 && y.reg.num === 0) return this.#emit(insn, { opcode: [0x90] });
          return this.#emit(insn, { ...opSize(bits), opcode: [0x90], plus: acc });
        }
      }
      return this.#emit(insn, { ...opSize(bits), opcode: [bits === 8 ? 0x86 : 0x87], reg: y, rm: x });
    }
    const [r, m] = x.kind === 'reg' ? [x, y] : [y, x];
    if (r.kind !== 'reg') throw badOperand(insn, x, 'and operand 2 cannot both be memory');
    const bits = this.#sizeOf(insn, m, r.reg.bits);
    return this.#emit(insn, { ...opSize(bits), opcode: [bits === 8 ? 0x86 : 0x87], reg: r, rm: m as MemOp });
  }

  /** `cmpxchg r/m, r`: compares al/ax/eax/rax with `dst`; equal: `dst = src`, else the accumulator gets `dst`. Use {@link Assembler.lock} first for atomicity. */
  cmpxchg<D extends Gpr>(dst: D, src: SameSize<D>): this;
  cmpxchg(dst: Mem, src: Gpr): this;
  cmpxchg(dst: Gpr | Mem, src: Gpr): this {
    return this.#mr('cmpxchg', dst, src, [0x0f, 0xb0]);
  }

  /** `xadd r/m, r`: `src = dst; dst += old src`. Use {@link Assembler.lock} first for atomicity. */
  xadd<D extends Gpr>(dst: D, src: SameSize<D>): this;
  xadd(dst: Mem, src: Gpr): this;
  xadd(dst: Gpr | Mem, src: Gpr): this {
    return this.#mr('xadd', dst, src, [0x0f, 0xc0]);
  }

  /** `bswap r32/r64`: reverses the byte order of a register. */
  bswap(reg: Reg32 | Reg64): this {
    const r = this.#reg('bswap', 1, reg, [32, 64]);
    return this.#emit('bswap', { w: r.reg.bits === 64, opcode: [0x0f, 0xc8], plus: r });
  }

  /** `cmovcc`: moves `src` to `dst` if `cond` holds (16/32/64-bit). */
  cmovcc<D extends Reg16 | Reg32 | Reg64>(cond: Condition, dst: D, src: SameSize<D> | Mem): this {
    const insn = 'cmovcc';
    const cc = condition(insn, cond);
    const d = this.#reg(insn, 2, dst, [16, 32, 64]);
    const s = this.#op(insn, 3, src, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    this.#sizeOf(insn, s, d.reg.bits);
    return this.#emit(`cmov${cond}`, { ...opSize(d.reg.bits), opcode: [0x0f, 0x40 | cc], reg: d, rm: s });
  }

  /** `setcc r/m8`: 1 if `cond` holds, else 0. */
  setcc(cond: Condition, dst: Reg8 | Mem): this {
    const insn = 'setcc';
    const cc = condition(insn, cond);
    const d = this.#op(insn, 2, dst, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    this.#sizeOf(insn, d, 8);
    return this.#emit(`set${cond}`, { opcode: [0x0f, 0x90 | cc], reg: 0, rm: d });
  }

  // --- arithmetic and logic ------------------------------------------------------------------

  /** `add`: `dst += src`. Register or memory with a register, memory (register destination) or immediate. */
  add<D extends Gpr>(dst: D, src: Src<D>): this;
  add(dst: Mem, src: Gpr | Immediate): this;
  add(dst: Gpr | Mem, src: Gpr | Mem | Immediate): this {
    return this.#alu('add', dst, src);
  }

  /** `or`: `dst |= src`. */
  or<D extends Gpr>(dst: D, src: Src<D>): this;
  or(dst: Mem, src: Gpr | Immediate): this;
  or(dst: Gpr | Mem, src: Gpr | Mem | Immediate): this {
    return this.#alu('or', dst, src);
  }

  /** `adc`: `dst += src + CF`. */
  adc<D extends Gpr>(dst: D, src: Src<D>): this;
  adc(dst: Mem, src: Gpr | Immediate): this;
  adc(dst: Gpr | Mem, src: Gpr | Mem | Immediate): this {
    return this.#alu('adc', dst, src);
  }

  /** `sbb`: `dst -= src + CF`. */
  sbb<D extends Gpr>(dst: D, src: Src<D>): this;
  sbb(dst: Mem, src: Gpr | Immediate): this;
  sbb(dst: Gpr | Mem, src: Gpr | Mem | Immediate): this {
    return this.#alu('sbb', dst, src);
  }

  /** `and`: `dst &= src`. */
  and<D extends Gpr>(dst: D, src: Src<D>): this;
  and(dst: Mem, src: Gpr | Immediate): this;
  and(dst: Gpr | Mem, src: Gpr | Mem | Immediate): this {
    return this.#alu('and', dst, src);
  }

  /** `sub`: `dst -= src`. */
  sub<D extends Gpr>(dst: D, src: Src<D>): this;
  sub(dst: Mem, src: Gpr | Immediate): this;
  sub(dst: Gpr | Mem, src: Gpr | Mem | Immediate): this {
    return this.#alu('sub', dst, src);
  }

  /** `xor`: `dst ^= src`. */
  xor<D extends Gpr>(dst: D, src: Src<D>): this;
  xor(dst: Mem, src: Gpr | Immediate): this;
  xor(dst: Gpr | Mem, src: Gpr | Mem | Immediate): this {
    return this.#alu('xor', dst, src);
  }

  /** `cmp`: flags of `dst - src`. */
  cmp<D extends Gpr>(dst: D, src: Src<D>): this;
  cmp(dst: Mem, src: Gpr | Immediate): this;
  cmp(dst: Gpr | Mem, src: Gpr | Mem | Immediate): this {
    return this.#alu('cmp', dst, src);
  }

  /** `test`: flags of `a & b`. Register or memory with a register or immediate (either order for register and memory). */
  test<D extends Gpr>(a: D, b: SameSize<D> | Mem | Immediate): this;
  test(a: Mem, b: Gpr | Immediate): this;
  test(a: Gpr | Mem, b: Gpr | Mem | Immediate): this {
    const insn = 'test';
    const x = this.#op(insn, 1, a, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    const y = this.#op(insn, 2, b, { imm: true });
    if (y.kind === 'imm') {
      const bits = this.#sizeOf(insn, x, undefined, 'an immediate operand');
      const acc = x.kind === 'reg' && x.reg.num === 0 && !x.reg.high;
      const width = Math.min(bits / 8, 4) as 1 | 2 | 4;
      if (acc) return this.#emit(insn, { ...opSize(bits), opcode: [bits === 8 ? 0xa8 : 0xa9], imm: imm(y, width, bits) });
      return this.#emit(insn, { ...opSize(bits), opcode: [bits === 8 ? 0xf6 : 0xf7], reg: 0, rm: x, imm: imm(y, width, bits) });
    }
    if (y.kind !== 'reg' && y.kind !== 'mem') throw badOperand(insn, y, 'must be a register, memory or an immediate');
    const [r, m] = y.kind === 'reg' ? [y, x] : [x, y];
    if (r.kind !== 'reg') throw badOperand(insn, x, 'and operand 2 cannot both be memory');
    const bits = this.#sizeOf(insn, m, r.reg.bits);
    return this.#emit(insn, { ...opSize(bits), opcode: [bits === 8 ? 0x84 : 0x85], reg: r, rm: m });
  }

  /** `inc r/m`: `dst += 1` (CF unchanged). Memory needs a size. */
  inc(dst: Gpr | Mem): this {
    return this.#unary('inc', dst);
  }

  /** `dec r/m`: `dst -= 1` (CF unchanged). */
  dec(dst: Gpr | Mem): this {
    return this.#unary('dec', dst);
  }

  /** `neg r/m`: `dst = -dst`. */
  neg(dst: Gpr | Mem): this {
    return this.#unary('neg', dst);
  }

  /** `not r/m`: `dst = ~dst`. */
  not(dst: Gpr | Mem): this {
    return this.#unary('not', dst);
  }

  /** `mul r/m`: unsigned rdx:rax (or dx:ax, edx:eax, ax) = accumulator * `src`. */
  mul(src: Gpr | Mem): this {
    return this.#unary('mul', src);
  }

  /** `div r/m`: unsigned divide of rdx:rax (or the narrower pair) by `src`; quotient in rax, remainder in rdx. */
  div(src: Gpr | Mem): this {
    return this.#unary('div', src);
  }

  /** `idiv r/m`: signed divide, as {@link Assembler.div}. */
  idiv(src: Gpr | Mem): this {
    return this.#unary('idiv', src);
  }

  /**
   * `imul`: one operand (signed rdx:rax = rax * `src`), two (`dst *= src`, or
   * `dst *= imm`), or three (`dst = src * imm`). `dst` is a 16/32/64-bit register.
   */
  imul(src: Gpr | Mem): this;
  imul<D extends Reg16 | Reg32 | Reg64>(dst: D, src: SameSize<D> | Mem | Immediate): this;
  imul<D extends Reg16 | Reg32 | Reg64>(dst: D, src: SameSize<D> | Mem, factor: Immediate): this;
  imul(a: Gpr | Mem, b?: Gpr | Mem | Immediate, c?: Immediate): this {
    const insn = 'imul';
    if (b === undefined) {
      if (c !== undefined) throw new ArgumentTypeError('ERR_INVALID_OPERANDS', `${insn}: operand 2 is missing before operand 3`);
      return this.#unaryOp(insn, a, 0xf6, 5);
    }
    const d = this.#reg(insn, 1, a, [16, 32, 64]);
    const s = this.#op(insn, 2, b, { imm: c === undefined });
    if (s.kind === 'imm') return this.#imulImm(insn, d, d, s);
    if (s.kind !== 'reg' && s.kind !== 'mem') throw badOperand(insn, s, 'must be a register or memory');
    this.#sizeOf(insn, s, d.reg.bits);
    if (c === undefined) return this.#emit(insn, { ...opSize(d.reg.bits), opcode: [0x0f, 0xaf], reg: d, rm: s });
    const f = this.#op(insn, 3, c, { imm: true, only: ['imm'] }) as ImmOp;
    return this.#imulImm(insn, d, s, f);
  }

  /** `rol`: rotate left by an immediate count or by cl. */
  rol(dst: Gpr | Mem, count: number | 'cl'): this {
    return this.#shift('rol', dst, count);
  }

  /** `ror`: rotate right. */
  ror(dst: Gpr | Mem, count: number | 'cl'): this {
    return this.#shift('ror', dst, count);
  }

  /** `rcl`: rotate left through CF. */
  rcl(dst: Gpr | Mem, count: number | 'cl'): this {
    return this.#shift('rcl', dst, count);
  }

  /** `rcr`: rotate right through CF. */
  rcr(dst: Gpr | Mem, count: number | 'cl'): this {
    return this.#shift('rcr', dst, count);
  }

  /** `shl`: shift left. A count of 1 takes the short `D1 /4` form, as GNU as does. */
  shl(dst: Gpr | Mem, count: number | 'cl'): this {
    return this.#shift('shl', dst, count);
  }

  /** `sal`: the same instruction as {@link Assembler.shl}. */
  sal(dst: Gpr | Mem, count: number | 'cl'): this {
    return this.#shift('sal', dst, count);
  }

  /** `shr`: logical shift right. */
  shr(dst: Gpr | Mem, count: number | 'cl'): this {
    return this.#shift('shr', dst, count);
  }

  /** `sar`: arithmetic shift right. */
  sar(dst: Gpr | Mem, count: number | 'cl'): this {
    return this.#shift('sar', dst, count);
  }

  /** `cdq`: sign-extends eax into edx:eax (before a 32-bit `idiv`). */
  cdq(): this {
    return this.#raw([0x99]);
  }

  /** `cqo`: sign-extends rax into rdx:rax (before a 64-bit `idiv`). */
  cqo(): this {
    return this.#raw([0x48, 0x99]);
  }

  /** `cdqe`: sign-extends eax into rax. */
  cdqe(): this {
    return this.#raw([0x48, 0x98]);
  }

  // --- stack ---------------------------------------------------------------------------------

  /** `push`: a 64- or 16-bit register, a memory operand (qword, or word), or an immediate sign-extended from 32 bits. */
  push(src: Reg64 | Reg16 | Mem | Immediate): this {
    const insn = 'push';
    const s = this.#op(insn, 1, src, { imm: true });
    if (s.kind === 'imm') {
      const short: Enc = { opcode: [0x6a], imm: imm(s, 1, 64) };
      const long: Enc = { opcode: [0x68], imm: imm(s, 4, 64) };
      if (typeof s.value !== 'bigint') return this.#variable(insn, [short, long], labelsOf(s.value));
      return this.#emit(insn, fits(s.value, 64, 8) ? short : long);
    }
    return this.#pushPop(insn, s, 0x50, [0xff], 6);
  }

  /** `pop`: into a 64- or 16-bit register or a memory operand (qword, or word). */
  pop(dst: Reg64 | Reg16 | Mem): this {
    const insn = 'pop';
    return this.#pushPop(insn, this.#op(insn, 1, dst), 0x58, [0x8f], 0);
  }

  /** `pushfq`: pushes rflags. */
  pushfq(): this {
    return this.#raw([0x9c]);
  }

  /** `popfq`: pops rflags (e.g. to set TF for single-stepping). */
  popfq(): this {
    return this.#raw([0x9d]);
  }

  /** `leave`: `mov rsp, rbp; pop rbp`. */
  leave(): this {
    return this.#raw([0xc9]);
  }

  // --- control flow --------------------------------------------------------------------------

  /** `jmp`: to a label or address (short or near, see {@link JumpOptions}), or indirect through a 64-bit register or qword memory. */
  jmp(target: Target | Reg64 | Mem, options?: JumpOptions): this {
    const insn = 'jmp';
    if (typeof target === 'string' && GPRS.has(target) || target instanceof Mem) return this.#indirect(insn, target as Reg64 | Mem, 4, options);
    return this.#branch(insn, target, [0xeb], [0xe9], options);
  }

  /** `call`: to a label or address (rel32), or indirect through a 64-bit register or qword memory. */
  call(target: Target | Reg64 | Mem): this {
    const insn = 'call';
    if (typeof target === 'string' && GPRS.has(target) || target instanceof Mem) return this.#indirect(insn, target as Reg64 | Mem, 2, undefined);
    return this.#branch(insn, target, undefined, [0xe8], undefined);
  }

  /** `ret`, or `ret imm16`: return, then release `pop` bytes of stack. */
  ret(pop?: number): this {
    if (pop === undefined) return this.#raw([0xc3]);
    if (!Number.isInteger(pop) || pop < 0 || pop > 0xffff) throw outOfRange(`ret: operand 1 (${describe(pop)}) must be an integer in [0, 0xffff]`);
    return this.#raw([0xc2, ...le(BigInt(pop), 2)]);
  }

  /** `jcc`: jump to a label or address if `cond` holds (short or near, see {@link JumpOptions}). */
  jcc(cond: Condition, target: Target, options?: JumpOptions): this {
    const cc = condition('jcc', cond);
    return this.#branch(`j${cond}`, target, [0x70 | cc], [0x0f, 0x80 | cc], options);
  }

  /** Jump if overflow (OF = 1). */
  jo(target: Target, options?: JumpOptions): this { return this.jcc('o', target, options); }
  /** Jump if not overflow (OF = 0). */
  jno(target: Target, options?: JumpOptions): this { return this.jcc('no', target, options); }
  /** Jump if below, unsigned (CF = 1). */
  jb(target: Target, options?: JumpOptions): this { return this.jcc('b', target, options); }
  /** Jump if carry (CF = 1); same as {@link Assembler.jb}. */
  jc(target: Target, options?: JumpOptions): this { return this.jcc('c', target, options); }
  /** Jump if not above or equal (CF = 1); same as {@link Assembler.jb}. */
  jnae(target: Target, options?: JumpOptions): this { return this.jcc('nae', target, options); }
  /** Jump if above or equal, unsigned (CF = 0). */
  jae(target: Target, options?: JumpOptions): this { return this.jcc('ae', target, options); }
  /** Jump if not below (CF = 0); same as {@link Assembler.jae}. */
  jnb(target: Target, options?: JumpOptions): this { return this.jcc('nb', target, options); }
  /** Jump if not carry (CF = 0); same as {@link Assembler.jae}. */
  jnc(target: Target, options?: JumpOptions): this { return this.jcc('nc', target, options); }
  /** Jump if equal (ZF = 1). */
  je(target: Target, options?: JumpOptions): this { return this.jcc('e', target, options); }
  /** Jump if zero (ZF = 1); same as {@link Assembler.je}. */
  jz(target: Target, options?: JumpOptions): this { return this.jcc('z', target, options); }
  /** Jump if not equal (ZF = 0). */
  jne(target: Target, options?: JumpOptions): this { return this.jcc('ne', target, options); }
  /** Jump if not zero (ZF = 0); same as {@link Assembler.jne}. */
  jnz(target: Target, options?: JumpOptions): this { return this.jcc('nz', target, options); }
  /** Jump if below or equal, unsigned (CF = 1 or ZF = 1). */
  jbe(target: Target, options?: JumpOptions): this { return this.jcc('be', target, options); }
  /** Jump if not above; same as {@link Assembler.jbe}. */
  jna(target: Target, options?: JumpOptions): this { return this.jcc('na', target, options); }
  /** Jump if above, unsigned (CF = 0 and ZF = 0). */
  ja(target: Target, options?: JumpOptions): this { return this.jcc('a', target, options); }
  /** Jump if not below or equal; same as {@link Assembler.ja}. */
  jnbe(target: Target, options?: JumpOptions): this { return this.jcc('nbe', target, options); }
  /** Jump if sign (SF = 1). */
  js(target: Target, options?: JumpOptions): this { return this.jcc('s', target, options); }
  /** Jump if not sign (SF = 0). */
  jns(target: Target, options?: JumpOptions): this { return this.jcc('ns', target, options); }
  /** Jump if parity (PF = 1). */
  jp(target: Target, options?: JumpOptions): this { return this.jcc('p', target, options); }
  /** Jump if parity even (PF = 1); same as {@link Assembler.jp}. */
  jpe(target: Target, options?: JumpOptions): this { return this.jcc('pe', target, options); }
  /** Jump if not parity (PF = 0). */
  jnp(target: Target, options?: JumpOptions): this { return this.jcc('np', target, options); }
  /** Jump if parity odd (PF = 0); same as {@link Assembler.jnp}. */
  jpo(target: Target, options?: JumpOptions): this { return this.jcc('po', target, options); }
  /** Jump if less, signed (SF != OF). */
  jl(target: Target, options?: JumpOptions): this { return this.jcc('l', target, options); }
  /** Jump if not greater or equal; same as {@link Assembler.jl}. */
  jnge(target: Target, options?: JumpOptions): this { return this.jcc('nge', target, options); }
  /** Jump if greater or equal, signed (SF = OF). */
  jge(target: Target, options?: JumpOptions): this { return this.jcc('ge', target, options); }
  /** Jump if not less; same as {@link Assembler.jge}. */
  jnl(target: Target, options?: JumpOptions): this { return this.jcc('nl', target, options); }
  /** Jump if less or equal, signed (ZF = 1 or SF != OF). */
  jle(target: Target, options?: JumpOptions): this { return this.jcc('le', target, options); }
  /** Jump if not greater; same as {@link Assembler.jle}. */
  jng(target: Target, options?: JumpOptions): this { return this.jcc('ng', target, options); }
  /** Jump if greater, signed (ZF = 0 and SF = OF). */
  jg(target: Target, options?: JumpOptions): this { return this.jcc('g', target, options); }
  /** Jump if not less or equal; same as {@link Assembler.jg}. */
  jnle(target: Target, options?: JumpOptions): this { return this.jcc('nle', target, options); }

  /** `loop`: `rcx -= 1`, jump if rcx != 0. Short only: the target must be within -128..127 bytes. */
  loop(target: Target): this {
    return this.#branch('loop', target, [0xe2], undefined, undefined);
  }

  /** `loope`: `rcx -= 1`, jump if rcx != 0 and ZF = 1. Short only. */
  loope(target: Target): this {
    return this.#branch('loope', target, [0xe1], undefined, undefined);
  }

  /** `loopne`: `rcx -= 1`, jump if rcx != 0 and ZF = 0. Short only. */
  loopne(target: Target): this {
    return this.#branch('loopne', target, [0xe0], undefined, undefined);
  }

  /** `jrcxz`: jump if rcx = 0. Short only. */
  jrcxz(target: Target): this {
    return this.#branch('jrcxz', target, [0xe3], undefined, undefined);
  }

  // --- port I/O ------------------------------------------------------------------------------

  /** `in`: al, ax or eax from a port (0..0xff as an immediate, any port through dx). */
  in(dst: 'al' | 'ax' | 'eax', port: number | 'dx'): this {
    return this.#io('in', dst, port, 1, 2, 0xe4, 0xec);
  }

  /** `out`: al, ax or eax to a port (0..0xff as an immediate, any port through dx). */
  out(port: number | 'dx', src: 'al' | 'ax' | 'eax'): this {
    return this.#io('out', src, port, 2, 1, 0xe6, 0xee);
  }

  // --- string instructions -------------------------------------------------------------------

  /** `movsb`: byte [rdi] = [rsi], both advance (by DF); `'rep'` repeats rcx times. */
  movsb(prefix?: RepPrefix): this { return this.#string('movs', 'b', prefix, 0xa4, false); }
  /** `movsw`: as {@link Assembler.movsb}, 16 bits. */
  movsw(prefix?: RepPrefix): this { return this.#string('movs', 'w', prefix, 0xa4, false); }
  /** `movsd` (the string move, not SSE): as {@link Assembler.movsb}, 32 bits. */
  movsd(prefix?: RepPrefix): this { return this.#string('movs', 'd', prefix, 0xa4, false); }
  /** `movsq`: as {@link Assembler.movsb}, 64 bits. */
  movsq(prefix?: RepPrefix): this { return this.#string('movs', 'q', prefix, 0xa4, false); }
  /** `stosb`: byte [rdi] = al, rdi advances; `'rep'` repeats rcx times. */
  stosb(prefix?: RepPrefix): this { return this.#string('stos', 'b', prefix, 0xaa, false); }
  /** `stosw`: as {@link Assembler.stosb}, from ax. */
  stosw(prefix?: RepPrefix): this { return this.#string('stos', 'w', prefix, 0xaa, false); }
  /** `stosd`: as {@link Assembler.stosb}, from eax. */
  stosd(prefix?: RepPrefix): this { return this.#string('stos', 'd', prefix, 0xaa, false); }
  /** `stosq`: as {@link Assembler.stosb}, from rax. */
  stosq(prefix?: RepPrefix): this { return this.#string('stos', 'q', prefix, 0xaa, false); }
  /** `lodsb`: al = byte [rsi], rsi advances. */
  lodsb(prefix?: RepPrefix): this { return this.#string('lods', 'b', prefix, 0xac, false); }
  /** `lodsw`: as {@link Assembler.lodsb}, into ax. */
  lodsw(prefix?: RepPrefix): this { return this.#string('lods', 'w', prefix, 0xac, false); }
  /** `lodsd`: as {@link Assembler.lodsb}, into eax. */
  lodsd(prefix?: RepPrefix): this { return this.#string('lods', 'd', prefix, 0xac, false); }
  /** `lodsq`: as {@link Assembler.lodsb}, into rax. */
  lodsq(prefix?: RepPrefix): this { return this.#string('lods', 'q', prefix, 0xac, false); }
  /** `cmpsb`: compares byte [rsi] with [rdi]; `'repe'`/`'repne'` repeat while equal / not equal. */
  cmpsb(prefix?: RepCondPrefix): this { return this.#string('cmps', 'b', prefix, 0xa6, true); }
  /** `cmpsw`: as {@link Assembler.cmpsb}, 16 bits. */
  cmpsw(prefix?: RepCondPrefix): this { return this.#string('cmps', 'w', prefix, 0xa6, true); }
  /** `cmpsd` (the string compare, not SSE): as {@link Assembler.cmpsb}, 32 bits. */
  cmpsd(prefix?: RepCondPrefix): this { return this.#string('cmps', 'd', prefix, 0xa6, true); }
  /** `cmpsq`: as {@link Assembler.cmpsb}, 64 bits. */
  cmpsq(prefix?: RepCondPrefix): this { return this.#string('cmps', 'q', prefix, 0xa6, true); }
  /** `scasb`: compares al with byte [rdi]; `'repe'`/`'repne'` repeat while equal / not equal. */
  scasb(prefix?: RepCondPrefix): this { return this.#string('scas', 'b', prefix, 0xae, true); }
  /** `scasw`: as {@link Assembler.scasb}, with ax. */
  scasw(prefix?: RepCondPrefix): this { return this.#string('scas', 'w', prefix, 0xae, true); }
  /** `scasd`: as {@link Assembler.scasb}, with eax. */
  scasd(prefix?: RepCondPrefix): this { return this.#string('scas', 'd', prefix, 0xae, true); }
  /** `scasq`: as {@link Assembler.scasb}, with rax. */
  scasq(prefix?: RepCondPrefix): this { return this.#string('scas', 'q', prefix, 0xae, true); }
  /** `insb`: byte [rdi] = in(dx), rdi advances; `rep insb` is one string I/O exit carrying rcx bytes. */
  insb(prefix?: RepPrefix): this { return this.#string('ins', 'b', prefix, 0x6c, false); }
  /** `insw`: as {@link Assembler.insb}, 16 bits. */
  insw(prefix?: RepPrefix): this { return this.#string('ins', 'w', prefix, 0x6c, false); }
  /** `insd`: as {@link Assembler.insb}, 32 bits. */
  insd(prefix?: RepPrefix): this { return this.#string('ins', 'd', prefix, 0x6c, false); }
  /** `outsb`: out(dx) = byte [rsi], rsi advances; `rep outsb` is one string I/O exit carrying rcx bytes. */
  outsb(prefix?: RepPrefix): this { return this.#string('outs', 'b', prefix, 0x6e, false); }
  /** `outsw`: as {@link Assembler.outsb}, 16 bits. */
  outsw(prefix?: RepPrefix): this { return this.#string('outs', 'w', prefix, 0x6e, false); }
  /** `outsd`: as {@link Assembler.outsb}, 32 bits. */
  outsd(prefix?: RepPrefix): this { return this.#string('outs', 'd', prefix, 0x6e, false); }

  // --- system --------------------------------------------------------------------------------

  /** `hlt`: a KVM_EXIT_HLT without an in-kernel irqchip. */
  hlt(): this { return this.#raw([0xf4]); }
  /** `nop`. */
  nop(): this { return this.#raw([0x90]); }
  /** `pause`: the spin-wait hint. */
  pause(): this { return this.#raw([0xf3, 0x90]); }
  /** `cli`: clear IF. */
  cli(): this { return this.#raw([0xfa]); }
  /** `sti`: set IF (interrupts are taken after the next instruction). */
  sti(): this { return this.#raw([0xfb]); }
  /** `cld`: string instructions count upwards. */
  cld(): this { return this.#raw([0xfc]); }
  /** `std`: string instructions count downwards. */
  std(): this { return this.#raw([0xfd]); }
  /** `clc`: clear CF. */
  clc(): this { return this.#raw([0xf8]); }
  /** `stc`: set CF. */
  stc(): this { return this.#raw([0xf9]); }
  /** `cmc`: complement CF. */
  cmc(): this { return this.#raw([0xf5]); }
  /** `int3` (`CC`): the breakpoint trap. */
  int3(): this { return this.#raw([0xcc]); }
  /** `int1` (`F1`, ICEBP): a debug trap. */
  int1(): this { return this.#raw([0xf1]); }

  /** `int imm8` (`CD ib`): software interrupt `vector`; `int(3)` stays `CD 03` (see {@link Assembler.int3}). */
  int(vector: number): this {
    if (!Number.isInteger(vector) || vector < 0 || vector > 0xff) throw outOfRange(`int: operand 1 (${describe(vector)}) must be an interrupt vector in [0, 0xff]`);
    return this.#raw([0xcd, vector]);
  }

  /** `iretq`: 64-bit return from an interrupt or exception handler. */
  iretq(): this { return this.#raw([0x48, 0xcf]); }
  /** `ud2`: raises #UD. */
  ud2(): this { return this.#raw([0x0f, 0x0b]); }
  /** `vmcall` (`0F 01 C1`, Intel's hypercall): the KVM hypercall ABI takes rax = nr, rbx, rcx, rdx, rsi = arguments. */
  vmcall(): this { return this.#raw([0x0f, 0x01, 0xc1]); }
  /** `vmmcall` (`0F 01 D9`, AMD's hypercall). */
  vmmcall(): this { return this.#raw([0x0f, 0x01, 0xd9]); }
  /** `cpuid`: leaf eax, subleaf ecx, into eax, ebx, ecx, edx. */
  cpuid(): this { return this.#raw([0x0f, 0xa2]); }
  /** `rdmsr`: edx:eax = MSR[ecx]. */
  rdmsr(): this { return this.#raw([0x0f, 0x32]); }
  /** `wrmsr`: MSR[ecx] = edx:eax. */
  wrmsr(): this { return this.#raw([0x0f, 0x30]); }
  /** `rdtsc`: edx:eax = time-stamp counter. */
  rdtsc(): this { return this.#raw([0x0f, 0x31]); }
  /** `rdtscp`: as `rdtsc`, and ecx = TSC_AUX. */
  rdtscp(): this { return this.#raw([0x0f, 0x01, 0xf9]); }
  /** `wbinvd`: write back and invalidate caches. */
  wbinvd(): this { return this.#raw([0x0f, 0x09]); }
  /** `mfence`. */
  mfence(): this { return this.#raw([0x0f, 0xae, 0xf0]); }
  /** `lfence`. */
  lfence(): this { return this.#raw([0x0f, 0xae, 0xe8]); }
  /** `sfence`. */
  sfence(): this { return this.#raw([0x0f, 0xae, 0xf8]); }

  /**
   * The `lock` prefix (`F0`) for the instruction added next: `a.lock().xadd(mem.qword('rdi'), 'rax')`.
   * That instruction must be one the CPU can lock (add, adc, and, or, sbb, sub, xor,
   * inc, dec, neg, not, xchg, cmpxchg, xadd) with a memory destination; anything
   * else would raise #UD, so it is refused.
   */
  lock(): this {
    if (this.#lock) throw new ArgumentTypeError('ERR_INVALID_OPERANDS', 'lock: the previous lock() has no instruction yet');
    this.#lock = true;
    return this;
  }

  /** `lgdt m`: loads GDTR from a 10-byte pseudo-descriptor (limit u16, base u64). */
  lgdt(src: Mem): this { return this.#descriptor('lgdt', src, 2); }
  /** `lidt m`: loads IDTR from a 10-byte pseudo-descriptor (limit u16, base u64). */
  lidt(src: Mem): this { return this.#descriptor('lidt', src, 3); }
  /** `sgdt m`: stores GDTR. */
  sgdt(dst: Mem): this { return this.#descriptor('sgdt', dst, 0); }
  /** `sidt m`: stores IDTR. */
  sidt(dst: Mem): this { return this.#descriptor('sidt', dst, 1); }
  /** `invlpg m`: drops the TLB entry of the page holding the operand's address. */
  invlpg(addr: Mem): this { return this.#descriptor('invlpg', addr, 7); }

  // --- internals -----------------------------------------------------------------------------

  #push(item: Item): this {
    if (this.#lock) {
      const what = item.kind === 'label' ? `label '${item.name}'` : item.kind === 'var' ? item.insn : item.kind === 'align' ? 'align' : 'an instruction or data that cannot be locked';
      throw new ArgumentTypeError('ERR_INVALID_OPERANDS', `lock: must be followed by a lockable instruction with a memory destination, not ${what}`);
    }
    this.#items.push(item);
    this.#layout = undefined;
    return this;
  }

  #raw(bytes: number[]): this {
    return this.#push({ kind: 'bytes', bytes });
  }

  /**
   * An instruction with one encoding: encoded (and checked) now, unless it depends
   * on label positions.
   */
  #emit(insn: string, enc: Enc): this {
    const labels = [...(enc.rm?.kind === 'mem' ? memLabels(enc.rm.mem) : []), ...(enc.imm ? labelsOf(enc.imm.value) : [])];
    // A RIP-relative target depends on where the instruction ends up, label or not.
    if (labels.length > 0 || (enc.rm?.kind === 'mem' && enc.rm.mem.target !== undefined)) return this.#variable(insn, [enc], labels);
    const bytes = encode(fixed(), insn, this.#locked(insn, [enc])[0]!);
    this.#lock = false;
    return this.#push({ kind: 'bytes', bytes });
  }

  /** An instruction whose bytes depend on label positions: encodings from shortest to longest. */
  #variable(insn: string, encodings: Enc[], labels: string[]): this {
    const encs = this.#locked(insn, encodings);
    const forms = encs.map((e) => ({ length: encode(sizing(), insn, e).length, encode: (p: Pass) => encode(p, insn, e) }));
    this.#lock = false;
    return this.#form(insn, forms, labels);
  }

  /**
   * `encs` with a pending lock() added (after 0x66, the order GNU as writes), or an
   * error if the instruction cannot be locked. The lock stays pending until the
   * instruction is added.
   */
  #locked(insn: string, encs: Enc[]): Enc[] {
    if (!this.#lock) return encs;
    if (!LOCKABLE.has(insn)) throw new ArgumentTypeError('ERR_INVALID_OPERANDS', `lock: ${insn} cannot be locked (the CPU raises #UD)`);
    if (encs[0]!.rm?.kind !== 'mem') {
      throw new ArgumentTypeError('ERR_INVALID_OPERANDS', `lock: ${insn} has a register destination; only a memory destination can be locked (#UD otherwise)`);
    }
    return encs.map((e) => ({ ...e, prefixes: [...(e.prefixes ?? []), 0xf0] }));
  }

  #form(insn: string, forms: Form[], labels: string[]): this {
    return this.#push({ kind: 'var', insn, forms, labels, choice: 0 });
  }

  #data(insn: string, bytes: 1 | 2 | 4 | 8, value: Immediate): this {
    const v = this.#op(insn, 1, value, { imm: true, only: ['imm'] }) as ImmOp;
    const field: ImmField = { op: v, value: v.value, bytes, opBits: bytes * 8 };
    if (typeof v.value === 'bigint') return this.#push({ kind: 'bytes', bytes: immBytes(fixed(), insn, field) });
    return this.#form(insn, [{ length: bytes, encode: (p) => immBytes(p, insn, field) }], labelsOf(v.value));
  }

  #value(insn: string, pos: number, value: unknown): AsmValue {
    if (!(value instanceof AsmValue)) {
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${insn}: operand ${pos} must be an AsmValue, got ${describe(value)}`);
    }
    if (value.owner !== this) throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${insn}: operand ${pos} (${value}) belongs to another Assembler`);
    return value;
  }

  /** Classifies an operand; `imm` and `sys` admit immediates and control/debug registers. */
  #op(insn: string, pos: number, x: unknown, allow: { imm?: boolean; sys?: boolean; only?: Array<Op['kind']> } = {}): Op {
    let op: Op;
    if (typeof x === 'string') {
      const reg = GPRS.get(x);
      if (reg) op = { kind: 'reg', pos, reg };
      else if (CREG_NUM.has(x)) op = { kind: 'cr', pos, name: x, num: CREG_NUM.get(x)! };
      else if (DREG_NUM.has(x)) op = { kind: 'dr', pos, name: x, num: DREG_NUM.get(x)! };
      else {
        const hint = /^cr[1567]$/.test(x) ? ' (CR1, CR5, CR6 and CR7 do not exist)' : '';
        throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${insn}: operand ${pos} ('${x}') is not a register name${hint}`);
      }
    } else if (x instanceof Mem) {
      op = { kind: 'mem', pos, mem: x };
      if (x.disp instanceof AsmValue) this.#value(insn, pos, x.disp);
      if (x.target instanceof AsmValue) this.#value(insn, pos, x.target);
    } else if (x instanceof AsmValue) {
      op = { kind: 'imm', pos, value: this.#value(insn, pos, x) };
    } else if (typeof x === 'number' || typeof x === 'bigint') {
      const v = integer(x);
      if (v === undefined) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${insn}: operand ${pos} (${describe(x)}) must be an integer: a safe integer number or a bigint`);
      op = { kind: 'imm', pos, value: v };
    } else {
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE',
        `${insn}: operand ${pos} must be a register name, a memory operand (mem(...)) or an integer, got ${describe(x)}`);
    }
    if (op.kind === 'imm' && !allow.imm) throw badOperand(insn, op, 'cannot be an immediate here');
    if ((op.kind === 'cr' || op.kind === 'dr') && !allow.sys) throw badOperand(insn, op, 'cannot be a control or debug register here');
    if (allow.only && !allow.only.includes(op.kind)) {
      const names: Record<Op['kind'], string> = { reg: 'a register', mem: 'memory', imm: 'an immediate', cr: 'a control register', dr: 'a debug register' };
      throw badOperand(insn, op, `must be ${allow.only.map((k) => names[k]).join(' or ')}`);
    }
    return op;
  }

  /** A general-purpose register operand of one of `sizes`. */
  #reg(insn: string, pos: number, x: unknown, sizes: Bits[]): RegOp {
    const op = this.#op(insn, pos, x);
    if (op.kind !== 'reg') throw badOperand(insn, op, 'must be a register');
    if (!sizes.includes(op.reg.bits)) throw sizeError(insn, op, `is ${op.reg.bits}-bit; ${insn} takes ${sizes.join('/')}-bit registers here`);
    return op;
  }

  /**
   * The operation size of `op`: its register's, or its memory operand's, which must
   * agree with `want`; memory without a size takes `want`, and is an error without one.
   */
  #sizeOf(insn: string, op: Op, want: number | undefined, needs = 'no register operand'): Bits {
    if (op.kind === 'reg') {
      if (want !== undefined && op.reg.bits !== want) throw sizeError(insn, op, `is ${op.reg.bits}-bit, but the operation is ${want}-bit`);
      return op.reg.bits;
    }
    if (op.kind !== 'mem') throw badOperand(insn, op, 'must be a register or memory');
    const size = op.mem.size ? SIZE_BITS[op.mem.size] : undefined;
    if (size !== undefined && want !== undefined && size !== want) {
      throw sizeError(insn, op, `is ${size}-bit, but the operation is ${want}-bit`);
    }
    const bits = size ?? want;
    if (bits === undefined) {
      throw sizeError(insn, op, `needs a size with ${needs}: use mem.byte, mem.word, mem.dword or mem.qword`);
    }
    return bits as Bits;
  }

  #sameSize(insn: string, a: RegOp, b: RegOp): Bits {
    if (a.reg.bits !== b.reg.bits) throw sizeError(insn, b, `is ${b.reg.bits}-bit, but operand ${a.pos} (${a.reg.name}) is ${a.reg.bits}-bit`);
    return a.reg.bits;
  }

  /** Two-operand forms without immediates: `op8/op` with ModRM.rm = dst (MR), `opRm8/opRm` with rm = src (RM). */
  #regRm(insn: string, d: Op, s: Op, mr8: number, rm8: number): this {
    if (d.kind === 'reg' && s.kind === 'reg') {
      const bits = this.#sameSize(insn, d, s);
      return this.#emit(insn, { ...opSize(bits), opcode: [mr8 + (bits === 8 ? 0 : 1)], reg: s, rm: d });
    }
    if (d.kind === 'mem' && s.kind === 'mem') throw badOperand(insn, s, 'cannot be memory when operand 1 is: x86 has no memory-to-memory form');
    if (d.kind === 'reg' && s.kind === 'mem') {
      const bits = this.#sizeOf(insn, s, d.reg.bits);
      return this.#emit(insn, { ...opSize(bits), opcode: [rm8 + (bits === 8 ? 0 : 1)], reg: d, rm: s });
    }
    if (d.kind === 'mem' && s.kind === 'reg') {
      const bits = this.#sizeOf(insn, d, s.reg.bits);
      return this.#emit(insn, { ...opSize(bits), opcode: [mr8 + (bits === 8 ? 0 : 1)], reg: s, rm: d });
    }
    throw badOperand(insn, d.kind === 'reg' || d.kind === 'mem' ? s : d, 'must be a register or memory');
  }

  #alu(insn: AluName, dst: unknown, src: unknown): this {
    const n = ALU[insn];
    const d = this.#op(insn, 1, dst, { only: ['reg', 'mem'] });
    const s = this.#op(insn, 2, src, { imm: true });
    if (s.kind !== 'imm') return this.#regRm(insn, d, s, n * 8, n * 8 + 2);
    const bits = this.#sizeOf(insn, d, undefined, 'an immediate source');
    const rm = d as RegOp | MemOp;
    const acc = d.kind === 'reg' && d.reg.num === 0 && !d.reg.high;
    if (bits === 8) {
      if (acc) return this.#emit(insn, { opcode: [n * 8 + 4], imm: imm(s, 1, 8) });
      return this.#emit(insn, { opcode: [0x80], reg: n, rm, imm: imm(s, 1, 8) });
    }
    const wide = Math.min(bits / 8, 4) as 2 | 4;
    const short: Enc = { ...opSize(bits), opcode: [0x83], reg: n, rm, imm: imm(s, 1, bits) };
    const long: Enc = acc
      ? { ...opSize(bits), opcode: [n * 8 + 5], imm: imm(s, wide, bits) }
      : { ...opSize(bits), opcode: [0x81], reg: n, rm, imm: imm(s, wide, bits) };
    if (typeof s.value !== 'bigint') return this.#variable(insn, [short, long], [...labelsOf(s.value), ...(rm.kind === 'mem' ? memLabels(rm.mem) : [])]);
    return this.#emit(insn, fits(s.value, bits, 8) ? short : long);
  }

  #unary(insn: UnaryName, dst: unknown): this {
    const [op, ext] = UNARY[insn];
    return this.#unaryOp(insn, dst, op, ext);
  }

  #unaryOp(insn: string, dst: unknown, op: number, ext: number): this {
    const d = this.#op(insn, 1, dst, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    const bits = this.#sizeOf(insn, d, undefined);
    return this.#emit(insn, { ...opSize(bits), opcode: [bits === 8 ? op : op + 1], reg: ext, rm: d });
  }

  #imulImm(insn: string, d: RegOp, s: RegOp | MemOp, f: ImmOp): this {
    const bits = d.reg.bits;
    const short: Enc = { ...opSize(bits), opcode: [0x6b], reg: d, rm: s, imm: imm(f, 1, bits) };
    const long: Enc = { ...opSize(bits), opcode: [0x69], reg: d, rm: s, imm: imm(f, Math.min(bits / 8, 4) as 2 | 4, bits) };
    if (typeof f.value !== 'bigint') return this.#variable(insn, [short, long], [...labelsOf(f.value), ...(s.kind === 'mem' ? memLabels(s.mem) : [])]);
    return this.#emit(insn, fits(f.value, bits, 8) ? short : long);
  }

  #shift(insn: ShiftName, dst: unknown, count: unknown): this {
    const n = SHIFT[insn];
    const d = this.#op(insn, 1, dst, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    const bits = this.#sizeOf(insn, d, undefined, 'a shift count');
    const base = opSize(bits);
    const wide = bits === 8 ? 0 : 1;
    if (count === 'cl') return this.#emit(insn, { ...base, opcode: [0xd2 + wide], reg: n, rm: d });
    if (typeof count === 'string') {
      const c = this.#op(insn, 2, count);
      throw badOperand(insn, c, 'must be an immediate count or cl');
    }
    if (typeof count !== 'number' || !Number.isInteger(count)) {
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${insn}: operand 2 (${describe(count)}) must be an integer count or 'cl'`);
    }
    const max = bits === 64 ? 63 : 31;
    if (count < 0 || count > max) {
      throw outOfRange(`${insn}: operand 2 (${count}) must be a count in [0, ${max}]: the CPU masks ${bits === 64 ? '64-bit counts to 6 bits' : 'counts to 5 bits'}`);
    }
    if (count === 1) return this.#emit(insn, { ...base, opcode: [0xd0 + wide], reg: n, rm: d });
    const c: ImmOp = { kind: 'imm', pos: 2, value: BigInt(count) };
    return this.#emit(insn, { ...base, opcode: [0xc0 + wide], reg: n, rm: d, imm: imm(c, 1, 8) });
  }

  #extend(insn: 'movzx' | 'movsx', dst: unknown, src: unknown, op: number): this {
    const d = this.#reg(insn, 1, dst, [16, 32, 64]);
    const s = this.#op(insn, 2, src, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    const bits = s.kind === 'reg' ? s.reg.bits : s.mem.size ? SIZE_BITS[s.mem.size] : undefined;
    if (bits === undefined) throw sizeError(insn, s, 'needs a size: use mem.byte or mem.word (mem.dword for movsx into a 64-bit register)');
    if (insn === 'movsx' && bits === 32 && d.reg.bits === 64) return this.#emit(insn, { w: true, opcode: [0x63], reg: d, rm: s });
    if (bits >= d.reg.bits || bits > 16) {
      throw sizeError(insn, s, `is ${bits}-bit; ${insn} into a ${d.reg.bits}-bit register takes an 8-bit${d.reg.bits > 16 ? ' or 16-bit' : ''} source`);
    }
    return this.#emit(insn, { ...opSize(d.reg.bits), opcode: [0x0f, op + (bits === 8 ? 0 : 1)], reg: d, rm: s });
  }

  #mr(insn: string, dst: unknown, src: unknown, opcode: [number, number]): this {
    const d = this.#op(insn, 1, dst, { only: ['reg', 'mem'] }) as RegOp | MemOp;
    const s = this.#op(insn, 2, src, { only: ['reg'] }) as RegOp;
    const bits = d.kind === 'reg' ? this.#sameSize(insn, d, s) : this.#sizeOf(insn, d, s.reg.bits);
    return this.#emit(insn, { ...opSize(bits), opcode: [opcode[0], opcode[1] + (bits === 8 ? 0 : 1)], reg: s, rm: d });
  }

  #pushPop(insn: string, op: Op, plusOp: number, memOp: number[], ext: number): this {
    if (op.kind === 'reg') {
      if (op.reg.bits !== 64 && op.reg.bits !== 16) throw sizeError(insn, op, `is ${op.reg.bits}-bit; 64-bit code pushes and pops 64-bit (or 16-bit) registers`);
      return this.#emit(insn, { ...opSize(op.reg.bits === 16 ? 16 : 32), opcode: [plusOp], plus: op });
    }
    if (op.kind !== 'mem') throw badOperand(insn, op, 'must be a register or memory');
    const bits = op.mem.size ? SIZE_BITS[op.mem.size] : 64;
    if (bits !== 64 && bits !== 16) throw sizeError(insn, op, `is ${bits}-bit; 64-bit code pushes and pops qword (or word) memory`);
    return this.#emit(insn, { ...opSize(bits === 16 ? 16 : 32), opcode: memOp, reg: ext, rm: op });
  }

  #indirect(insn: string, target: Reg64 | Mem, ext: number, options: JumpOptions | undefined): this {
    if (options?.size !== undefined) throw new ArgumentTypeError('ERR_INVALID_OPERANDS', `${insn}: options.size applies to a label or address target, not an indirect one`);
    const t = this.#op(insn, 1, target) as RegOp | MemOp;
    if (t.kind === 'reg' && t.reg.bits !== 64) throw sizeError(insn, t, `is ${t.reg.bits}-bit; an indirect ${insn} takes a 64-bit register`);
    if (t.kind === 'mem' && t.mem.size !== undefined && t.mem.size !== 'qword') throw sizeError(insn, t, `must be qword: an indirect ${insn} reads a 64-bit address`);
    return this.#emit(insn, { opcode: [0xff], reg: ext, rm: t });
  }

  #branch(insn: string, target: unknown, short: number[] | undefined, near: number[] | undefined, options: JumpOptions | undefined): this {
    if (options !== undefined && (typeof options !== 'object' || options === null)) {
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${insn}: options must be an object, got ${describe(options)}`);
    }
    const size = options?.size;
    if (size !== undefined && size !== 'short' && size !== 'near') {
      throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${insn}: options.size ${describe(size)} must be 'short' or 'near'`);
    }
    const t = checkTarget(`${insn}: operand 1`, target);
    if (t instanceof AsmValue) this.#value(insn, 1, t);
    const shown = typeof t === 'string' ? `label '${t}'` : typeof t === 'bigint' ? `address ${hex(t)}` : String(t);
    const addressOf = (p: Pass): bigint => (typeof t === 'string' ? p.origin + BigInt(p.offset(t)) : valueOf(p, t));
    const form = (opcode: number[], bytes: 1 | 4): Form => {
      const length = opcode.length + bytes;
      return {
        length,
        encode: (p) => {
          const rel = addressOf(p) - (p.origin + BigInt(p.at + length));
          if (rangeFails(p, bytes === 1 ? s8(rel) : s32(rel))) {
            const reach = bytes === 1 ? `the -128..127 bytes a ${near ? 'short ' : ''}${insn} reaches` : 'rel32 reach';
            throw outOfRange(`${insn}: operand 1 (${shown}) is ${rel} bytes from the end of the instruction, beyond ${reach}`);
          }
          return [...opcode, ...le(rel, bytes)];
        },
      };
    };
    const forms: Form[] = [];
    if (short && size !== 'near') forms.push(form(short, 1));
    if (near && size !== 'short') forms.push(form(near, 4));
    return this.#form(insn, forms, labelsOf(t));
  }

  #io(insn: 'in' | 'out', acc: unknown, port: unknown, accPos: number, portPos: number, immOp: number, dxOp: number): this {
    const a = this.#op(insn, accPos, acc);
    if (a.kind !== 'reg' || a.reg.num !== 0 || a.reg.high || a.reg.bits === 64) throw badOperand(insn, a, 'must be al, ax or eax');
    const prefixes = a.reg.bits === 16 ? [0x66] : [];
    const wide = a.reg.bits === 8 ? 0 : 1;
    if (port === 'dx') return this.#raw([...prefixes, dxOp + wide]);
    if (typeof port === 'number' || typeof port === 'bigint') {
      const p = integer(port);
      if (p === undefined || p < 0n || p > 0xffn) {
        throw outOfRange(`${insn}: operand ${portPos} (${describe(port)}) must be a port in [0, 0xff]; use dx for ports above 0xff`);
      }
      return this.#raw([...prefixes, immOp + wide, Number(p)]);
    }
    const p = this.#op(insn, portPos, port);
    throw badOperand(insn, p, 'must be a port number or dx');
  }

  #string(base: string, width: StringWidth, prefix: unknown, opcode: number, conditional: boolean): this {
    const insn = `${base}${width}`;
    // 66 before the repeat prefix, the order GNU as writes them in.
    const out: number[] = width === 'w' ? [0x66] : [];
    if (prefix !== undefined) {
      const allowed = conditional ? ['rep', 'repe', 'repz', 'repne', 'repnz'] : ['rep'];
      if (typeof prefix !== 'string' || !allowed.includes(prefix)) {
        throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${insn}: prefix ${describe(prefix)} must be ${allowed.map((x) => `'${x}'`).join(', ')}`);
      }
      out.push(prefix === 'repne' || prefix === 'repnz' ? 0xf2 : 0xf3);
    }
    if (width === 'q') out.push(0x48);
    out.push(width === 'b' ? opcode : opcode + 1);
    return this.#raw(out);
  }

  #descriptor(insn: string, operand: unknown, ext: number): this {
    const m = this.#op(insn, 1, operand, { only: ['mem'] }) as MemOp;
    return this.#emit(insn, { opcode: [0x0f, 0x01], reg: ext, rm: m });
  }

  #laidOut(): Layout {
    if (this.#lock) throw new ArgumentTypeError('ERR_INVALID_OPERANDS', 'lock: must be followed by a lockable instruction with a memory destination, not the end of the code');
    if (this.#layout) return this.#layout;
    const items = this.#items;
    const labelItem = new Map<string, number>();
    items.forEach((item, i) => {
      if (item.kind === 'label') labelItem.set(item.name, i);
    });
    for (const item of items) {
      if (item.kind !== 'var') continue;
      for (const l of item.labels) {
        if (!labelItem.has(l)) throw new ArgumentRangeError('ERR_UNDEFINED_LABEL', `${item.insn}: label '${l}' is not defined`);
      }
      item.choice = 0;
    }
    // Items start in their shortest form and only grow, so the rounds end. Each
    // decision sees exact positions: everything before the item is already laid out
    // in this round, and what follows moved by the growth so far (or, past an align,
    // is walked to). So an item grows only if it does not fit with everything before
    // it already grown, as GNU as's relaxation decides; without alignment, distances
    // only grow with the code, so no item grows needlessly and the code is the shortest.
    const n = items.length;
    const starts = new Array<number>(n + 1).fill(0);
    const alignsBefore = new Array<number>(n + 1).fill(0);
    for (let i = 0; i < n; i++) alignsBefore[i + 1] = alignsBefore[i]! + (items[i]!.kind === 'align' ? 1 : 0);
    for (let i = 0, at = 0; i <= n; i++) {
      starts[i] = at;
      if (i < n) at += this.#sizeAt(items[i]!, at);
    }
    for (let grew = true; grew;) {
      grew = false;
      let at = 0;
      for (let i = 0; i < n; i++) {
        const item = items[i]!;
        const shift = at - starts[i]!;
        starts[i] = at;
        if (item.kind === 'var') {
          const offset = (label: string): number => {
            const k = labelItem.get(label)!;
            if (k < i) return starts[k]!;
            if (alignsBefore[k] === alignsBefore[i + 1]) return starts[k]! + shift;
            let pos = at + item.forms[item.choice]!.length;
            for (let j = i + 1; j < k; j++) pos += this.#sizeAt(items[j]!, pos);
            return pos;
          };
          let c = item.choice;
          for (; c < item.forms.length - 1; c++) {
            const p: Pass = { at, origin: this.origin, mode: 'check', failed: false, offset };
            item.forms[c]!.encode(p);
            if (!p.failed) break;
          }
          if (c !== item.choice) {
            item.choice = c;
            grew = true;
          }
        }
        at += this.#sizeAt(item, at);
      }
      starts[n] = at;
    }
    const pass = (i: number): Pass => ({
      at: starts[i]!, origin: this.origin, mode: 'throw', failed: false, offset: (l) => starts[labelItem.get(l)!]!,
    });
    const code = new Uint8Array(starts[items.length]!);
    items.forEach((item, i) => {
      const at = starts[i]!;
      if (item.kind === 'bytes') code.set(item.bytes, at);
      else if (item.kind === 'align') code.fill(item.fill, at, starts[i + 1]!);
      else if (item.kind === 'var') {
        const form = item.forms[item.choice]!;
        const bytes = form.encode(pass(i));
        if (bytes.length !== form.length) throw new Error(`${item.insn}: internal error: form length ${bytes.length} != ${form.length}`);
        code.set(bytes, at);
      }
    });
    const offsets = new Map<string, number>();
    for (const [name, i] of labelItem) offsets.set(name, starts[i]!);
    this.#layout = { code, offsets };
    return this.#layout;
  }

  #sizeAt(item: Item, at: number): number {
    switch (item.kind) {
      case 'bytes': return item.bytes.length;
      case 'label': return 0;
      case 'var': return item.forms[item.choice]!.length;
      case 'align': {
        const misalign = Number((this.origin + BigInt(at)) % BigInt(item.boundary));
        return misalign ? item.boundary - misalign : 0;
      }
    }
  }
}

function condition(insn: string, cond: unknown): number {
  if (typeof cond !== 'string' || !Object.hasOwn(CONDITIONS, cond)) {
    throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${insn}: operand 1 ${describe(cond)} is not a condition (o, no, b, ae, e, ne, be, a, s, ns, p, np, l, ge, le, g or an alias)`);
  }
  return CONDITIONS[cond as Condition];
}

function imm(op: ImmOp, bytes: 1 | 2 | 4 | 8, opBits: number): ImmField {
  return { op, value: op.value, bytes, opBits };
}

/** Prefix and REX.W for an operation size. */
function opSize(bits: number): { prefixes?: number[]; w?: boolean } {
  if (bits === 16) return { prefixes: [0x66] };
  if (bits === 64) return { w: true };
  return {};
}

