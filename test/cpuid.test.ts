// CPUID tables: what KVM offers, what each vCPU gets, and the leaf editor.
import { expect, test as plain } from 'vitest';
import { cpuidHasLongMode, CpuidFlag, findCpuid, withCpuidLeaf, type CpuidEntry } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';

const test = kvmTest();

test('KVM_GET_SUPPORTED_CPUID lists leaf 0 (vendor) and the extended leaves, long mode included', ({ kvm }) => {
  const table = kvm.getSupportedCpuid();
  expect(table.length).toBeGreaterThan(5);
  const leaf0 = findCpuid(table, 0)!;
  expect(leaf0.eax).toBeGreaterThanOrEqual(1); // highest basic leaf
  const vendor = Buffer.alloc(12);
  vendor.writeUInt32LE(leaf0.ebx, 0);
  vendor.writeUInt32LE(leaf0.edx, 4);
  vendor.writeUInt32LE(leaf0.ecx, 8);
  expect(vendor.toString('latin1')).toMatch(/^[\x20-\x7e]{12}$/);
  expect(cpuidHasLongMode(table)).toBe(true);
  // A fresh copy every call: editing one does not change the next.
  const highest = leaf0.eax;
  (leaf0 as { eax: number }).eax = 0;
  expect(findCpuid(kvm.getSupportedCpuid(), 0)!.eax).toBe(highest);
});

test('a new vCPU shows the supported table with its own APIC id in CPUID.1:EBX[31:24]', ({ kvm, vm }) => {
  const supported = kvm.getSupportedCpuid();
  const vcpu = vm.createVcpu(3);
  const table = vcpu.getCpuid();
  expect(table.length).toBe(supported.length);
  expect(findCpuid(table, 1)!.ebx >>> 24).toBe(3);
  expect(findCpuid(table, 0)).toEqual(findCpuid(supported, 0));
  expect(cpuidHasLongMode(table)).toBe(true);
});

test('createVcpu({ cpuid: false }) leaves the kernel\'s empty table; setCpuid installs one before the first run', ({ kvm, vm }) => {
  const vcpu = vm.createVcpu(0, { cpuid: false });
  expect(vcpu.getCpuid()).toEqual([]);
  const table = withCpuidLeaf(kvm.getSupportedCpuid(), 0x40000000, 0, { eax: 0x40000001, ebx: 0x4b4d564b });
  vcpu.setCpuid(table);
  expect(findCpuid(vcpu.getCpuid(), 0x40000000)).toMatchObject({ eax: 0x40000001, ebx: 0x4b4d564b });
});

test('an empty table reads and installs as empty (no copy from or into an array without storage)', ({ vm }) => {
  const vcpu = vm.createVcpu(0, { cpuid: false });
  expect(vcpu.getCpuid()).toEqual([]);
  vcpu.setCpuid([]);
  expect(vcpu.getCpuid()).toEqual([]);
});

test('setCpuid checks every entry before the ioctl', ({ vm }) => {
  const vcpu = vm.createVcpu(0, { cpuid: false });
  expect(() => vcpu.setCpuid('x' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  expect(() => vcpu.setCpuid([null as never])).toThrow(/vcpu\.setCpuid: entries\[0\] must be a CPUID entry object/);
  expect(() => vcpu.setCpuid([{ function: -1 } as CpuidEntry])).toThrow(/entries\[0\]\.function -1 is outside 0\.\.4294967295/);
  expect(() => vcpu.setCpuid([{ function: 1, eax: 2 ** 32 } as CpuidEntry])).toThrow(/entries\[0\]\.eax/);
  expect(() => vcpu.setCpuid([{ function: 1 } as CpuidEntry, { function: 1 } as CpuidEntry])).toThrow(/entries\[1\] repeats leaf 0x1/);
  expect(() => vcpu.setCpuid(Array.from({ length: 257 }, (_, i) => ({ function: i }) as CpuidEntry))).toThrow(/KVM_MAX_CPUID_ENTRIES/);
  expect(() => vm.createVcpu(1, { cpuid: 5 as never })).toThrow(/options\.cpuid must be an array/);
  expect(vcpu.getCpuid()).toEqual([]);
});

plain('withCpuidLeaf edits a copy, adds missing leaves and respects sub-leaves', () => {
  const table: CpuidEntry[] = [
    { function: 1, index: 0, flags: 0, eax: 1, ebx: 2, ecx: 3, edx: 4 },
    { function: 7, index: 0, flags: CpuidFlag.SignificantIndex, eax: 1, ebx: 0, ecx: 0, edx: 0 },
    { function: 7, index: 1, flags: CpuidFlag.SignificantIndex, eax: 0, ebx: 0, ecx: 0, edx: 0 },
  ];
  const edited = withCpuidLeaf(table, 7, 1, { eax: 0x99 });
  expect(findCpuid(edited, 7, 1)!.eax).toBe(0x99);
  expect(findCpuid(edited, 7, 0)!.eax).toBe(1);
  expect(findCpuid(table, 7, 1)!.eax).toBe(0);
  expect(findCpuid(edited, 1, 5)).toEqual(table[0]); // leaf 1 has no sub-leaves
  const added = withCpuidLeaf(table, 0xd, 1, { eax: 5 });
  expect(added).toHaveLength(4);
  expect(findCpuid(added, 0xd, 1)).toMatchObject({ flags: CpuidFlag.SignificantIndex, eax: 5 });
  expect(() => withCpuidLeaf(table, 1, 0, { esi: 1 } as never)).toThrow(/patch\.esi is not a CPUID output/);
  expect(() => withCpuidLeaf(table, 1, 0, { eax: -1 })).toThrow(/patch\.eax -1 is outside/);
});
