// The benchmark's reference programs (bench/ref): the C one builds cleanly, both
// carry the kernel ABI numbers the addon uses, and with KVM each answers a batch in
// the harness's protocol. Nothing here is timed: benchmarks are not tests.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Cap } from '../lib/index';
import { buildOnce } from './build-cache';
import { Kvm, MemoryAttribute, UnsupportedError } from '../lib/index';
import { kvmPath, needsKvm, noKvm, vmCap } from './helpers';

const root = path.join(__dirname, '..');
const cSource = path.join(root, 'bench', 'ref', 'kvm_ref.c');
const pySource = path.join(root, 'bench', 'ref', 'kvm_ref.py');
const python = process.env['PYTHON'] || 'python3';
const hasPython = spawnSync(python, ['--version']).status === 0;

let dir: string;
let bin: string;

beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'gmem-bench-test-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Builds bench/ref/kvm_ref.c (warnings are errors; once per content) and expects success. */
function compileRef(): void {
  const built = buildOnce('kvm_ref', [process.env['CC'] || 'cc', '-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-o', '{out}', cSource], [cSource, path.join(root, 'native', 'uapi', 'kvm_gmem.h')]);
  expect(built.stderr).toBe('');
  expect(built.status).toBe(0);
  bin = built.path;
}

/** "NAME VALUE" lines into a map. */
function pairs(text: string): Map<string, string> {
  return new Map(text.trim().split('\n').map((l) => l.split(' ') as [string, string]));
}

describe('benchmark references', () => {
  test('the C reference compiles without warnings', () => {
    compileRef();
  });

  test("the C reference's ABI numbers are native/uapi/kvm_gmem.h's", () => {
    compileRef();
    const abi = spawnSync(bin, ['--abi'], { encoding: 'utf8' });
    expect(abi.status).toBe(0);
    const ours = pairs(abi.stdout);
    expect(ours.size).toBeGreaterThan(10);
    // The same names printed by a C++ program built against the addon's header.
    // Written where the build cache lives: the same content and path give the same build.
    const probe = path.join(root, 'node_modules', '.cache', 'guest-memfd-tests', 'abi-probe.cc');
    mkdirSync(path.dirname(probe), { recursive: true });
    writeFileSync(probe, [
      '#include <cstdio>',
      '#include "uapi/kvm_gmem.h"',
      'using namespace gmem_uapi;',
      'int main() {',
      ...[...ours.keys()].map((n) => `  std::printf("${n} %llu\\n", (unsigned long long)(${n}));`),
      '}',
    ].join('\n'));
    const cc = buildOnce('abi', [process.env['CXX'] || 'c++', '-std=c++17', '-I', path.join(root, 'native'), '-o', '{out}', probe], [probe, path.join(root, 'native', 'uapi', 'kvm_gmem.h')]);
    expect(cc.stderr).toBe('');
    const header = pairs(spawnSync(cc.path, { encoding: 'utf8' }).stdout);
    expect(Object.fromEntries(ours)).toEqual(Object.fromEntries(header));
  });

  test.skipIf(!hasPython)("the Python reference's ABI numbers are the C reference's", () => {
    compileRef();
    const ours = pairs(spawnSync(bin, ['--abi'], { encoding: 'utf8' }).stdout);
    const script = `import sys; sys.path.insert(0, ${JSON.stringify(path.dirname(pySource))}); import kvm_ref as k
for n in sys.argv[1:]:
    if hasattr(k, n): print(n, getattr(k, n))`;
    const r = spawnSync(python, ['-c', script, ...ours.keys()], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    const theirs = pairs(r.stdout);
    expect(theirs.size).toBeGreaterThan(10);
    for (const [name, value] of theirs) expect([name, value]).toEqual([name, ours.get(name)]);
  });
});

const noMmapGmem = noKvm ?? ((vmCap(Cap.GuestMemfdFlags) & 3) !== 3 ? 'guest_memfd lacks MMAP | INIT_SHARED' : undefined);

describe.skipIf(noMmapGmem)(needsKvm('benchmark references on KVM'), () => {
  /** The serve protocol: a ready line, then one answer per "OP ITERS" line. */
  function serve(cmd: string, args: string[]): Array<Record<string, unknown>> {
    const r = spawnSync(cmd, args, { input: 'check_extension 1000\nno_such_op 1\nquit\n', encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  function expectAnswers(lines: Array<Record<string, unknown>>): void {
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatchObject({ ready: true });
    expect(lines[0]!['ops']).toEqual(expect.arrayContaining(['check_extension', 'slot_add_delete', 'vcpu_io_exit']));
    expect(lines[1]).toMatchObject({ op: 'check_extension', iters: 1000, bytes: 0 });
    expect(lines[1]!['ns']).toBeGreaterThan(0);
    expect(lines[2]!['error']).toMatch(/unknown op/);
  }

  test('the C reference answers a check_extension batch', () => {
    compileRef();
    expectAnswers(serve(bin, []));
  });

  test.skipIf(!hasPython)('the Python reference answers a check_extension batch', () => {
    expectAnswers(serve(python, [pySource]));
  });

  test('the Node side runs one op alone (bench/once.mjs)', () => {
    const r = spawnSync(process.execPath, [path.join(root, 'bench', 'once.mjs'), 'vcpu_io_exit_sync', '10'], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const line = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(line).toMatchObject({ op: 'vcpu_io_exit_sync', iters: 10 });
    expect(line['ns']).toBeGreaterThan(0);
  });

  /** Whether this KVM has what the convert_* rows need: a sw-protected VM with guest_memfd and PRIVATE. */
  const conversionHere = ((): boolean => {
    using kvm = Kvm.open(kvmPath);
    try {
      using vm = kvm.createVm({ type: 'sw-protected' });
      return (BigInt(vm.checkExtension(Cap.MemoryAttributes)) & MemoryAttribute.Private) !== 0n && vm.checkExtension(Cap.GuestMemfd) > 0;
    } catch (e) {
      if (e instanceof UnsupportedError) return false;
      throw e;
    }
  })();
  const convertOps = ['convert_4k', 'convert_1g', 'convert_batch_1000'];
  const convertInput = 'convert_4k 3\nconvert_batch_1000 1\nquit\n';

  test(`the references offer the convert_* ops exactly where a sw-protected VM can convert (here: ${conversionHere ? 'it can' : 'it cannot'}), and answer them`, () => {
    compileRef();
    const sides: Array<[string, string[]]> = [[bin, []]];
    if (hasPython) sides.push([python, [pySource]]);
    for (const [cmd, args] of sides) {
      const r = spawnSync(cmd, args, { input: convertInput, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      const offered = lines[0]!['ops'] as string[];
      expect(convertOps.filter((op) => offered.includes(op)), cmd).toEqual(conversionHere ? convertOps : []);
      if (conversionHere) {
        expect(lines[1]).toMatchObject({ op: 'convert_4k', iters: 3 });
        expect(lines[2]).toMatchObject({ op: 'convert_batch_1000', iters: 1 });
        expect(lines[2]!['ns']).toBeGreaterThan(0);
      } else {
        expect(lines[1]!['error']).toMatch(/unknown op/);
      }
    }
  });

  test(`the Node side has the convert_* ops exactly where a sw-protected VM can convert (here: ${conversionHere ? 'it can' : 'it cannot'})`, () => {
    const r = spawnSync(process.execPath, [path.join(root, 'bench', 'once.mjs'), 'convert_4k', '3'], { encoding: 'utf8' });
    if (conversionHere) {
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ op: 'convert_4k', iters: 3 });
    } else {
      expect(r.status).toBe(64);
      expect(r.stderr).toMatch(/OP one of .*check_extension/);
      expect(r.stderr).not.toMatch(/convert_4k/);
    }
  });
});
