/**
 * Loading guest programs into a VM and pointing a vCPU at them: flat binaries in
 * real mode, and a 64-bit long-mode bootstrap (identity-mapped page tables and a
 * GDT) so guests can address memory above 1 MiB, e.g. a guest_memfd slot at 4 GiB.
 */
import { ArgumentTypeError, StateError } from '../core/errors';
import { cpuidHasLongMode } from '../kvm/cpuid';
import { longModeSetup, type GuestProgram, type LongModeSetup } from './programs';
import type { Vcpu } from '../kvm/vcpu';

/**
 * Writes a real-mode program at its load address (through `vm.memory`, so a slot
 * must cover it) and sets the vCPU to run it: CS base 0, RIP at the entry, RFLAGS 2.
 *
 * @example
 * loadRealMode(vcpu, guest.outLoop(0x3f8));
 * const exit = await vcpu.run(); // { reason: 'io', port: 0x3f8, ... }
 */
export function loadRealMode(vcpu: Vcpu, program: GuestProgram): void {
  if (program.mode !== 'real')
    throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `loadRealMode: program ${program.name} is a ${program.mode}-mode program`);
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
  if (program.mode !== 'long')
    throw new ArgumentTypeError('ERR_INVALID_ARG_VALUE', `loadLongMode: program ${program.name} is a ${program.mode}-mode program`);
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
  if (program.mode === 'long') loadLongMode(vcpu, program, setup);
  else loadRealMode(vcpu, program);
}
