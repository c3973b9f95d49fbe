#!/usr/bin/env node
/**
 * `gmem`: command-line face of guest-memfd.
 *
 *   gmem probe [--json] [--device PATH]   this host's KVM guest-memory capabilities
 *   gmem layout FILE.json [--json]        build a memory layout, print its map, tear it down
 *   gmem vm-run --kernel PATH -- CMD...    run CMD inside a QEMU guest booted from PATH
 */
import { Command, InvalidArgumentError } from 'commander';
import { defaultKvmPath } from '../kvm/kvm';
import { runLayoutCommand } from './layout-cli';
import { explainProbeFailure, formatProbe, probe, probeFailureJson, probeJson } from './probe';
import { runInVm, VmRunError } from './vm-run';

/** Builds the command tree (exported for tests). @internal */
export function buildCli(): Command {
  const program = new Command('gmem')
    .description('Inspect and script Linux KVM guest memory (guest_memfd, memfd, memory slots)')
    .version((require('../../package.json') as { version: string }).version)
    .enablePositionalOptions()
    .showHelpAfterError();

  program
    .command('probe')
    .description("print this host's KVM guest-memory capabilities")
    .option('--json', 'print JSON instead of a table')
    .option('--device <path>', 'KVM device to open', defaultKvmPath())
    .action((opts: { json?: boolean; device: string }) => {
      let report;
      try {
        report = probe(opts.device);
      } catch (e) {
        if (opts.json) process.stdout.write(probeFailureJson(e, opts.device) + '\n');
        else process.stderr.write(`gmem probe: ${explainProbeFailure(e, opts.device)}\n`);
        process.exitCode = 2;
        return;
      }
      process.stdout.write((opts.json ? probeJson(report) : formatProbe(report)) + '\n');
    });

  program
    .command('layout')
    .description('build the memory layout described by FILE.json on this host, print its memory map, tear it down')
    .argument('<file>', 'layout JSON file')
    .option('--json', 'print the memory map as JSON')
    .option('--device <path>', 'KVM device to open', defaultKvmPath())
    .action(async (file: string, opts: { json?: boolean; device: string }) => {
      process.exitCode = await runLayoutCommand(file, opts);
    });

  program
    .command('vm-run')
    .description(
      'run a command inside a QEMU guest booted from a kernel image, with the host root file system shared read-only and the working directory read-write; exits with the command\'s status',
    )
    .requiredOption('--kernel <path>', 'kernel image (bzImage) to boot')
    .option('--memory <MiB>', 'guest memory in MiB', (v) => integerOption('--memory', v), 4096)
    .option('--cpus <n>', 'guest CPUs', (v) => integerOption('--cpus', v), 1)
    .option('--numa-nodes <n>', 'NUMA nodes (memory split evenly)', (v) => integerOption('--numa-nodes', v), 1)
    .option('--timeout <seconds>', 'time limit for the whole run', (v) => integerOption('--timeout', v), 1800)
    .option('--qemu <path>', 'QEMU binary (default $GMEM_QEMU or qemu-system-x86_64)')
    .option('--append <args>', 'extra kernel command-line arguments')
    .argument('<command...>', 'the command to run inside (put it after --)')
    .passThroughOptions()
    .action(async (command: string[], opts: { kernel: string; memory: number; cpus: number; numaNodes: number; timeout: number; qemu?: string; append?: string }) => {
      try {
        const result = await runInVm({
          kernel: opts.kernel,
          command,
          memoryMiB: opts.memory,
          cpus: opts.cpus,
          numaNodes: opts.numaNodes,
          timeoutMs: opts.timeout * 1000,
          ...(opts.qemu ? { qemu: opts.qemu } : {}),
          ...(opts.append ? { append: opts.append } : {}),
        });
        if (result.error) process.stderr.write(`gmem vm-run: ${result.error}\n`);
        process.exitCode = result.exitCode ?? (result.timedOut ? 124 : 125);
      } catch (e) {
        process.stderr.write(`gmem vm-run: ${e instanceof Error ? e.message : String(e)}\n`);
        process.exitCode = e instanceof VmRunError ? 127 : 125;
      }
    });

  return program;
}

function integerOption(name: string, value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got '${value}'`);
  return n;
}

if (require.main === module) {
  buildCli()
    .parseAsync(process.argv)
    .catch((e: unknown) => {
      process.stderr.write(`gmem: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    });
}
