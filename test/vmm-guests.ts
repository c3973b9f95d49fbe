/**
 * Long-mode guests for the VMM tests, written with the assembler: one that takes
 * interrupts (through the 8259 PIC or the IOAPIC and local APIC) and acknowledges
 * them, one that rings doorbells (ioeventfds), one of plain instructions to step
 * through, and one that reports a CPUID leaf and an MSR.
 */
import { Assembler, type GuestProgram, mem } from '../lib/index';

/** Where the code goes (the long-mode tables take 0x10000..0x1b000). */
export const CODE = 0x1000n;
/** Top of the guest's stack. */
export const STACK_TOP = 0x8000;
/** The port guests report to (COM1: no in-kernel device there, so every write exits). */
export const PORT = 0x3f8;
/** What the interrupt guest sends once it is ready for interrupts. */
export const READY = 0x52;
/** What a guest sends when an interrupt or exception it does not expect arrives. */
export const UNEXPECTED = 0xee;
/** Vectors the PIC is remapped to (IRQ n arrives as vector 0x20 + n). */
export const PIC_BASE = 0x20;
/** The vector the IOAPIC delivers its pin on. */
export const IOAPIC_VECTOR = 0x40;

const LAPIC = 0xfee00000;
const IOAPIC = 0xfec00000;

/** A 256-gate IDT at label `idt`, each gate to `handlers.get(vector) ?? fallback`, and `idtr`. */
function idt(a: Assembler, handlers: ReadonlyMap<number, string>, fallback: string): void {
  a.align(16).label('idt');
  for (let vector = 0; vector < 256; vector++) {
    const at = a.addressOf(handlers.get(vector) ?? fallback); // 64-bit interrupt gate, code selector 0x08
    a.u16(at.and(0xffff)).u16(0x08).u8(0).u8(0x8e).u16(at.shiftRight(16).and(0xffff)).u32(at.shiftRight(32)).u32(0);
  }
  a.label('idt.end');
  a.label('idtr').u16(a.distance('idt', 'idt.end').minus(1)).u64(a.addressOf('idt'));
}

/**
 * Sets up an IDT and the interrupt controllers, reports READY, then waits in `hlt`
 * with interrupts on (with an in-kernel irqchip that wait never exits). Its handler
 * counts interrupts and reports the count (one byte to PORT) before acknowledging:
 * - `'pic'`: the PIC pair is remapped to vectors 0x20..0x2f with only `irq`
 *   unmasked (delivered as ExtINT through LINT0); EOI to the PIC.
 * - `'ioapic'`: both PICs masked; the local APIC is software-enabled and IOAPIC pin
 *   `irq` routed to vector IOAPIC_VECTOR, edge-triggered, to APIC 0; EOI to the
 *   local APIC.
 * Any other vector reports UNEXPECTED and stops.
 */
export function interruptGuest(via: 'pic' | 'ioapic', irq: number, options: { eoi?: boolean } = {}): GuestProgram {
  const a = new Assembler({ origin: CODE });
  a.mov('rsp', STACK_TOP);
  a.lidt(mem.rip('idtr'));
  // 8259 initialization: ICW1 (edge, cascade, ICW4), ICW2 (vector bases), ICW3 (slave on IRQ 2), ICW4 (8086).
  a.mov('al', 0x11).out(0x20, 'al').out(0xa0, 'al');
  a.mov('al', PIC_BASE).out(0x21, 'al');
  a.mov('al', PIC_BASE + 8).out(0xa1, 'al');
  a.mov('al', 0x04).out(0x21, 'al');
  a.mov('al', 0x02).out(0xa1, 'al');
  a.mov('al', 0x01).out(0x21, 'al').out(0xa1, 'al');
  // OCW1: the interrupt masks.
  a.mov('al', via === 'pic' ? ~(1 << irq) & 0xff : 0xff).out(0x21, 'al');
  a.mov('al', 0xff).out(0xa1, 'al');
  if (via === 'ioapic') {
    a.mov('esi', LAPIC);
    a.mov(mem.dword('rsi', 0xf0), 0x1ff); //               SVR: software enable, spurious vector 0xff
    a.mov('edi', IOAPIC);
    a.mov(mem.dword('rdi'), 0x10 + 2 * irq); //            IOREGSEL: redirection entry, low half
    a.mov(mem.dword('rdi', 0x10), IOAPIC_VECTOR); //       IOWIN: fixed, physical, edge, active high, unmasked
    a.mov(mem.dword('rdi'), 0x11 + 2 * irq); //            high half
    a.mov(mem.dword('rdi', 0x10), 0); //                   destination: APIC 0
  }
  a.mov('edx', PORT).mov('al', READY).out('dx', 'al');
  a.sti();
  a.label('idle').hlt().jmp('idle');

  a.label('handler').push('rax').push('rdx');
  a.inc(mem.rip('count', 'dword'));
  a.mov('eax', mem.rip('count')).mov('edx', PORT).out('dx', 'al'); // report before acknowledging
  if (options.eoi === false) {
    // no acknowledgement
  } else if (via === 'pic') a.mov('al', 0x20).out(0x20, 'al'); //     non-specific EOI to the master PIC
  else a.push('rsi').mov('esi', LAPIC).mov(mem.dword('rsi', 0xb0), 0).pop('rsi'); // local APIC EOI
  a.pop('rdx').pop('rax').iretq();

  a.label('unexpected').mov('edx', PORT).mov('al', UNEXPECTED).out('dx', 'al').cli();
  a.label('stop').hlt().jmp('stop');
  a.align(4).label('count').u32(0);
  idt(a, new Map([[via === 'pic' ? PIC_BASE + irq : IOAPIC_VECTOR, 'handler']]), 'unexpected');
  return a.toProgram(`interruptGuest(${via}, ${irq})`);
}

/** One guest write: a port (`out`) or an MMIO address (`mov [addr], value`). */
export interface GuestWrite {
  readonly kind: 'pio' | 'mmio';
  readonly address: number | bigint;
  readonly value: number;
  readonly size: 1 | 2 | 4;
}

/**
 * Performs `writes` in order, then either spins (`jmp $`, never exiting by itself)
 * or reports `done` to PORT and halts.
 */
export function writesGuest(writes: readonly GuestWrite[], end: { spin: true } | { done: number }): GuestProgram {
  const a = new Assembler({ origin: CODE });
  const reg = { 1: 'al', 2: 'ax', 4: 'eax' } as const;
  for (const w of writes) {
    a.mov('eax', w.value);
    if (w.kind === 'pio') a.mov('edx', Number(w.address)).out('dx', reg[w.size]);
    else a.mov('rsi', BigInt(w.address)).mov(mem('rsi'), reg[w.size]);
  }
  if ('spin' in end) a.label('spin').jmp('spin');
  else a.mov('edx', PORT).mov('al', end.done).out('dx', 'al').label('halt').hlt().jmp('halt');
  return a.toProgram('writesGuest');
}

/**
 * Straight-line arithmetic, then the result (0x25) to PORT: `nop; mov eax, 0x11;
 * inc eax; lea ebx, [rax + 1]; add eax, ebx; mov edx, PORT; out dx, al; hlt`.
 * `starts` are the addresses of its instructions, in order (the `out` is
 * `starts[6]`, the `hlt` `starts[7]`).
 */
export function stepGuest(): { program: GuestProgram; starts: bigint[]; result: number } {
  const a = new Assembler({ origin: CODE });
  const names = ['nop', 'mov', 'inc', 'lea', 'add', 'port', 'out', 'hlt'];
  a.label(names[0]!).nop();
  a.label(names[1]!).mov('eax', 0x11);
  a.label(names[2]!).inc('eax');
  a.label(names[3]!).lea('ebx', mem('rax', 1));
  a.label(names[4]!).add('eax', 'ebx');
  a.label(names[5]!).mov('edx', PORT);
  a.label(names[6]!).out('dx', 'al');
  a.label(names[7]!).hlt().jmp(names[7]!);
  const program = a.toProgram('stepGuest');
  return { program, starts: names.map((n) => CODE + BigInt(a.offsetOf(n))), result: 0x25 };
}

/**
 * Reports CPUID leaf `leaf` (subleaf 0): EAX, EBX, ECX, EDX, then for each MSR of
 * `msrs` RDMSR's EAX (low half) and EDX (high half), as 4-byte writes to PORT; then
 * halts.
 */
export function cpuidMsrGuest(leaf: number, msrs: readonly number[]): GuestProgram {
  const a = new Assembler({ origin: CODE });
  a.mov('rsp', STACK_TOP);
  a.mov('eax', leaf).xor('ecx', 'ecx').cpuid();
  a.mov('r8d', 'ebx').mov('r9d', 'ecx').mov('r10d', 'edx');
  a.call('report');
  a.mov('eax', 'r8d').call('report');
  a.mov('eax', 'r9d').call('report');
  a.mov('eax', 'r10d').call('report');
  for (const msr of msrs) {
    a.mov('ecx', msr).rdmsr();
    a.mov('r8d', 'edx').call('report');
    a.mov('eax', 'r8d').call('report');
  }
  a.label('halt').hlt().jmp('halt');
  a.label('report').push('rdx').mov('edx', PORT).out('dx', 'eax').pop('rdx').ret();
  return a.toProgram(`cpuidMsrGuest(${leaf.toString(16)})`);
}

/** `nop; int3; mov al, 0x33; mov edx, PORT; out dx, al; hlt`: `int3` is at `breakpoint`, the next instruction at `after`. */
export function breakpointGuest(): { program: GuestProgram; breakpoint: bigint; after: bigint } {
  const a = new Assembler({ origin: CODE });
  a.nop();
  a.label('bp').int3();
  a.label('after').mov('al', 0x33).mov('edx', PORT).out('dx', 'al');
  a.label('halt').hlt().jmp('halt');
  return { program: a.toProgram('breakpointGuest'), breakpoint: CODE + BigInt(a.offsetOf('bp')), after: CODE + BigInt(a.offsetOf('after')) };
}
