/**
 * `npm run demo`: a guided tour on this host's real KVM. Creates a VM, a guest_memfd
 * and a memfd, maps them, writes, punches a hole, and shows what each step did.
 * @internal
 */
import { Kvm } from './kvm';
import { Memfd } from './memfd';
import { explainProbeFailure, formatProbe, probe } from './probe';
import { defaultKvmPath } from './kvm';

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
