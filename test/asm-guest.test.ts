// Guests written with the assembler, run on the real /dev/kvm in 64-bit mode.
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { Assembler, type GuestMemfd, type IoExit, Kvm, loadLongMode, mem, type Vcpu, type Vm } from '../lib/index';
import { kvmPath, needsKvm, noKvm } from './helpers';

const MiB = 1 << 20;
const G4 = 1n << 32n;
const PORT = 0x3f8;
const CODE = 0x1000n;
const STACK_TOP = 0x80000;

/** Runs until hlt, collecting the 4-byte values the guest sends to PORT. */
async function reports(vcpu: Vcpu): Promise<{ values: number[]; last: string }> {
  const values: number[] = [];
  const last = await vcpu.runUntil({
    maxExits: 1000,
    io(exit: IoExit) {
      if (exit.port !== PORT || exit.direction !== 'out' || exit.size !== 4) return 'stop';
      values.push(exit.data.readUInt32LE(0));
    },
  });
  return { values, last: last.reason };
}

const rotl64 = (v: bigint, n: bigint): bigint => BigInt.asUintN(64, (v << n) | (v >> (64n - n)));

describe.skipIf(noKvm)(needsKvm('assembled guests on the real kernel'), () => {
  let kvm: Kvm;
  let vm: Vm;
  let gmem: GuestMemfd;
  beforeEach(() => {
    kvm = Kvm.open(kvmPath);
    vm = kvm.createVm();
    gmem = vm.createGuestMemfd({ size: 4 * MiB, mmap: true, initShared: true });
    // Low memory: code, page tables (0x10000..0x1b000) and stack. At 4 GiB: the buffer.
    vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
    vm.addMemorySlot({ guestPhysAddr: G4, size: 2 * MiB, guestMemfd: { file: gmem, offset: 2 * MiB } });
  });
  afterEach(() => kvm.close());

  test('a guest writes a pattern at 4 GiB, checksums it and reports the sum over port I/O', async () => {
    const count = 3000;
    const seed = 0x3cn;
    const buffer = G4 + 0x100n;

    const a = new Assembler({ origin: CODE });
    a.mov('rsp', STACK_TOP);
    a.mov('rdi', buffer); //                 above 4 GiB: movabs
    a.mov('ecx', mem.rip('count')); //       data after the code, RIP-relative
    a.mov('r8', mem.rip('seed'));
    // A near jump over bytes that would trap: only correct relaxation gets past them.
    a.jmp('fill.start').space(300, 0xcc).label('fill.start');
    a.xor('eax', 'eax');
    a.label('fill'); //                      byte i = i * 31 + seed
    a.imul('edx', 'eax', 31);
    a.add('edx', 'r8d');
    a.mov(mem('rdi', 'rax'), 'dl');
    a.inc('eax');
    a.cmp('eax', 'ecx');
    a.jb('fill');
    a.xor('ebx', 'ebx');
    a.xor('esi', 'esi');
    a.label('sum'); //                       h = rol(h, 5) ^ byte, over what the guest reads back
    a.movzx('edx', mem.byte('rdi', 'rsi'));
    a.rol('rbx', 5);
    a.xor('rbx', 'rdx');
    a.inc('rsi');
    a.cmp('rsi', 'rcx');
    a.jne('sum');
    a.mov('rax', 'rbx');
    a.call('report'); //                     low half
    a.shr('rax', 32);
    a.call('report'); //                     high half
    a.label('halt').hlt().jmp('halt');
    a.label('report');
    a.push('rdx').mov('edx', PORT).out('dx', 'eax').pop('rdx').ret();
    a.align(8);
    a.label('count').u32(count);
    a.label('seed').u64(seed);

    const program = a.toProgram('checksum');
    expect(program.bytes.subarray(a.offsetOf('fill.start') - 305, a.offsetOf('fill.start') - 300)[0]).toBe(0xe9); // the near jmp
    const vcpu = vm.createVcpu(0);
    loadLongMode(vcpu, program);
    const { values, last } = await reports(vcpu);

    const pattern = Buffer.alloc(count);
    let sum = 0n;
    for (let i = 0; i < count; i++) {
      pattern[i] = (i * 31 + Number(seed)) & 0xff;
      sum = rotl64(sum, 5n) ^ BigInt(pattern[i]!);
    }
    expect(last).toBe('hlt');
    expect(values).toEqual([Number(sum & 0xffff_ffffn), Number(sum >> 32n)]);
    const seen = gmem.map(2 * MiB, 4096).buffer;
    expect(Buffer.compare(seen.subarray(0x100, 0x100 + count), pattern)).toBe(0);
    expect(seen[0x100 + count]).toBe(0);
    const regs = vcpu.getRegs();
    expect(regs.rsp).toBe(BigInt(STACK_TOP)); // every call returned
    expect(regs.rip).toBe(CODE + BigInt(a.offsetOf('halt')) + 1n); // after the hlt
  });

  test('a guest with an IDT takes #UD, #DE and single-step traps and returns from each with iretq', async () => {
    // Exceptions rather than `int n`: a PVM-backed KVM fails to emulate `int n`/`int3`.
    const a = new Assembler({ origin: CODE });
    a.mov('rsp', STACK_TOP);
    a.lidt(mem.rip('idtr'));
    a.ud2(); //                                  #UD: reports 6, resumes after the ud2
    a.xor('ecx', 'ecx').div('ecx'); //           #DE: reports 0, resumes after the div
    a.lea('r10', mem.rip('trace')).xor('r9d', 'r9d');
    a.pushfq().or(mem.qword('rsp'), 0x100).popfq(); // TF: a #DB after each instruction from here
    a.label('step1').nop();
    a.label('step2').nop();
    a.label('step3').pushfq().and(mem.qword('rsp'), ~0x100).popfq();
    a.label('untraced');
    a.mov('eax', 'r9d').call('report'); //       how many traps
    a.xor('esi', 'esi');
    a.label('trace.out').mov('eax', mem('r10', 'rsi', 8)).call('report').inc('esi').cmp('esi', 'r9d').jb('trace.out');
    a.label('halt').hlt().jmp('halt');
    a.label('ud').push('rax').mov('eax', 6).call('report').pop('rax').add(mem.qword('rsp'), 2).iretq(); // ud2: 2 bytes
    a.label('de').push('rax').xor('eax', 'eax').call('report').pop('rax').add(mem.qword('rsp'), 2).iretq(); // div ecx: 2 bytes
    a.label('db'); //                            log the address the trap returns to
    a.push('rax').mov('rax', mem('rsp', 8)).mov(mem('r10', 'r9', 8), 'rax').inc('r9d').pop('rax').iretq();
    a.label('report').push('rdx').mov('edx', PORT).out('dx', 'eax').pop('rdx').ret();
    a.align(16).label('idt');
    const handlers = new Map([[0, 'de'], [1, 'db'], [6, 'ud']]);
    for (let vector = 0; vector < 32; vector++) {
      const handler = handlers.get(vector);
      if (!handler) {
        a.space(16);
        continue;
      }
      const at = a.addressOf(handler); //        64-bit interrupt gate, code selector 0x08
      a.u16(at.and(0xffff)).u16(0x08).u8(0).u8(0x8e).u16(at.shiftRight(16).and(0xffff)).u32(at.shiftRight(32)).u32(0);
    }
    a.label('idt.end');
    a.label('idtr').u16(a.distance('idt', 'idt.end').minus(1)).u64(a.addressOf('idt'));
    a.align(8).label('trace').space(8 * 16);

    const vcpu = vm.createVcpu(0);
    loadLongMode(vcpu, a.toProgram('idt'));
    const { values, last } = await reports(vcpu);
    expect(last).toBe('hlt');
    const at = (label: string): number => Number(CODE) + a.offsetOf(label);
    // A trap follows each instruction that starts with TF set, the popfq clearing it included.
    const traced = [at('step2'), at('step3'), at('step3') + 1, at('step3') + 1 + 8, at('untraced')];
    expect(values).toEqual([6, 0, traced.length, ...traced]);
    expect(vcpu.getRegs().rsp).toBe(BigInt(STACK_TOP));
  });
});
