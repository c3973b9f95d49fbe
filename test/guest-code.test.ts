import { describe, expect, it } from 'vitest';
import {
  decodeSegmentDescriptor,
  DEFAULT_LOAD_ADDRESS,
  DEFAULT_PORT,
  encodeSegmentDescriptor,
  type GuestProgram,
  hypercall,
  longHypercall,
  longModeSetup,
  type LongModeSetup,
  longReadAndReport,
  longTouch,
  longWritePattern,
  outLoop,
  readAndReport,
  spin,
  touch,
  writePattern,
} from '../lib/guest/programs';

interface Insn {
  offset: number;
  text: string;
  length: number;
  imm?: bigint;
  /** Offset of the branch target, for relative jumps. */
  target?: number;
}

const REG16 = ['ax', 'cx', 'dx', 'bx', 'sp', 'bp', 'si', 'di'];
const REG32 = REG16.map((r) => `e${r}`);
const REG64 = REG16.map((r) => `r${r}`);

function le(bytes: Uint8Array, at: number, n: number): bigint {
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[at + i]!);
  return v;
}

/**
 * Decodes exactly the instructions lib/guest-code.ts emits; anything else throws, so a
 * test fails if a program holds a byte that is not part of a known instruction.
 */
function disassemble(program: GuestProgram): Insn[] {
  const b = program.bytes;
  const long = program.mode === 'long';
  const out: Insn[] = [];
  let i = 0;
  while (i < b.length) {
    const at = i;
    const op = b[i]!;
    const push = (text: string, length: number, imm?: bigint, target?: number): void => {
      const insn: Insn = { offset: at, text, length };
      if (imm !== undefined) insn.imm = imm;
      if (target !== undefined) insn.target = target;
      out.push(insn);
      i = at + length;
    };
    const rel8 = (len: number): number => at + len + ((b[at + len - 1]! << 24) >> 24);
    if (op === 0x66 && !long && b[i + 1]! >= 0xb8 && b[i + 1]! <= 0xbf) push(`mov ${REG32[b[i + 1]! - 0xb8]}, imm32`, 6, le(b, i + 2, 4));
    else if (op === 0x66 && !long && b[i + 1] === 0xef) push('out dx, eax', 2);
    else if (op === 0x48 && long && b[i + 1]! >= 0xb8 && b[i + 1]! <= 0xbf) push(`movabs ${REG64[b[i + 1]! - 0xb8]}, imm64`, 10, le(b, i + 2, 8));
    else if (op >= 0xb8 && op <= 0xbf) {
      if (long) push(`mov ${REG32[op - 0xb8]}, imm32`, 5, le(b, i + 1, 4));
      else push(`mov ${REG16[op - 0xb8]}, imm16`, 3, le(b, i + 1, 2));
    } else if (op === 0xb0) push('mov al, imm8', 2, le(b, i + 1, 1));
    else if (op === 0x8e && b[i + 1] === 0xd8) push('mov ds, ax', 2);
    else if (op === 0x8e && b[i + 1] === 0xc3) push('mov es, bx', 2);
    else if (op === 0xa0 && !long) push('mov al, [moffs16]', 3, le(b, i + 1, 2));
    else if (op === 0x8a && b[i + 1] === 0x06 && long) push('mov al, [rsi]', 2);
    else if (op === 0xac) push('lodsb', 1);
    else if (op === 0xf3 && b[i + 1] === 0xaa) push('rep stosb', 2);
    else if (op === 0xfc) push('cld', 1);
    else if (op === 0xee) push('out dx, al', 1);
    else if (op === 0xef && long) push('out dx, eax', 1);
    else if (op === 0xf4) push('hlt', 1);
    else if (op === 0xe2) push('loop', 2, undefined, rel8(2));
    else if (op === 0xe3) push(long ? 'jrcxz' : 'jcxz', 2, undefined, rel8(2));
    else if (op === 0xeb) push('jmp', 2, undefined, rel8(2));
    else if (op === 0x0f && b[i + 1] === 0x01 && b[i + 2] === 0xc1) push('vmcall', 3);
    else if (op === 0x0f && b[i + 1] === 0x01 && b[i + 2] === 0xd9) push('vmmcall', 3);
    else throw new Error(`${program.name}: unknown instruction byte 0x${op.toString(16)} at offset ${at}`);
  }
  return out;
}

function texts(program: GuestProgram): string[] {
  return disassemble(program).map((x) => x.text);
}

/** Every relative branch lands on an instruction boundary inside the program. */
function expectBranchesValid(program: GuestProgram): void {
  const insns = disassemble(program);
  const starts = new Set(insns.map((x) => x.offset));
  for (const x of insns) if (x.target !== undefined) expect(starts.has(x.target), `${program.name}: ${x.text} at ${x.offset}`).toBe(true);
}

function endsInHaltForever(program: GuestProgram): void {
  const insns = disassemble(program);
  const [hlt, jmp] = insns.slice(-2);
  expect(hlt!.text).toBe('hlt');
  expect(jmp!.text).toBe('jmp');
  expect(jmp!.target).toBe(hlt!.offset);
}

const finishing: GuestProgram[] = [
  readAndReport(0x2000, 16, 0x3f8),
  readAndReport(0x2000f, 0xffff, 0x3f8),
  readAndReport(0x2000, 0),
  writePattern(0x3000, 100, 0x5a, 0x3f8),
  writePattern(0x4000f, 0xffff, 0xa5),
  touch(0xb8000, 0x3f8),
  hypercall(0x77, 1, 2, 3),
  hypercall(12, 0x100000, 1, 0x10, { reportPort: 0x3f8 }),
  longReadAndReport(1n << 32n, 64, 0x3f8),
  longWritePattern(1n << 32n, 64, 0xc3, 0x3f8),
  longTouch(0x8000_0000n, 0x3f8),
  longHypercall(12, [1n << 32n, 2, 0x10], { reportPort: 0x3f8 }),
];

describe('every program', () => {
  it('decodes into known instructions whose branches land on instruction boundaries', () => {
    for (const p of [...finishing, outLoop(), spin(), spin({ mode: 'long' })]) expectBranchesValid(p);
  });

  it('that finishes ends in hlt followed by a jmp back to the hlt', () => {
    for (const p of finishing) endsInHaltForever(p);
  });

  it('loads at 0x1000 by default with entry = load address', () => {
    for (const p of [...finishing, outLoop(), spin()]) {
      expect(p.loadAddress).toBe(DEFAULT_LOAD_ADDRESS);
      expect(p.entry).toBe(p.loadAddress);
    }
    expect(DEFAULT_LOAD_ADDRESS).toBe(0x1000n);
  });

  it('takes a load address and reports it as bigint', () => {
    const p = outLoop(0x3f8, { loadAddress: 0xf000 });
    expect(p.loadAddress).toBe(0xf000n);
    expect(p.entry).toBe(0xf000n);
    expect(longTouch(0n, 0x3f8, { loadAddress: 1n << 32n }).entry).toBe(1n << 32n);
  });

  it('refuses a real-mode load address above 0xf000', () => {
    expect(() => outLoop(0x3f8, { loadAddress: 0xf001 })).toThrow(RangeError);
    expect(() => outLoop(0x3f8, { loadAddress: 0x10000 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  });

  it('is frozen', () => {
    expect(Object.isFrozen(outLoop())).toBe(true);
  });
});

describe('outLoop', () => {
  it('is the benchmark guest of the C baseline', () => {
    expect([...outLoop(0x3f8).bytes]).toEqual([0xba, 0xf8, 0x03, 0xee, 0xeb, 0xfd]);
    expect(DEFAULT_PORT).toBe(0x3f8);
    expect(outLoop().mode).toBe('real');
  });

  it('encodes the port little-endian and jumps back to the out', () => {
    const insns = disassemble(outLoop(0x1234));
    expect(insns.map((x) => x.text)).toEqual(['mov dx, imm16', 'out dx, al', 'jmp']);
    expect(insns[0]!.imm).toBe(0x1234n);
    expect([...outLoop(0x1234).bytes.subarray(1, 3)]).toEqual([0x34, 0x12]);
    expect(insns[2]!.target).toBe(insns[1]!.offset);
  });

  it('refuses a port above 0xffff', () => {
    expect(() => outLoop(0x10000)).toThrow(RangeError);
    expect(() => outLoop(-1)).toThrow(RangeError);
  });
});

describe('readAndReport', () => {
  it('loads ds:si from the address and loops lodsb/out over the length', () => {
    const insns = disassemble(readAndReport(0x9fff5, 300, 0x80));
    expect(insns.map((x) => x.text)).toEqual([
      'mov dx, imm16', 'cld', 'mov ax, imm16', 'mov ds, ax', 'mov si, imm16', 'mov cx, imm16',
      'lodsb', 'out dx, al', 'loop', 'hlt', 'jmp',
    ]);
    expect(insns.filter((x) => x.imm !== undefined).map((x) => x.imm)).toEqual([0x80n, 0x9fffn, 5n, 300n]);
    expect(insns[8]!.target).toBe(insns[6]!.offset);
  });

  it('splits a range that crosses a 64 KiB window into two ds loads', () => {
    const imms = disassemble(readAndReport(0x2000f, 0xffff)).filter((x) => x.imm !== undefined).map((x) => x.imm);
    // port; seg 0x2000 off 0xf count 0xfff1; seg 0x3000 off 0 count 0xe
    expect(imms).toEqual([0x3f8n, 0x2000n, 0xfn, 0xfff1n, 0x3000n, 0n, 0xen]);
  });

  it('reaches above 1 MiB through ds = 0xffff', () => {
    const imms = disassemble(readAndReport(0xffff8, 0x20)).filter((x) => x.imm !== undefined).map((x) => x.imm);
    expect(imms).toEqual([0x3f8n, 0xffffn, 8n, 0x20n]);
  });

  it('with length 0 only sets up and halts', () => {
    expect(texts(readAndReport(0x2000, 0))).toEqual(['mov dx, imm16', 'cld', 'hlt', 'jmp']);
  });

  it('refuses addresses and lengths real mode cannot reach', () => {
    expect(() => readAndReport(0x100000, 1)).toThrow(RangeError);
    expect(() => readAndReport(0xfffff, 0xfff2)).toThrow(RangeError); // past 0xffff:0xffff
    expect(() => readAndReport(0x2000, 0x10000)).toThrow(RangeError);
    expect(() => readAndReport(0x2000, 1.5)).toThrow(TypeError);
    expect(() => readAndReport(0xfffff, 0xfff1)).not.toThrow();
  });
});

describe('writePattern', () => {
  it('keeps the fill byte in al: segments go through bx', () => {
    const insns = disassemble(writePattern(0x3000, 100, 0x5a, 0x3f8));
    expect(insns.map((x) => x.text)).toEqual([
      'cld', 'mov al, imm8', 'mov bx, imm16', 'mov es, bx', 'mov di, imm16', 'mov cx, imm16', 'rep stosb',
      'mov dx, imm16', 'out dx, al', 'hlt', 'jmp',
    ]);
    expect(insns.filter((x) => x.imm !== undefined).map((x) => x.imm)).toEqual([0x5an, 0x300n, 0n, 100n, 0x3f8n]);
  });

  it('splits a range that crosses a 64 KiB window into two es loads', () => {
    const imms = disassemble(writePattern(0x4000f, 0xffff, 0xa5)).filter((x) => x.imm !== undefined).map((x) => x.imm);
    expect(imms).toEqual([0xa5n, 0x4000n, 0xfn, 0xfff1n, 0x5000n, 0n, 0xen, 0x3f8n]);
  });

  it('refuses a value that is not a byte', () => {
    expect(() => writePattern(0x3000, 1, 0x100)).toThrow(RangeError);
  });
});

describe('touch', () => {
  it('reads ds:[off] of a 20-bit address into al and sends it', () => {
    const insns = disassemble(touch(0xb8123, 0x3f8));
    expect(insns.map((x) => x.text)).toEqual(['mov ax, imm16', 'mov ds, ax', 'mov al, [moffs16]', 'mov dx, imm16', 'out dx, al', 'hlt', 'jmp']);
    expect(insns.filter((x) => x.imm !== undefined).map((x) => x.imm)).toEqual([0xb812n, 3n, 0x3f8n]);
  });
});

describe('spin', () => {
  it('is jmp $ in either mode', () => {
    expect([...spin().bytes]).toEqual([0xeb, 0xfe]);
    expect(spin().mode).toBe('real');
    expect(spin({ mode: 'long' }).mode).toBe('long');
    expect(disassemble(spin())[0]!.target).toBe(0);
  });
});

describe('hypercall', () => {
  it('loads eax, ebx, ecx, edx with 0x66 prefixes, then vmcall', () => {
    const p = hypercall(0x77, 1, 2, 0xffff_ffff);
    const insns = disassemble(p);
    expect(insns.map((x) => x.text)).toEqual(['mov eax, imm32', 'mov ebx, imm32', 'mov ecx, imm32', 'mov edx, imm32', 'vmcall', 'hlt', 'jmp']);
    expect(insns.slice(0, 4).map((x) => x.imm)).toEqual([0x77n, 1n, 2n, 0xffff_ffffn]);
    expect([...p.bytes.subarray(0, 2)]).toEqual([0x66, 0xb8]);
  });

  it('reports eax to a port with out dx, eax and can use vmmcall', () => {
    const insns = texts(hypercall(12, 0x100000, 1, 0x10, { reportPort: 0x3f8, instruction: 'vmmcall' }));
    expect(insns.slice(4)).toEqual(['vmmcall', 'mov dx, imm16', 'out dx, eax', 'hlt', 'jmp']);
  });

  it('refuses 64-bit arguments in real mode and unknown instructions', () => {
    expect(() => hypercall(1n << 32n)).toThrow(RangeError);
    expect(() => hypercall(1, 0, 0, 0, { instruction: 'syscall' as 'vmcall' })).toThrow(TypeError);
  });

  it('in long mode loads rax, rbx, rcx, rdx, rsi with movabs', () => {
    const insns = disassemble(longHypercall(12, [1n << 32n, 2, 0x10, 7], { reportPort: 0x3f8 }));
    expect(insns.map((x) => x.text)).toEqual([
      'movabs rax, imm64', 'movabs rbx, imm64', 'movabs rcx, imm64', 'movabs rdx, imm64', 'movabs rsi, imm64',
      'vmcall', 'mov edx, imm32', 'out dx, eax', 'hlt', 'jmp',
    ]);
    expect(insns.slice(0, 5).map((x) => x.imm)).toEqual([12n, 1n << 32n, 2n, 0x10n, 7n]);
    expect(() => longHypercall(0, [1, 2, 3, 4, 5])).toThrow(RangeError);
  });
});

describe('long-mode programs', () => {
  it('longReadAndReport: movabs rsi with the 64-bit address, loop of lodsb/out guarded by jrcxz', () => {
    const p = longReadAndReport(0x1_0000_0000n, 64, 0x3f8);
    expect(p.mode).toBe('long');
    const insns = disassemble(p);
    expect(insns.map((x) => x.text)).toEqual([
      'movabs rsi, imm64', 'mov ecx, imm32', 'mov edx, imm32', 'cld', 'jrcxz', 'lodsb', 'out dx, al', 'loop', 'hlt', 'jmp',
    ]);
    expect([...p.bytes.subarray(2, 10)]).toEqual([0, 0, 0, 0, 1, 0, 0, 0]);
    expect(insns.filter((x) => x.imm !== undefined).map((x) => x.imm)).toEqual([0x1_0000_0000n, 64n, 0x3f8n]);
    expect(insns[4]!.target).toBe(insns[8]!.offset); // jrcxz skips to the hlt
    expect(insns[7]!.target).toBe(insns[5]!.offset); // loop back to the lodsb
  });

  it('longWritePattern: movabs rdi, rep stosb, then the value out', () => {
    const insns = disassemble(longWritePattern(0x1_0000_0100n, 64, 0xc3, 0x3f8));
    expect(insns.map((x) => x.text)).toEqual([
      'movabs rdi, imm64', 'mov ecx, imm32', 'mov al, imm8', 'cld', 'rep stosb', 'mov edx, imm32', 'out dx, al', 'hlt', 'jmp',
    ]);
    expect(insns.filter((x) => x.imm !== undefined).map((x) => x.imm)).toEqual([0x1_0000_0100n, 64n, 0xc3n, 0x3f8n]);
  });

  it('longWritePattern, built with the assembler, keeps the bytes it had when assembled by hand', () => {
    const hex = (p: GuestProgram): string => Buffer.from(p.bytes).toString('hex');
    expect(hex(longWritePattern(0x1_0000_0100n, 64, 0xc3, 0x3f8))).toBe('48bf0001000001000000b940000000b0c3fcf3aabaf8030000eef4ebfd');
    expect(hex(longWritePattern(0n, 0, 0, 0))).toBe('48bf0000000000000000b900000000b000fcf3aaba00000000eef4ebfd');
    expect(hex(longWritePattern(0xffff_ffff_ffff_ffffn, 0xffff_ffff, 0xff, 0xffff, { loadAddress: 0x2000n })))
      .toBe('48bfffffffffffffffffb9ffffffffb0fffcf3aabaffff0000eef4ebfd');
  });

  it('longTouch: movabs rsi, mov al, [rsi], out', () => {
    expect(texts(longTouch(0x8000_0000n, 0x3f8))).toEqual(['movabs rsi, imm64', 'mov al, [rsi]', 'mov edx, imm32', 'out dx, al', 'hlt', 'jmp']);
  });

  it('refuses addresses beyond 64 bits and lengths beyond 32 bits', () => {
    expect(() => longTouch(1n << 64n)).toThrow(RangeError);
    expect(() => longReadAndReport(0n, 2 ** 32)).toThrow(RangeError);
  });
});

/** Walks the 4-level page tables longModeSetup produced, as the CPU would. */
function translate(setup: LongModeSetup, va: bigint): bigint | undefined {
  const read64 = (gpa: bigint): bigint => {
    for (const m of setup.memory) {
      if (gpa >= m.gpa && gpa + 8n <= m.gpa + BigInt(m.bytes.length)) {
        return new DataView(m.bytes.buffer, m.bytes.byteOffset).getBigUint64(Number(gpa - m.gpa), true);
      }
    }
    throw new Error(`page-table read at 0x${gpa.toString(16)} outside the tables`);
  };
  const addrMask = ((1n << 52n) - 1n) & ~0xfffn;
  const pml4e = read64((setup.sregs.cr3 & addrMask) + ((va >> 39n) & 511n) * 8n);
  if (!(pml4e & 1n)) return undefined;
  const pdpte = read64((pml4e & addrMask) + ((va >> 30n) & 511n) * 8n);
  if (!(pdpte & 1n)) return undefined;
  expect(pdpte & 0x80n).toBe(0n); // no 1 GiB pages: they need CPUID.PDPE1GB
  const pde = read64((pdpte & addrMask) + ((va >> 21n) & 511n) * 8n);
  if (!(pde & 1n)) return undefined;
  expect(pde & 0x80n).toBe(0x80n); // 2 MiB page
  expect(pde & 2n).toBe(2n); // writable
  return (pde & addrMask & ~0x1fffffn) | (va & 0x1fffffn);
}

describe('longModeSetup', () => {
  const setup = longModeSetup();

  it('identity-maps the first 8 GiB with 2 MiB pages, including 4 GiB', () => {
    for (const a of [0n, 0x1000n, 0x1234567n, 0xfee0_0000n, 1n << 32n, (1n << 32n) + 0x1ffff8n, (8n << 30n) - 1n]) {
      expect(translate(setup, a)).toBe(a);
    }
    expect(translate(setup, 8n << 30n)).toBeUndefined();
    expect(setup.layout.mappedBytes).toBe(8n << 30n);
  });

  it('maps other sizes on request', () => {
    const s = longModeSetup({ mappedGiB: 1, baseGpa: 0x80000 });
    expect(translate(s, (1n << 30n) - 1n)).toBe((1n << 30n) - 1n);
    expect(translate(s, 1n << 30n)).toBeUndefined();
    expect(s.sregs.cr3).toBe(0x80000n);
  });

  it('puts the tables in low memory clear of programs at 0x1000, inside a 2 MiB slot at GPA 0', () => {
    expect(setup.layout).toMatchObject({ pml4: 0x10000n, pdpt: 0x11000n, pageDirectories: 0x12000n, gdt: 0x1a000n, end: 0x1b000n });
    for (const m of setup.memory) {
      expect(m.gpa).toBeGreaterThanOrEqual(0x10000n);
      expect(m.gpa + BigInt(m.bytes.length)).toBeLessThanOrEqual(0x100000n);
    }
  });

  it('has the sregs values of the KVM selftests for 64-bit mode', () => {
    const { sregs } = setup;
    expect(sregs.cr0).toBe(0x80050033n); // PE MP ET NE WP AM PG
    expect(sregs.cr3).toBe(setup.layout.pml4);
    expect(sregs.cr4).toBe(0x620n); // PAE OSFXSR OSXMMEXCPT
    expect(sregs.efer).toBe(0x500n); // LME LMA
    expect(sregs.cs).toEqual({ base: 0n, limit: 0xffffffff, selector: 8, type: 11, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0 });
    for (const seg of [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss]) {
      expect(seg).toEqual({ base: 0n, limit: 0xffffffff, selector: 0x10, type: 3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0 });
    }
    expect(sregs.gdt).toEqual({ base: setup.layout.gdt, limit: 23 });
  });

  it('holds GDT descriptors that decode to the segments it returns', () => {
    const gdt = setup.memory.find((m) => m.gpa === setup.sregs.gdt.base)!.bytes;
    expect(gdt.length).toBe(setup.sregs.gdt.limit + 1);
    expect([...gdt.subarray(0, 8)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    const view = new DataView(gdt.buffer, gdt.byteOffset);
    expect(view.getBigUint64(8, true)).toBe(0x00af9b000000ffffn);
    expect(view.getBigUint64(16, true)).toBe(0x00cf93000000ffffn);
    expect(decodeSegmentDescriptor(gdt.subarray(8, 16), 8)).toEqual(setup.sregs.cs);
    expect(decodeSegmentDescriptor(gdt.subarray(16, 24), 0x10)).toEqual(setup.sregs.ds);
  });

  it('encodes and decodes segment descriptors as inverses', () => {
    const seg = { base: 0x12345678n, limit: 0xabcde, selector: 0x18, type: 0xa, present: 1, dpl: 3, db: 1, s: 1, l: 0, g: 0, avl: 1, unusable: 0 };
    expect(decodeSegmentDescriptor(encodeSegmentDescriptor(seg), 0x18)).toEqual(seg);
  });

  it('returns fresh objects per call', () => {
    const a = longModeSetup();
    a.sregs.ds.base = 1n;
    expect(a.sregs.es.base).toBe(0n);
    expect(longModeSetup().sregs.ds.base).toBe(0n);
  });

  it('refuses an unaligned base, a bad size and tables outside the map', () => {
    expect(() => longModeSetup({ baseGpa: 0x10001 })).toThrow(RangeError);
    expect(() => longModeSetup({ mappedGiB: 0 })).toThrow(RangeError);
    expect(() => longModeSetup({ mappedGiB: 513 })).toThrow(RangeError);
    expect(() => longModeSetup({ mappedGiB: 1, baseGpa: 1n << 30n })).toThrow(RangeError);
  });
});
