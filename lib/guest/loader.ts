/**
 * Loading guest programs into a VM and pointing a vCPU at them: flat binaries in
 * real mode, and a 64-bit long-mode bootstrap (identity-mapped page tables and a
 * GDT) so guests can address memory above 1 MiB, e.g. a guest_memfd slot at 4 GiB.
 */
import { ArgumentTypeError, StateError } from '../core/errors';
import { u64 } from '../core/validate';
import { cpuidHasLongMode } from '../kvm/cpuid';
import { longModeSetup, type GuestProgram, type LongModeSetup } from './programs';
import { Vcpu } from '../kvm/vcpu';

/** Checks the vCPU and program arguments of the loaders, before any write. */
function checkArgs(op: string, vcpu: unknown, program: unknown, mode?: 'real' | 'long'): GuestProgram {
  if (!(vcpu instanceof Vcpu))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: vcpu must be a Vcpu (from vm.createVcpu()), got ${kind(vcpu)}`);
  if (program === null || typeof program !== 'object')
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: program must be a GuestProgram (e.g. guest.outLoop()), got ${kind(program)}`);
  const p = program as Partial<GuestProgram>;
  if (p.mode !== 'real' && p.mode !== 'long')
    throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${op}: program.mode must be 'real' or 'long', got ${kind(p.mode)}`);
  if (mode !== undefined && p.mode !== mode)
    throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `${op}: program ${String(p.name)} is a ${p.mode}-mode program`);
  if (!(p.bytes instanceof Uint8Array))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: program.bytes must be a Uint8Array, got ${kind(p.bytes)}`);
  u64(p.loadAddress, op, 'program.loadAddress');
  u64(p.entry, op, 'program.entry');
  return p as GuestProgram;
}

function kind(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return `'${value.slice(0, 20)}'`;
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

/** The long-mode setup argument: page tables to write and the segment state. */
function checkSetup(op: string, setup: unknown): LongModeSetup {
  const s = setup as Partial<LongModeSetup> | null;
  if (s === null || typeof s !== 'object' || !Array.isArray(s.memory) || s.sregs === null || typeof s.sregs !== 'object')
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: setup must be a LongModeSetup (from longModeSetup()), got ${kind(setup)}`);
  for (const [i, m] of s.memory.entries()) {
    if (m === null || typeof m !== 'object' || !((m as { bytes?: unknown }).bytes instanceof Uint8Array))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: setup.memory[${i}] must be { gpa, bytes: Uint8Array }`);
    u64((m as { gpa?: unknown }).gpa, op, `setup.memory[${i}].gpa`);
  }
  return s as LongModeSetup;
}

/**
 * Writes a real-mode program at its load address (through `vm.memory`, so a slot
 * must cover it) and sets the vCPU to run it: CS base 0, RIP at the entry, RFLAGS 2.
 *
 * @example
 * loadRealMode(vcpu, guest.outLoop(0x3f8));
 * const exit = await vcpu.run(); // { reason: 'io', port: 0x3f8, ... }
 */
export function loadRealMode(vcpu: Vcpu, program: GuestProgram): void {
  checkArgs('loadRealMode', vcpu, program, 'real');
  vcpu.vm.memory.write(program.loadAddress, program.bytes);
  vcpu.setSregs({ cs: { base: 0n, selector: 0 } });
  vcpu.setRegs({ rip: program.entry, rflags: 2n });
}

/**
 * Writes the long-mode tables and a 64-bit program (through `vm.memory`: slots must
 * cover both) and enters 64-bit mode directly through KVM_SET_SREGS. The vCPU's
 * CPUID must offer long mode (`vm.createVcpu` sets such a table by default):
 * mainline KVM refuses EFER.LME otherwise.
 */
export function loadLongMode(vcpu: Vcpu, program: GuestProgram, setup: LongModeSetup = longModeSetup()): void {
  checkArgs('loadLongMode', vcpu, program, 'long');
  checkSetup('loadLongMode', setup);
  if (!cpuidHasLongMode(vcpu.getCpuid()))
    throw new StateError(
      'ERR_NO_LONG_MODE',
      `loadLongMode: vCPU ${vcpu.id}'s CPUID does not offer long mode (leaf 0x80000001 EDX bit 29); give it one that does, e.g. vcpu.setCpuid(vm.kvm.getSupportedCpuid()) before its first run`,
    );
  for (const m of setup.memory) vcpu.vm.memory.write(m.gpa, m.bytes);
  vcpu.vm.memory.write(program.loadAddress, program.bytes);
  vcpu.setSregs(setup.sregs);
  vcpu.setRegs({ rip: program.entry, rflags: 2n });
}

/** Loads a program in the mode it was assembled for. */
export function loadProgram(vcpu: Vcpu, program: GuestProgram, setup?: LongModeSetup): void {
  if (checkArgs('loadProgram', vcpu, program).mode === 'long') loadLongMode(vcpu, program, setup);
  else loadRealMode(vcpu, program);
}
