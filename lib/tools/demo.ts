/**
 * `npm run demo`: a guided tour on this host's real KVM. Creates a VM, a guest_memfd
 * and a memfd, maps them, writes, punches a hole, and shows what each step did.
 * @internal
 */
import { Kvm } from '../kvm/kvm';
import { loadRealMode } from '../guest/loader';
import * as guest from '../guest/programs';
import { Memfd } from '../memory/memfd';
import { explainProbeFailure, formatProbe, probe } from './probe';
import { defaultKvmPath } from '../kvm/kvm';

function show(label: string, bytes: Buffer): string {
  return `${label}: ${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`;
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
  using vm = kvm.createVm();
  const MiB = 1 << 20;

  using gmem = vm.createGuestMemfd({ size: 2 * MiB, mmap: true, initShared: true });
  log(`created ${gmem.description}: ${gmem.size} bytes, flags mmap|init-shared`);
  const gview = gmem.map();
  gview.buffer.write('written by the host into guest_memfd', 0);
  gview.buffer.fill(0x5a, 4096, 8192);
  log(show('guest_memfd page 0', gview.buffer.subarray(0, 16)));
  log(show('guest_memfd page 1', gview.buffer.subarray(4096, 4112)));

  using ram = Memfd.create('demo-ram', { size: 2 * MiB, allowSealing: true });
  ram.seal(['shrink', 'grow']);
  const rview = ram.map();
  rview.buffer.write('shared memory in a memfd', 0);
  log(`created ${ram.description}, sealed [${ram.seals.join(', ')}]`);

  const events: string[] = [];
  const off = gmem.notifier.register({
    invalidateStart: (e) => void events.push(`invalidateStart ${e.cause} offset ${e.offset} length ${e.length}`),
    invalidateEnd: (e) => void events.push(`invalidateEnd   ${e.cause} offset ${e.offset} length ${e.length}`),
  });
  await gmem.punchHole(4096, 4096);
  off();
  log('punched a hole in guest_memfd page 1; the notifier said:');
  for (const e of events) log(`  ${e}`);
  log(show('guest_memfd page 0', gview.buffer.subarray(0, 16)));
  log(show('guest_memfd page 1', gview.buffer.subarray(4096, 4112)));

  // A real guest touches the guest_memfd memory: it reads what the host wrote and
  // reports each byte on port 0x3f8, then writes a pattern the host reads back.
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 2 * MiB, guestMemfd: { file: gmem, offset: 0 } });
  log(`added slot ${slot.id}: GPA 0x0..0x${(2 * MiB).toString(16)} -> ${gmem.description} (shared and private backing)`);
  const message = 'hello from the host';
  gview.buffer.write(message, 0x8000);
  const vcpu = vm.createVcpu(0);
  loadRealMode(vcpu, guest.readAndReport(0x8000, message.length, 0x3f8));
  const seen: number[] = [];
  const last = await vcpu.runUntil({
    io(exit) {
      for (let i = 0; i < exit.count; i++) seen.push(exit.data[i * exit.size]!);
    },
  });
  log(`the guest read guest_memfd at GPA 0x8000 and sent over port 0x3f8: "${Buffer.from(seen).toString()}" (then ${last.reason})`);
  loadRealMode(vcpu, guest.writePattern(0x9000, 16, 0x42, 0x3f8));
  await vcpu.runUntil({ io: () => undefined });
  log(show('the guest wrote GPA 0x9000; the host sees through the view', gview.buffer.subarray(0x9000, 0x9010)));
  await gmem.punchHole(0x8000, 0x1000);
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

  gview.unmap();
  log(`unmapped the guest_memfd view: its buffer now has length ${gview.buffer.length}`);
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
