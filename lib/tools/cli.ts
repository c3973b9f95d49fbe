#!/usr/bin/env node
/**
 * `gmem`: command-line face of guest-memfd.
 *
 *   gmem probe [--json] [--device PATH]   this host's KVM guest-memory capabilities
 *   gmem layout FILE.json [--json]        build a memory layout, print its map, tear it down
 */
import { Command } from 'commander';
import { defaultKvmPath } from '../kvm/kvm';
import { runLayoutCommand } from './layout-cli';
import { explainProbeFailure, formatProbe, probe, probeJson } from './probe';

/** Builds the command tree (exported for tests). @internal */
export function buildCli(): Command {
  const program = new Command('gmem')
    .description('Inspect and script Linux KVM guest memory (guest_memfd, memfd, memory slots)')
    .version((require('../../package.json') as { version: string }).version)
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
        process.stderr.write(`gmem probe: ${explainProbeFailure(e, opts.device)}\n`);
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

  return program;
}

if (require.main === module) {
  buildCli()
    .parseAsync(process.argv)
    .catch((e: unknown) => {
      process.stderr.write(`gmem: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    });
}
