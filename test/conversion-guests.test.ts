// Conversion driven by real guests, in the spirit of the kernel's
// x86/private_mem_conversions_test and x86/private_mem_kvm_exits_test: the guest asks
// with KVM_HC_MAP_GPA_RANGE, runUntil's default policy converts through vm.convert,
// and both sides check the memory after each step.
import { expect } from 'vitest';
import { Cap, Hypercall, loadLongMode, Memfd, type GuestMemfd, type IoExit, type Vcpu, type Vm } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';
import { explicitConversionGuest, PAGE, repeatedReadGuest, Sync, SYNC_PORT } from './conversion-guests';
import { slowdown } from './runs';

const MiB = 1 << 20;
const BASE = 1n << 32n;
const PER_VCPU = 4 * MiB;
const test = kvmTest({ privateMemory: true, hypercallExit: true });
const faultTest = kvmTest({ privateMemory: true, memoryFaultInfo: true });

interface Setup {
  vm: Vm;
  gmem: GuestMemfd;
  ram: Memfd;
}

/** The data region: one guest_memfd and one memfd (its shared backing), split into `slots` slots at BASE. */
function dataSlots(vm: Vm, vcpus: number, slots: number): Setup {
  const size = PER_VCPU * vcpus;
  const gmem = vm.createGuestMemfd({ size });
  const ram = Memfd.create('conversion-data', { size });
  const slotSize = size / slots;
  for (let i = 0; i < slots; i++)
    vm.addMemorySlot({
      guestPhysAddr: BASE + BigInt(i * slotSize),
      size: slotSize,
      userspace: ram,
      userspaceOffset: i * slotSize,
      guestMemfd: { file: gmem, offset: i * slotSize },
    });
  ram[Symbol.dispose](); // closes once the VM removes the slots
  return { vm, gmem, ram };
}

/** Bytes of the shared backing (the memfd) behind `[gpa, +size)`. */
function sharedBytes(s: Setup, gpa: bigint, size: number): Buffer {
  return s.ram.map(Number(gpa - BASE), size).buffer;
}

function allEqual(bytes: Uint8Array, value: number): boolean {
  for (const b of bytes) if (b !== value) return false;
  return true;
}

/** Runs one vCPU's guest to its Done, answering its syncs; throws with the guest's words on a failed check. */
async function drive(s: Setup, vcpu: Vcpu, checks: readonly string[]): Promise<number> {
  let syncs = 0;
  const exit = await vcpu.runUntil({
    timeoutMs: 120_000 * slowdown,
    async io(e: IoExit) {
      if (e.port !== SYNC_PORT || e.direction !== 'out') throw new Error(`unexpected port I/O: ${e.direction} 0x${e.port.toString(16)}`);
      const command = e.data.readUInt32LE(0);
      const r = vcpu.getRegs();
      const gpa = r.rdi;
      const size = Number(r.rsi);
      syncs++;
      switch (command) {
        case Sync.Shared: {
          // The host reads the shared memory through the library, and the file agrees.
          const seen = s.vm.memory.read(gpa, size);
          if (!allEqual(seen, Number(r.r8)))
            throw new Error(`host: GPA 0x${gpa.toString(16)}+0x${size.toString(16)} should read 0x${r.r8.toString(16)} (shared), got 0x${seen[seen.findIndex((b) => b !== Number(r.r8))]!.toString(16)}`);
          expect(allEqual(sharedBytes(s, gpa, size), Number(r.r8))).toBe(true);
          expect(s.vm.attributes.at(gpa)).toBe('shared');
          s.vm.memory.write(gpa, Buffer.alloc(size, Number(r.r9)));
          return;
        }
        case Sync.Private: {
          // The host cannot reach private memory, and the shared copy was discarded.
          expect(() => s.vm.memory.read(gpa, size)).toThrow(expect.objectContaining({ code: 'ERR_PRIVATE_GPA' }));
          expect(s.vm.attributes.ranges(gpa, gpa + BigInt(size)).map((x) => x.state)).toEqual(['private']);
          expect(allEqual(sharedBytes(s, gpa, size), 0)).toBe(true);
          return;
        }
        case Sync.Punch: {
          // The guest_memfd pages under private memory go; the range stays private.
          for (let at = gpa; at < gpa + BigInt(size); ) {
            const slot = s.vm.slotAt(at)!;
            const end = slot.guestPhysAddr + slot.size < gpa + BigInt(size) ? slot.guestPhysAddr + slot.size : gpa + BigInt(size);
            await s.gmem.punchHole(slot.guestMemfd!.offset + Number(at - slot.guestPhysAddr), Number(end - at));
            at = end;
          }
          expect(s.vm.attributes.at(gpa)).toBe('private');
          return;
        }
        case Sync.Done:
          return 'stop';
        case Sync.Fail:
          throw new Error(`guest: check ${r.r10} failed (${checks[Number(r.r10)]}): at GPA 0x${gpa.toString(16)} expected 0x${r.r8.toString(16)}, found 0x${r.r9.toString(16)}`);
        case Sync.HypercallFailed:
          throw new Error(`guest: ${checks[Number(r.r10)]}: it returned ${BigInt.asIntN(64, r.r9)}`);
        default:
          throw new Error(`guest: unknown sync ${command}`);
      }
    },
  });
  expect(exit).toMatchObject({ reason: 'io', port: SYNC_PORT });
  return syncs;
}

for (const { vcpus, slots } of [
  { vcpus: 1, slots: 1 },
  { vcpus: 1, slots: 2 },
  { vcpus: 2, slots: 1 },
])
  test(`a guest converts 4 KiB and 2 MiB ranges both ways with KVM_HC_MAP_GPA_RANGE and both sides see what they should (${vcpus} vCPU${vcpus > 1 ? 's' : ''}, ${slots} slot${slots > 1 ? 's' : ''})`, async ({ vm }) => {
    vm.enableCap(Cap.ExitHypercall, [1 << Hypercall.MapGpaRange]);
    // Low memory: code, page tables (0x10000..0x1b000) and stacks.
    vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: 'anonymous' });
    const s = dataSlots(vm, vcpus, slots);
    const runs = Array.from({ length: vcpus }, (_, i) => {
      const guest = explicitConversionGuest(BASE + BigInt(i * PER_VCPU), 0x20000n + BigInt(i) * 0x20000n, 0x100000n - BigInt(i) * 0x10000n);
      const vcpu = vm.createVcpu(i);
      loadLongMode(vcpu, guest.program);
      return drive(s, vcpu, guest.checks);
    });
    const syncs = await Promise.all(runs);
    expect(syncs.every((n) => n > 20)).toBe(true);
    // Everything is shared again.
    expect(vm.attributes.count).toBe(0);
  });

faultTest('a private access to a slot without guest_memfd is a decoded memory-fault exit (private, the page, its size)', async ({ vm }) => {
  const gpa = 0xc0000000n;
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: 'anonymous' });
  vm.addMemorySlot({ guestPhysAddr: gpa, size: PAGE, userspace: 'anonymous' });
  vm.setMemoryAttributes(gpa, PAGE, 8n);
  const vcpu = vm.createVcpu(0);
  loadLongMode(vcpu, repeatedReadGuest(gpa, 0x20000n));
  const exit = await vcpu.run({ timeoutMs: 60_000 * slowdown });
  expect(exit).toMatchObject({ reason: 'memory-fault', private: true, gpa, size: BigInt(PAGE), errno: 14 });
});

faultTest('a private access after its guest_memfd slot is deleted under the running vCPU is a decoded memory-fault exit', async ({ vm }) => {
  const gpa = 0xc0000000n;
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, userspace: 'anonymous' });
  const gmem = vm.createGuestMemfd({ size: PAGE });
  const slot = vm.addMemorySlot({ guestPhysAddr: gpa, size: PAGE, guestMemfd: { file: gmem } });
  vm.setMemoryAttributes(gpa, PAGE, 8n);
  const vcpu = vm.createVcpu(0);
  loadLongMode(vcpu, repeatedReadGuest(gpa, 0x20000n));
  const running = vcpu.run({ timeoutMs: 60_000 * slowdown });
  await new Promise((r) => setTimeout(r, 50));
  expect(vcpu.running).toBe(true); // the guest reads its private page in a loop
  await vm.removeMemorySlot(slot);
  const exit = await running;
  expect(exit).toMatchObject({ reason: 'memory-fault', private: true, gpa, size: BigInt(PAGE) });
});

