/**
 * `gmem layout FILE.json`: build a layout on this host, print its memory map, tear
 * it down.
 * @internal
 */
import { readFileSync } from 'node:fs';
import { Kvm } from '../kvm/kvm';
import { createMemoryLayout, LayoutError, parseLayout } from '../memory/layout';
import { explainProbeFailure } from './probe';
import { findVmType } from '../testing/index';

/** Runs the command; returns the exit code. Output goes to stdout/stderr. */
export async function runLayoutCommand(file: string, opts: { json?: boolean; device: string }): Promise<number> {
  let spec: unknown;
  try {
    spec = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    process.stderr.write(`gmem layout: cannot read ${file}: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
  let parsed;
  try {
    parsed = parseLayout(spec);
  } catch (e) {
    if (e instanceof LayoutError) {
      process.stderr.write(`gmem layout: ${file}: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  let kvm: Kvm;
  try {
    kvm = Kvm.open(opts.device);
  } catch (e) {
    process.stderr.write(`gmem layout: ${explainProbeFailure(e, opts.device)}\n`);
    return 2;
  }
  try {
    // The spec's VM type, or the first one offering what its guest_memfd files ask for.
    let type = parsed.vm?.type;
    if (type === undefined) {
      const gmems = Object.values(parsed.files).filter((f) => f.type === 'guest_memfd');
      const match = findVmType(
        {
          ...(gmems.length ? { guestMemfd: true } : {}),
          ...(gmems.some((f) => f.mmap) ? { mmap: true } : {}),
          ...(gmems.some((f) => f.initShared) ? { initShared: true } : {}),
        },
        opts.device,
      );
      if (!match.type) {
        process.stderr.write(`gmem layout: ${file}: ${match.reason}\n`);
        return 1;
      }
      type = match.type;
    }
    using vm = kvm.createVm({ type });
    const layout = await createMemoryLayout(vm, spec);
    const map = layout.describe();
    if (opts.json)
      process.stdout.write(JSON.stringify(map.entries, (_, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v), 2) + '\n');
    else process.stdout.write(`memory map of ${file} (built on ${opts.device} in a '${type}' VM, then torn down):\n${map.text}\n`);
    await layout.close();
    return 0;
  } catch (e) {
    process.stderr.write(`gmem layout: ${file}: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  } finally {
    kvm.close();
  }
}
