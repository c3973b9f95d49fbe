// The gmem CLI, run in-process through its command tree and as a real process.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { buildCli } from '../lib/tools/cli';
import { explainProbeFailure, formatProbe, probe } from '../lib/tools/probe';
import { KvmError } from '../lib/core/errors';
import { kvmPath, needsKvm, noKvm } from './helpers';

async function run(args: string[]): Promise<{ out: string; err: string; code: number | undefined }> {
  let out = '';
  let err = '';
  const write = process.stdout.write.bind(process.stdout);
  const writeErr = process.stderr.write.bind(process.stderr);
  const savedCode = process.exitCode;
  process.exitCode = undefined;
  process.stdout.write = ((chunk: string) => ((out += chunk), true)) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string) => ((err += chunk), true)) as typeof process.stderr.write;
  try {
    await buildCli().exitOverride().parseAsync(['node', 'gmem', ...args]);
  } finally {
    process.stdout.write = write;
    process.stderr.write = writeErr;
  }
  const code = process.exitCode;
  process.exitCode = savedCode;
  return { out, err, code: code as number | undefined };
}

describe('gmem probe without KVM', () => {
  test('a missing device prints that it is missing and exits non-zero; only /dev/kvm missing means no KVM', async () => {
    const r = await run(['probe', '--device', '/nonexistent/kvm']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/\/nonexistent\/kvm does not exist \(the default KVM device is \/dev\/kvm\)/);
    expect(r.err).not.toMatch(/no KVM/);
    expect(r.out).toBe('');
    const e = new KvmError({ errno: 2, syscall: 'open' });
    expect(explainProbeFailure(e, '/dev/kvm')).toMatch(/this machine has no KVM/);
  });

  test('--json reports a failure as JSON on stdout', async () => {
    const r = await run(['probe', '--json', '--device', '/nonexistent/kvm']);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.out)).toMatchObject({ path: '/nonexistent/kvm', error: { code: 'ENOENT', errno: 2, advice: expect.stringMatching(/does not exist/) } });
    expect(r.err).toBe('');
  });

  test('permission problems get advice about the kvm group, said once', () => {
    const e = new KvmError({ errno: 13, syscall: 'open' });
    expect(explainProbeFailure(e, '/dev/kvm')).toMatch(/group that owns it/);
  });

  const asNobody = existsSync('/usr/bin/setpriv') && process.getuid?.() === 0 && !noKvm ? undefined : 'needs root, setpriv and a KVM device';
  test.skipIf(!!asNobody)(`an unprivileged open says permission denied once, with the advice${asNobody ? ` [skipped: ${asNobody}]` : ''}`, () => {
    const r = spawnSync(
      'setpriv',
      ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', `try { require(${JSON.stringify(path.join(__dirname, '..'))}).Kvm.open(${JSON.stringify(kvmPath)}) } catch (e) { console.log(e.code + ' ' + e.message) }`],
      { encoding: 'utf8' },
    );
    expect(r.stdout).toMatch(/^EACCES /);
    expect(r.stdout.match(/permission denied/gi)).toHaveLength(1);
    expect(r.stdout).toMatch(/group that owns the device/);
  });
});

describe.skipIf(noKvm)(needsKvm('gmem probe on the real kernel'), () => {
  test('prints a table of capabilities, system and default VM', async () => {
    const r = await run(['probe', '--device', kvmPath]);
    expect(r.code).toBeUndefined();
    expect(r.out).toMatch(/API version 12/);
    expect(r.out).toMatch(/KVM_CAP_GUEST_MEMFD\s/);
    expect(r.out).toMatch(/KVM_CAP_GUEST_MEMFD_FLAGS/);
    expect(r.out).toMatch(/shared\/private conversion: /);
    expect(r.out).toBe(formatProbe(probe(kvmPath)) + '\n');
  });

  test('--json prints the same facts as JSON', async () => {
    const r = await run(['probe', '--json', '--device', kvmPath]);
    const json = JSON.parse(r.out);
    expect(json.apiVersion).toBe(12);
    expect(typeof json.vm.guestMemfd).toBe('boolean');
    expect(json.vm.raw.KVM_CAP_NR_MEMSLOTS).toBeGreaterThan(0);
  });

  test('per VM type, the probe tries a guest_memfd mapping: NUMA policy and userfaultfd (missing, minor), in the table and the JSON', async () => {
    const report = probe(kvmPath);
    expect(report.guestMemfdMapping.map((m) => m.vmType)).toEqual(report.system.vmTypes);
    for (const m of report.guestMemfdMapping) {
      for (const f of [m.mempolicy, m.userfaultfdMissing, m.userfaultfdMinor]) {
        expect(typeof f.supported).toBe('boolean');
        expect(f.detail.length).toBeGreaterThan(10);
        if (!m.mappable) expect(f.supported).toBe(false);
      }
      if (m.mappable) {
        expect(m.userfaultfdMissing.detail).toMatch(/UFFDIO_REGISTER \(mode missing\)|before registering/);
        expect(m.userfaultfdMinor.detail).toMatch(/UFFDIO_REGISTER \(mode minor\)|before registering/);
        expect(m.mempolicy.detail).toMatch(/mbind\(MPOL_BIND, node \d+\)/);
      }
    }
    const table = formatProbe(report);
    expect(table).toMatch(/guest_memfd mappings \(tried on a small file per VM type\):/);
    expect(table).toMatch(/VM type\s+mappable\s+NUMA policy\s+uffd missing\s+uffd minor/);
    for (const m of report.guestMemfdMapping) expect(table).toMatch(new RegExp(`^${m.vmType}\\s+(yes|no)\\s+(yes|no)`, 'm'));
    const json = JSON.parse((await run(['probe', '--json', '--device', kvmPath])).out);
    expect(json.guestMemfdMapping).toEqual(JSON.parse(JSON.stringify(report.guestMemfdMapping)));
  });

  test('the built bin runs as a process', () => {
    const cli = path.join(__dirname, '..', 'dist', 'tools', 'cli.js');
    const r = spawnSync(process.execPath, [cli, 'probe', '--json', '--device', kvmPath], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).path).toBe(kvmPath);
  });
});
