/**
 * `npm run demo`: a guided tour on this host's real KVM. Creates a VM, a guest_memfd
 * and its shared memory, maps them, writes, punches a hole, runs a guest over them,
 * and shows what each step did. Adapts to what the kernel offers: where guest_memfd
 * is mappable and starts shared it is its own shared backing, otherwise a memfd is.
 * @internal
 */
import { VmType, type VmTypeName } from '../core/caps';
import { Kvm, defaultKvmPath } from '../kvm/kvm';
import type { Vm } from '../kvm/vm';
import { loadRealMode } from '../guest/loader';
import * as guest from '../guest/programs';
import { Memfd } from '../memory/memfd';
import type { MemoryFile } from '../memory/memory-file';
import { explainProbeFailure, formatProbe, probe } from './probe';

function show(label: string, bytes: Buffer): string {
  return `${label}: ${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`;
}

/** The first VM type whose VMs have guest_memfd, preferring one where it is mappable and initially shared. */
function pickVm(kvm: Kvm): { vm: Vm; inPlace: boolean } | undefined {
  let fallback: VmTypeName | undefined;
  for (const type of kvm.capabilities().vmTypes as VmTypeName[]) {
    if (!(type in VmType)) continue;
    const vm = kvm.createVm({ type });
    const caps = vm.capabilities();
    if (caps.guestMemfd && (caps.guestMemfdFlags.raw & 3n) === 3n) return { vm, inPlace: true };
    if (caps.guestMemfd) fallback ??= type;
    vm.close();
  }
  return fallback ? { vm: kvm.createVm({ type: fallback }), inPlace: false } : undefined;
}

/** Runs the demo, printing to stdout. Returns the exit code. */
export async function runDemo(log: (line: string) => void = console.log): Promise<number> {
  let report;
  try {
    report = probe();
  } catch (e) {
    log(`demo: ${explainProbeFailure(e, defaultKvmPath())}`);
    return 2;
  }
  log(formatProbe(report));
  log('');

  using kvm = Kvm.open();
  const picked = pickVm(kvm);
  if (!picked) {
    log('demo: no VM type on this host offers guest_memfd (KVM_CAP_GUEST_MEMFD); nothing to show');
    return 2;
  }
  using vm = picked.vm;
  const MiB = 1 << 20;
  log(`using a '${vm.type}' VM`);

  using gmem = vm.createGuestMemfd({ size: 2 * MiB, mmap: picked.inPlace, initShared: picked.inPlace });
  using ram = picked.inPlace ? undefined : Memfd.create('demo-ram', { size: 2 * MiB, allowSealing: true });
  const shared: MemoryFile = ram ?? gmem;
  if (ram) {
    ram.seal(['grow']);
    log(`created ${gmem.description} for private memory (this kernel cannot map it) and ${ram.description} as its shared memory, sealed [${ram.seals.join(', ')}]`);
  } else {
    log(`created ${gmem.description}: ${gmem.size} bytes, flags mmap|init-shared: it is its own shared memory`);
  }
  const view = shared.map();
  view.buffer.write('written by the host', 0);
  view.buffer.fill(0x5a, 4096, 8192);
  log(show('shared page 0', view.buffer.subarray(0, 16)));
  log(show('shared page 1', view.buffer.subarray(4096, 4112)));

  const events: string[] = [];
  const off = shared.notifier.register({
    invalidateStart: (e) => void events.push(`invalidateStart ${e.cause} offset ${e.offset} length ${e.length}`),
    invalidateEnd: (e) => void events.push(`invalidateEnd   ${e.cause} offset ${e.offset} length ${e.length}`),
  });
  await shared.punchHole(4096, 4096);
  off();
  log('punched a hole in page 1; the notifier said:');
  for (const e of events) log(`  ${e}`);
  log(show('shared page 0', view.buffer.subarray(0, 16)));
  log(show('shared page 1', view.buffer.subarray(4096, 4112)));

  // A real guest touches the memory: it reads what the host wrote and reports each
  // byte on port 0x3f8, then writes a pattern the host reads back.
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 }, userspace: shared });
  log(`added slot ${slot.id}: GPA 0x0..0x${(2 * MiB).toString(16)}, private memory ${gmem.description}, shared memory ${shared.description}`);
  const message = 'hello from the host';
  view.buffer.write(message, 0x8000);
  const vcpu = vm.createVcpu(0);
  loadRealMode(vcpu, guest.readAndReport(0x8000, message.length, 0x3f8));
  const seen: number[] = [];
  const last = await vcpu.runUntil({
    io(exit) {
      for (let i = 0; i < exit.count; i++) seen.push(exit.data[i * exit.size]!);
    },
  });
  log(`the guest read GPA 0x8000 and sent over port 0x3f8: "${Buffer.from(seen).toString()}" (then ${last.reason})`);
  loadRealMode(vcpu, guest.writePattern(0x9000, 16, 0x42, 0x3f8));
  await vcpu.runUntil({ io: () => undefined });
  log(show('the guest wrote GPA 0x9000; the host sees through the view', view.buffer.subarray(0x9000, 0x9010)));
  await shared.punchHole(0x8000, 0x1000);
  seen.length = 0;
  loadRealMode(vcpu, guest.readAndReport(0x8000, 4, 0x3f8));
  await vcpu.runUntil({
    io(exit) {
      seen.push(exit.data[0]!);
    },
  });
  log(`after punchHole(0x8000, 4096) the guest reads: [${seen.join(', ')}]`);
  vcpu.close();
  await vm.removeMemorySlot(slot);

  view.unmap();
  log(`unmapped the view: its buffer now has length ${view.buffer.length}`);
  return 0;
}

if (require.main === module) {
  runDemo().then(
    (code) => (process.exitCode = code),
    (e: unknown) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}
