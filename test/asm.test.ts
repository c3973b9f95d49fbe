// The x86-64 assembler: encodings against bytes from GNU as, a differential run
// against the installed GNU as, labels and relaxation, and argument checks.
import { describe, expect, it, test } from 'vitest';
import { Assembler, AsmValue, mem, type Reg64 } from '../lib/guest/asm';
import * as pkg from '../lib/index';
import { compareWithGnuAs, gnuAssemble, hasGnuAs, hexBytes, Rand, randomBranchProgram, randomInstruction } from './asm-cases';
import { TABLE } from './asm-table';

function bytesOf(build: (a: Assembler) => unknown, origin = 0n): string {
  const a = new Assembler({ origin });
  build(a);
  return hexBytes(a.assemble());
}

/** Expects `fn` to throw `type` with `code` and a message matching `message`. */
function expectError(fn: () => unknown, type: typeof TypeError | typeof RangeError, code: string, message: RegExp): void {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error, `expected ${code} matching ${message}`).toBeInstanceOf(type);
  expect((error as { code?: string }).code).toBe(code);
  expect((error as Error).message).toMatch(message);
}

describe('encodings (bytes from GNU as 2.40)', () => {
  it.each(TABLE)('%s', (_text, emit, expected) => {
    expect(bytesOf(emit)).toBe(expected);
  });

  it('int(3) stays CD 03, where GNU as writes int 3 as int3 (CC)', () => {
    expect(bytesOf((a) => a.int(3))).toBe('cd 03');
    expect(bytesOf((a) => a.int3())).toBe('cc');
  });

  it('chains: every instruction method returns the assembler', () => {
    const a = new Assembler();
    expect(a.mov('eax', 1).out(0x80, 'al').hlt()).toBe(a);
    expect(hexBytes(a.assemble())).toBe('b8 01 00 00 00 e6 80 f4');
  });

  it('encodes mem() operand forms alike', () => {
    const same = [
      mem('rbx', 'rcx', 8, 0x10),
      mem({ base: 'rbx', index: 'rcx', scale: 8, disp: 0x10 }),
      mem(mem('rbx', 'rcx', 8, 0x10n)),
    ];
    for (const m of same) expect(bytesOf((a) => a.mov('rax', m))).toBe('48 8b 44 cb 10');
    expect(mem.qword(mem('rdi')).size).toBe('qword');
    expect(String(mem.dword('rbx', 'rcx', 4, -8))).toBe('dword [rbx + rcx*4 - 0x8]');
    expect(String(mem({ disp: 0x1000 }))).toBe('[0x1000]');
    expect(String(mem.rip('table'))).toBe("[rip -> 'table']");
    expect(Object.isFrozen(mem('rax'))).toBe(true);
  });
});

describe.skipIf(!hasGnuAs)(hasGnuAs ? 'against GNU as' : 'against GNU as [skipped: GNU as (as) or objdump not found]', () => {
  test('the table holds the bytes this GNU as gives', () => {
    // One source for all rows: each row's own label L gets a unique name.
    const ours: number[] = [];
    for (const [, emit] of TABLE) {
      const a = new Assembler();
      emit(a);
      ours.push(...a.assemble());
    }
    const texts = TABLE.map(([text], i) => text.replace(/\bL\b/g, `L${i}`));
    expect(hexBytes(gnuAssemble(texts))).toBe(hexBytes(ours));
  });

  test('6000 generated instructions assemble to the same bytes', () => {
    for (const seed of [1, 2, 3, 4]) {
      const r = new Rand(seed);
      const cases = Array.from({ length: 1500 }, () => randomInstruction(r));
      expect(compareWithGnuAs(cases, () => new Assembler()), `seed ${seed}`).toBeUndefined();
    }
  });

  test('generated branch programs relax to the same layout', () => {
    for (let seed = 1; seed <= 12; seed++) {
      const cases = randomBranchProgram(new Rand(seed * 77), 20 + seed * 3, { align: false });
      expect(compareWithGnuAs(cases, () => new Assembler()), `seed ${seed}`).toBeUndefined();
    }
  });

  test('generated branch programs with alignment: same bytes for the same jump sizes', () => {
    for (let seed = 1; seed <= 8; seed++) {
      const cases = randomBranchProgram(new Rand(seed * 1009), 30, { align: true });
      expect(cases.some((c) => c.text.startsWith('.balign'))).toBe(true);
      expect(compareWithGnuAs(cases, () => new Assembler(), true), `seed ${seed}`).toBeUndefined();
    }
  });
});

describe('labels and relaxation', () => {
  const nops = (a: Assembler, n: number): Assembler => a.space(n, 0x90);

  it('resolves backward and forward labels', () => {
    expect(bytesOf((a) => a.label('top').nop().jmp('top'))).toBe('90 eb fd');
    expect(bytesOf((a) => a.jz('out').nop().label('out'))).toBe('74 01 90');
    expect(bytesOf((a) => a.call('f').hlt().label('f').ret())).toBe('e8 01 00 00 00 f4 c3');
  });

  it('keeps a forward jump of 127 bytes short and makes 128 near', () => {
    expect(bytesOf((a) => nops(a.jmp('x'), 127).label('x')).slice(0, 5)).toBe('eb 7f');
    expect(bytesOf((a) => nops(a.jmp('x'), 128).label('x')).slice(0, 14)).toBe('e9 80 00 00 00');
    expect(bytesOf((a) => nops(a.jnz('x'), 127).label('x')).slice(0, 5)).toBe('75 7f');
    expect(bytesOf((a) => nops(a.jnz('x'), 128).label('x')).slice(0, 17)).toBe('0f 85 80 00 00 00');
  });

  it('keeps a backward jump of -128 short and makes -129 near', () => {
    // rel8 counts from the end of the 2-byte jump: 126 bytes before it is -128.
    expect(bytesOf((a) => nops(a.label('x'), 126).jmp('x')).slice(-5)).toBe('eb 80');
    expect(bytesOf((a) => nops(a.label('x'), 127).jmp('x')).slice(-14)).toBe('e9 7c ff ff ff'); // -(127 + 5)
    expect(bytesOf((a) => nops(a.label('x'), 126).jl('x')).slice(-5)).toBe('7c 80');
    expect(bytesOf((a) => nops(a.label('x'), 127).jl('x')).slice(-17)).toBe('0f 8c 7b ff ff ff'); // -(127 + 6)
  });

  it('grows a jump that a grown jump pushes out of reach', () => {
    const a = new Assembler();
    a.jmp('end'); // 123 nops + the jz: 125 bytes if the jz is short, 129 once it is near
    nops(a, 123).jz('far').label('end');
    nops(a, 200).label('far');
    const code = a.assemble();
    expect(hexBytes(code.subarray(0, 5))).toBe('e9 81 00 00 00'); // near, 129
    expect(hexBytes(code.subarray(128, 134))).toBe('0f 84 c8 00 00 00'); // near, 200
    expect(a.offsetOf('end')).toBe(134);
    expect(a.offsetOf('far')).toBe(334);
  });

  it('does not grow a jump that only needs 127 bytes once others grew before it', () => {
    const a = new Assembler();
    a.label('top');
    nops(a, 200).jmp('top'); // near
    a.jmp('x');
    nops(a, 127).label('x');
    const code = a.assemble();
    expect(hexBytes(code.subarray(205, 207))).toBe('eb 7f');
  });

  it('relaxes across an alignment that moves with the code', () => {
    const a = new Assembler();
    a.jmp('x');
    nops(a, 100).align(16).label('x');
    expect(hexBytes(a.assemble().subarray(0, 2))).toBe('eb 6e'); // 2 + 100 = 102, padded to 112
    expect(a.offsetOf('x')).toBe(112);
  });

  it('takes a forced size, and refuses a short jump that does not reach', () => {
    expect(bytesOf((a) => a.label('x').jmp('x', { size: 'near' }))).toBe('e9 fb ff ff ff');
    expect(bytesOf((a) => a.label('x').jz('x', { size: 'short' }))).toBe('74 fe');
    const a = new Assembler();
    nops(a.jz('far', { size: 'short' }), 128).label('far');
    expectError(() => a.assemble(), RangeError, 'ERR_OUT_OF_RANGE', /^jz: operand 1 \(label 'far'\) is 128 bytes from the end of the instruction, beyond the -128\.\.127 bytes a short jz reaches$/);
  });

  it('refuses loop and jrcxz targets beyond -128..127', () => {
    for (const insn of ['loop', 'loope', 'loopne', 'jrcxz'] as const) {
      const a = new Assembler();
      nops(a.label('x'), 127)[insn]('x');
      expectError(() => a.assemble(), RangeError, 'ERR_OUT_OF_RANGE', new RegExp(`^${insn}: operand 1 \\(label 'x'\\) is -129 bytes .* a ${insn} reaches$`));
      const b = new Assembler();
      nops(b.label('x'), 126)[insn]('x');
      expect(hexBytes(b.assemble().subarray(-1))).toBe('80');
    }
  });

  it('reports an undefined label with the instruction that uses it', () => {
    const a = new Assembler().jnz('nowhere');
    expectError(() => a.assemble(), RangeError, 'ERR_UNDEFINED_LABEL', /^jnz: label 'nowhere' is not defined$/);
    expectError(() => a.offsetOf('nowhere'), RangeError, 'ERR_UNDEFINED_LABEL', /^jnz: label 'nowhere' is not defined$/);
    const b = new Assembler().mov('rdi', mem.rip('data')).hlt();
    expectError(() => b.assemble(), RangeError, 'ERR_UNDEFINED_LABEL', /^mov: label 'data' is not defined$/);
    expectError(() => new Assembler().hlt().offsetOf('z'), RangeError, 'ERR_UNDEFINED_LABEL', /^offsetOf: label 'z' is not defined$/);
  });

  it('refuses a duplicate label, a register name and a malformed name', () => {
    const a = new Assembler().label('x');
    expectError(() => a.label('x'), TypeError, 'ERR_DUPLICATE_LABEL', /^label: 'x' is already defined$/);
    expectError(() => a.label('rax'), TypeError, 'ERR_INVALID_ARG_VALUE', /^label: name 'rax' is a register name, not a label$/);
    expectError(() => a.label('1st'), TypeError, 'ERR_INVALID_ARG_VALUE', /^label: name '1st' is not a label name/);
    expectError(() => a.label(''), TypeError, 'ERR_INVALID_ARG_VALUE', /^label: name '' is not a label name/);
    expectError(() => a.label(5 as never), TypeError, 'ERR_INVALID_ARG_TYPE', /^label: name must be a label name \(a string\), got 5$/);
    expectError(() => a.jmp('no such'), TypeError, 'ERR_INVALID_ARG_VALUE', /^jmp: operand 1 'no such' is not a label name/);
  });

  it('gives label addresses from the origin, lazily, as immediates and data', () => {
    const a = new Assembler({ origin: 0x1000n });
    a.mov('rdi', a.addressOf('buffer')); // sign-extended imm32: 48 c7 c7
    a.mov('esi', a.addressOf('buffer', 8));
    a.push(a.addressOf('buffer'));
    a.add('rcx', a.distance('buffer', 'end'));
    a.u64(a.addressOf('buffer'));
    a.label('buffer').space(16).label('end');
    const code = a.assemble();
    expect(a.offsetOf('buffer')).toBe(29);
    expect(a.resolve(a.addressOf('buffer'))).toBe(0x101dn);
    expect(a.resolve(a.distance('end', 'buffer'))).toBe(-16n);
    expect(hexBytes(code.subarray(0, 29))).toBe(
      '48 c7 c7 1d 10 00 00 ' // mov rdi, 0x101d
      + 'be 25 10 00 00 ' //     mov esi, 0x1025
      + '68 1d 10 00 00 ' //     push 0x101d (imm32: it does not fit in imm8)
      + '48 83 c1 10 ' //        add rcx, 16 (imm8)
      + '1d 10 00 00 00 00 00 00', // .quad buffer
    );
  });

  it('takes movabs for a label address that does not fit in 32 bits signed', () => {
    const a = new Assembler({ origin: 0x1_0000_0000n });
    a.mov('rax', a.addressOf('here')).label('here');
    expect(hexBytes(a.assemble())).toBe('48 b8 0a 00 00 00 01 00 00 00');
  });

  it('combines values: IDT gate fields from a handler address', () => {
    const a = new Assembler({ origin: 0x1234_5678_9abc_0000n });
    const handler = a.addressOf('handler');
    a.u16(handler.and(0xffff)).u16(0x08).u16(0x8e00).u16(handler.shiftRight(16).and(0xffff)).u32(handler.shiftRight(32)).u32(0);
    a.label('handler').iretq();
    expect(hexBytes(a.assemble().subarray(0, 16))).toBe('10 00 08 00 00 8e bc 9a 78 56 34 12 00 00 00 00');
    expect(String(handler.shiftRight(16).plus(1).minus(a.addressOf('x')))).toBe("(addressOf('handler') >> 16)+0x1-addressOf('x')");
  });

  it('reaches a label RIP-relative, from the end of the instruction including its immediate', () => {
    const a = new Assembler();
    a.lea('rsi', mem.rip('data')); //                 7 bytes
    a.mov(mem.dword({ rip: 'data' }), 0x11223344); // 10 bytes: c7 05 disp32 imm32
    a.label('back').mov('al', mem.byte({ rip: 'back' }));
    a.label('data').u32(0);
    expect(hexBytes(a.assemble())).toBe('48 8d 35 10 00 00 00 c7 05 06 00 00 00 44 33 22 11 8a 05 fa ff ff ff 00 00 00 00');
  });

  it('reaches absolute addresses relative to the origin', () => {
    const a = new Assembler({ origin: 0x1000n });
    a.call(0x2000n).jmp(0x1000).lea('rax', mem.rip(0x3000n));
    expect(hexBytes(a.assemble())).toBe('e8 fb 0f 00 00 eb f9 48 8d 05 f2 1f 00 00');
    const far = new Assembler({ origin: 0x1000n }).jmp(0x1_0000_1000n);
    expectError(() => far.assemble(), RangeError, 'ERR_OUT_OF_RANGE', /^jmp: operand 1 \(address 0x100001000\) is 4294967291 bytes from the end of the instruction, beyond rel32 reach$/);
  });

  it('aligns the address, not the offset, and fills with nop or a given byte', () => {
    expect(bytesOf((a) => a.u8(1).align(8).u8(2), 0x1004n)).toBe('01 90 90 90 02');
    expect(bytesOf((a) => a.u8(1).align(4, 0xcc).u8(2))).toBe('01 cc cc cc 02');
    expect(bytesOf((a) => a.align(4096).u8(1), 0x1000n)).toBe('01');
  });

  it('can add code after assembling and lays out again', () => {
    const a = new Assembler().label('top').nop();
    expect(hexBytes(a.assemble())).toBe('90');
    a.jmp('top');
    expect(hexBytes(a.assemble())).toBe('90 eb fd');
    const first = a.assemble();
    first[0] = 0;
    expect(a.assemble()[0]).toBe(0x90); // each call returns a fresh array
  });

  it('names fresh labels for code generators', () => {
    const a = new Assembler();
    const l1 = a.uniqueLabel('loop');
    a.label(l1);
    const l2 = a.uniqueLabel('loop');
    expect(l1).not.toBe(l2);
    a.label(l2).jmp(l1);
    expect(hexBytes(a.assemble())).toBe('eb fe');
  });

  it('builds a long-mode GuestProgram at its origin', () => {
    const p = new Assembler({ origin: 0x2000n }).hlt().toProgram('halt');
    expect(p).toMatchObject({ name: 'halt', loadAddress: 0x2000n, entry: 0x2000n, mode: 'long' });
    expect([...p.bytes]).toEqual([0xf4]);
    expect(Object.isFrozen(p)).toBe(true);
    expectError(() => new Assembler({ origin: 1n << 52n }).hlt().toProgram('x'), RangeError, 'ERR_OUT_OF_RANGE', /^toProgram: origin/);
  });
});

describe('argument checks name the instruction, the operand and the rule', () => {
  const a = new Assembler();
  const T = TypeError;
  const R = RangeError;
  const cases: Array<[string, () => unknown, typeof TypeError | typeof RangeError, string, RegExp]> = [
    ['sizes disagree', () => a.mov('rax', 'ebx' as Reg64), T, 'ERR_OPERAND_SIZE', /^mov: operand 2 \(ebx\) is 32-bit, but operand 1 \(rax\) is 64-bit$/],
    ['memory size disagrees', () => a.add('eax', mem.qword('rdi')), T, 'ERR_OPERAND_SIZE', /^add: operand 2 \(memory qword \[rdi\]\) is 64-bit, but the operation is 32-bit$/],
    ['memory to memory', () => a.mov(mem('rdi'), mem('rsi') as never), T, 'ERR_INVALID_OPERANDS', /^mov: operand 2 \(memory \[rsi\]\) cannot be memory when operand 1 is/],
    ['unsized memory with an immediate', () => a.mov(mem('rdi', 8), 0x5a), T, 'ERR_OPERAND_SIZE', /^mov: operand 1 \(memory \[rdi \+ 0x8\]\) needs a size with an immediate source: use mem\.byte, mem\.word, mem\.dword or mem\.qword$/],
    ['unsized memory, no register', () => a.inc(mem('rdi')), T, 'ERR_OPERAND_SIZE', /^inc: operand 1 \(memory \[rdi\]\) needs a size/],
    ['8-bit immediate too big', () => a.mov('al', 0x100), R, 'ERR_OUT_OF_RANGE', /^mov: operand 2 \(immediate 0x100\) must fit in 8 bits: \[-0x80, 0xff\]$/],
    ['32-bit immediate too big', () => a.mov('eax', 0x1_0000_0000), R, 'ERR_OUT_OF_RANGE', /^mov: operand 2 \(immediate 0x100000000\) must fit in 32 bits/],
    ['64-bit ALU immediate beyond imm32', () => a.add('rax', 0x8000_0000), R, 'ERR_OUT_OF_RANGE', /^add: operand 2 \(immediate 0x80000000\) must be a 32-bit value sign-extended to 64 bits/],
    ['store of a 64-bit immediate', () => a.mov(mem.qword('rax'), 0x1_0000_0000n), R, 'ERR_OUT_OF_RANGE', /^mov: operand 2 \(immediate 0x100000000\) must be a 32-bit value sign-extended/],
    ['push beyond imm32', () => a.push(0x8000_0000), R, 'ERR_OUT_OF_RANGE', /^push: operand 1 \(immediate 0x80000000\) must be a 32-bit value sign-extended to 64 bits/],
    ['high byte with REX', () => a.mov('ah', 'sil'), T, 'ERR_INVALID_OPERANDS', /^mov: operand 1 \(ah\) cannot be encoded with a REX prefix, which operand 2 \(sil\) needs: use al, cl, dl or bl instead$/],
    ['high byte with r8 in the address', () => a.mov('bh', mem('r8')), T, 'ERR_INVALID_OPERANDS', /^mov: operand 1 \(bh\) cannot be encoded with a REX prefix, which an r8-r15 address register needs/],
    ['high byte into a 64-bit movzx', () => a.movzx('rax', 'ah'), T, 'ERR_INVALID_OPERANDS', /^movzx: operand 2 \(ah\) cannot be encoded with a REX prefix, which a 64-bit operation needs/],
    ['unknown register', () => a.mov('foo' as Reg64, 1), T, 'ERR_INVALID_ARG_VALUE', /^mov: operand 1 \('foo'\) is not a register name$/],
    ['nonexistent control register', () => a.mov('cr5' as Reg64, 'rax'), T, 'ERR_INVALID_ARG_VALUE', /^mov: operand 1 \('cr5'\) is not a register name \(CR1, CR5, CR6 and CR7 do not exist\)$/],
    ['control register with a 32-bit register', () => a.mov('cr0', 'eax' as Reg64), T, 'ERR_INVALID_OPERANDS', /^mov: operand 2 \(eax\) must be a 64-bit register: cr0 moves only to and from 64-bit registers$/],
    ['control register from an immediate', () => a.mov('cr3', 5 as never), T, 'ERR_INVALID_OPERANDS', /^mov: operand 2 \(immediate 0x5\) must be a 64-bit register/],
    ['fractional immediate', () => a.mov('rax', 1.5), T, 'ERR_INVALID_ARG_TYPE', /^mov: operand 2 \(1\.5\) must be an integer: a safe integer number or a bigint$/],
    ['object operand', () => a.mov('rax', {} as never), T, 'ERR_INVALID_ARG_TYPE', /^mov: operand 2 must be a register name, a memory operand \(mem\(\.\.\.\)\) or an integer, got a value of type object$/],
    ['immediate destination', () => a.add(5 as never, 'rax'), T, 'ERR_INVALID_OPERANDS', /^add: operand 1 \(immediate 0x5\) cannot be an immediate here$/],
    ['control register in add', () => a.add('cr0' as never, 'rax'), T, 'ERR_INVALID_OPERANDS', /^add: operand 1 \(cr0\) cannot be a control or debug register here$/],
    ['32-bit base', () => mem('eax' as Reg64), T, 'ERR_INVALID_ARG_VALUE', /^mem: base 'eax' is a 32-bit register; 64-bit code addresses memory with 64-bit registers$/],
    ['rsp as index', () => mem('rax', 'rsp'), T, 'ERR_INVALID_ARG_VALUE', /^mem: index 'rsp' cannot be an index register/],
    ['bad scale', () => mem('rax', 'rcx', 3 as never), T, 'ERR_INVALID_ARG_VALUE', /^mem: scale 3 must be 1, 2, 4 or 8$/],
    ['scale without index', () => mem({ base: 'rax', scale: 2 }), T, 'ERR_INVALID_ARG_VALUE', /^mem: scale needs an index register$/],
    ['displacement beyond 32 bits', () => mem('rax', 0x8000_0000), R, 'ERR_OUT_OF_RANGE', /^mem: disp 0x80000000 must be a 32-bit value sign-extended to 64 bits/],
    ['rip with a base', () => mem({ rip: 'x', base: 'rax' }), T, 'ERR_INVALID_ARG_VALUE', /^mem: rip excludes base, index, scale and disp$/],
    ['unknown MemSpec field', () => mem({ bsae: 'rax' } as never), T, 'ERR_INVALID_ARG_VALUE', /^mem: unknown field 'bsae'/],
    ['rip with an index', () => mem('rip', 'rax' as never), T, 'ERR_INVALID_ARG_VALUE', /^mem: a RIP-relative operand has no index$/],
    ['shift count too big', () => a.shl('eax', 32), R, 'ERR_OUT_OF_RANGE', /^shl: operand 2 \(32\) must be a count in \[0, 31\]: the CPU masks counts to 5 bits$/],
    ['64-bit shift count too big', () => a.sar('rax', 64), R, 'ERR_OUT_OF_RANGE', /^sar: operand 2 \(64\) must be a count in \[0, 63\]/],
    ['shift by another register', () => a.shl('eax', 'cx' as never), T, 'ERR_INVALID_OPERANDS', /^shl: operand 2 \(cx\) must be an immediate count or cl$/],
    ['in to bl', () => a.in('bl' as never, 0x60), T, 'ERR_INVALID_OPERANDS', /^in: operand 1 \(bl\) must be al, ax or eax$/],
    ['port beyond 0xff', () => a.in('al', 0x3f8), R, 'ERR_OUT_OF_RANGE', /^in: operand 2 \(1016\) must be a port in \[0, 0xff\]; use dx for ports above 0xff$/],
    ['out from rax', () => a.out(0x80, 'rax' as never), T, 'ERR_INVALID_OPERANDS', /^out: operand 2 \(rax\) must be al, ax or eax$/],
    ['out through cx', () => a.out('cx' as never, 'al'), T, 'ERR_INVALID_OPERANDS', /^out: operand 1 \(cx\) must be a port number or dx$/],
    ['int vector', () => a.int(256), R, 'ERR_OUT_OF_RANGE', /^int: operand 1 \(256\) must be an interrupt vector in \[0, 0xff\]$/],
    ['ret count', () => a.ret(-1), R, 'ERR_OUT_OF_RANGE', /^ret: operand 1 \(-1\) must be an integer in \[0, 0xffff\]$/],
    ['push a 32-bit register', () => a.push('eax' as never), T, 'ERR_OPERAND_SIZE', /^push: operand 1 \(eax\) is 32-bit; 64-bit code pushes and pops 64-bit \(or 16-bit\) registers$/],
    ['pop dword memory', () => a.pop(mem.dword('rax')), T, 'ERR_OPERAND_SIZE', /^pop: operand 1 \(memory dword \[rax\]\) is 32-bit/],
    ['jump through a 32-bit register', () => a.jmp('eax'), T, 'ERR_OPERAND_SIZE', /^jmp: operand 1 \(eax\) is 32-bit; an indirect jmp takes a 64-bit register$/],
    ['call through dword memory', () => a.call(mem.dword('rax')), T, 'ERR_OPERAND_SIZE', /^call: operand 1 \(memory dword \[rax\]\) must be qword/],
    ['jump size option', () => a.jz('x', { size: 'medium' as never }), T, 'ERR_INVALID_ARG_VALUE', /^jz: options\.size 'medium' must be 'short' or 'near'$/],
    ['jump size on an indirect jump', () => a.jmp('rax', { size: 'short' }), T, 'ERR_INVALID_OPERANDS', /^jmp: options\.size applies to a label or address target/],
    ['negative address target', () => a.call(-1), R, 'ERR_OUT_OF_RANGE', /^call: operand 1 -0x1 is not a 64-bit address$/],
    ['lea from a register', () => a.lea('rax', 'rbx' as never), T, 'ERR_INVALID_OPERANDS', /^lea: operand 2 \(rbx\) must be memory$/],
    ['lea into an 8-bit register', () => a.lea('al' as never, mem('rax')), T, 'ERR_OPERAND_SIZE', /^lea: operand 1 \(al\) is 8-bit; lea takes 16\/32\/64-bit registers here$/],
    ['imul into an 8-bit register', () => a.imul('al' as never, 'bl' as never), T, 'ERR_OPERAND_SIZE', /^imul: operand 1 \(al\) is 8-bit/],
    ['test memory with memory', () => a.test(mem('rax'), mem('rbx') as never), T, 'ERR_INVALID_OPERANDS', /^test: operand 1 \(memory \[rax\]\) and operand 2 cannot both be memory$/],
    ['xchg sizes', () => a.xchg('rax', 'ebx' as Reg64), T, 'ERR_OPERAND_SIZE', /^xchg: operand 2 \(ebx\) is 32-bit, but operand 1 \(rax\) is 64-bit$/],
    ['movzx from a 32-bit register', () => a.movzx('rax', 'ebx' as never), T, 'ERR_OPERAND_SIZE', /^movzx: operand 2 \(ebx\) is 32-bit; movzx into a 64-bit register takes an 8-bit or 16-bit source$/],
    ['movzx from unsized memory', () => a.movzx('eax', mem('rax')), T, 'ERR_OPERAND_SIZE', /^movzx: operand 2 \(memory \[rax\]\) needs a size/],
    ['movabs into eax', () => a.movabs('eax' as Reg64, 1), T, 'ERR_OPERAND_SIZE', /^movabs: operand 1 \(eax\) is 32-bit; movabs takes 64-bit registers here$/],
    ['unknown condition', () => a.cmovcc('zz' as never, 'rax', 'rbx'), T, 'ERR_INVALID_ARG_VALUE', /^cmovcc: operand 1 'zz' is not a condition/],
    ['inherited name as condition', () => a.jcc('toString' as never, 'x'), T, 'ERR_INVALID_ARG_VALUE', /^jcc: operand 1 'toString' is not a condition/],
    ['inherited name as size', () => mem.rip('x', 'constructor' as never), T, 'ERR_INVALID_ARG_VALUE', /^mem\.rip: size 'constructor' must be 'byte', 'word', 'dword' or 'qword'$/],
    ['shiftRight beyond 63', () => a.addressOf('x').shiftRight(64), R, 'ERR_OUT_OF_RANGE', /^AsmValue\.shiftRight: bits 64 must be in \[0, 63\]$/],
    ['negative mask', () => a.addressOf('x').and(-1), R, 'ERR_OUT_OF_RANGE', /^AsmValue\.and: mask -0x1 must not be negative$/],
    ['plus of a string', () => a.addressOf('x').plus('1' as never), T, 'ERR_INVALID_ARG_TYPE', /^AsmValue\.plus: operand must be an integer number, a bigint or an AsmValue, got '1'$/],
    ['setcc into a 16-bit register', () => a.setcc('e', 'ax' as never), T, 'ERR_OPERAND_SIZE', /^setcc: operand 2 \(ax\) is 16-bit, but the operation is 8-bit$/],
    ['cmov into an 8-bit register', () => a.cmovcc('e', 'al' as never, 'bl' as never), T, 'ERR_OPERAND_SIZE', /^cmovcc: operand 2 \(al\) is 8-bit/],
    ['repe on stos', () => a.stosb('repe' as never), T, 'ERR_INVALID_ARG_VALUE', /^stosb: prefix 'repe' must be 'rep'$/],
    ['lgdt from a register', () => a.lgdt('rax' as never), T, 'ERR_INVALID_OPERANDS', /^lgdt: operand 1 \(rax\) must be memory$/],
    ['byte out of range', () => a.bytes([1, 256]), R, 'ERR_OUT_OF_RANGE', /^bytes: data\[1\] 256 must be an integer in \[0, 0xff\]$/],
    ['bytes from a string', () => a.bytes('ab' as never), T, 'ERR_INVALID_ARG_TYPE', /^bytes: data must be an array of bytes or a Uint8Array, got 'ab'$/],
    ['u8 out of range', () => a.u8(256), R, 'ERR_OUT_OF_RANGE', /^u8: operand 1 \(immediate 0x100\) must fit in 8 bits/],
    ['u16 out of range', () => a.u16(0x10000), R, 'ERR_OUT_OF_RANGE', /^u16: operand 1 \(immediate 0x10000\) must fit in 16 bits/],
    ['u32 out of range', () => a.u32(-0x8000_0001), R, 'ERR_OUT_OF_RANGE', /^u32: operand 1 \(immediate -0x80000001\) must fit in 32 bits/],
    ['u64 out of range', () => a.u64(1n << 64n), R, 'ERR_OUT_OF_RANGE', /^u64: operand 1 \(immediate 0x10000000000000000\) must fit in 64 bits/],
    ['non-ASCII text', () => a.ascii('é'), R, 'ERR_OUT_OF_RANGE', /^ascii: text\[0\] \(U\+00e9\) is not an ASCII character$/],
    ['alignment not a power of two', () => a.align(3), R, 'ERR_OUT_OF_RANGE', /^align: boundary 3 must be a power of two in \[1, 4096\]$/],
    ['negative space', () => a.space(-1), R, 'ERR_OUT_OF_RANGE', /^space: count -1 must be an integer/],
    ['negative origin', () => new Assembler({ origin: -1 }), R, 'ERR_OUT_OF_RANGE', /^Assembler: options\.origin -0x1 is not a 64-bit address$/],
    ['value of another assembler', () => a.mov('rax', new Assembler().addressOf('x')), T, 'ERR_INVALID_ARG_VALUE', /^mov: operand 2 \(addressOf\('x'\)\) belongs to another Assembler$/],
    ['lock on hlt', () => new Assembler().lock().hlt(), T, 'ERR_INVALID_OPERANDS', /^lock: must be followed by a lockable instruction with a memory destination/],
    ['lock on a register destination', () => new Assembler().lock().add('rax', 1), T, 'ERR_INVALID_OPERANDS', /^lock: add has a register destination; only a memory destination can be locked/],
    ['lock on mov', () => new Assembler().lock().mov(mem('rax'), 'rbx'), T, 'ERR_INVALID_OPERANDS', /^lock: mov cannot be locked \(the CPU raises #UD\)$/],
    ['lock before a label', () => new Assembler().lock().label('x'), T, 'ERR_INVALID_OPERANDS', /^lock: must be followed by .*, not label 'x'$/],
    ['lock at the end', () => new Assembler().lock().assemble(), T, 'ERR_INVALID_OPERANDS', /^lock: must be followed by .*, not the end of the code$/],
    ['lock twice', () => new Assembler().lock().lock(), T, 'ERR_INVALID_OPERANDS', /^lock: the previous lock\(\) has no instruction yet$/],
  ];

  it.each(cases)('%s', (_what, fn, type, code, message) => {
    expectError(fn, type, code, message);
  });

  it('checks label-dependent values when assembling', () => {
    const b = new Assembler({ origin: 0x1000n });
    b.mov('al', b.addressOf('x')).label('x');
    expectError(() => b.assemble(), RangeError, 'ERR_OUT_OF_RANGE', /^mov: operand 2 \(immediate addressOf\('x'\)\) is 0x1002, which must fit in 8 bits/);
    const c = new Assembler({ origin: 0x8000_0000n });
    c.mov('rax', mem({ disp: c.addressOf('x') })).label('x');
    expectError(() => c.assemble(), RangeError, 'ERR_OUT_OF_RANGE', /^mov: operand 2 \(memory \[addressOf\('x'\)\]\) has displacement 0x80000008, which must be a 32-bit value sign-extended/);
  });

  it('leaves the assembler usable after a refused instruction', () => {
    const b = new Assembler().nop();
    expect(() => b.mov('al', 0x100)).toThrow(RangeError);
    expect(hexBytes(b.hlt().assemble())).toBe('90 f4');
  });

  it('keeps a lock() for the next instruction that is added, once', () => {
    const b = new Assembler().lock();
    expect(() => b.add(mem.byte('r8'), 'ah')).toThrow(TypeError); // refused: the lock waits on
    b.xadd(mem.qword({ rip: 'counter' }), 'rax').xadd(mem.qword('rdi'), 'rax').label('counter');
    expect(hexBytes(b.assemble())).toBe('f0 48 0f c1 05 04 00 00 00 48 0f c1 07');
  });
});

describe('package exports', () => {
  it('exports the assembler and its operand helpers', () => {
    expect(pkg.Assembler).toBe(Assembler);
    expect(pkg.mem).toBe(mem);
    expect(pkg.AsmValue).toBe(AsmValue);
    expect(new pkg.Assembler().addressOf('x')).toBeInstanceOf(pkg.AsmValue);
  });
});
