// Declarative layouts: schema errors (pure) and building on the real kernel.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, expect, test as plain } from 'vitest';
import { createMemoryLayout, LayoutError, parseLayout } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';
import { native } from '../lib/native';
import { kvmPath, openFds } from './helpers';

const example = JSON.parse(readFileSync(path.join(__dirname, '..', 'examples', 'layout.json'), 'utf8'));

function issues(spec: unknown): string[] {
  try {
    parseLayout(spec);
  } catch (e) {
    expect(e).toBeInstanceOf(LayoutError);
    return [...(e as LayoutError).issues];
  }
  return [];
}

describe('layout schema', () => {
  const test = plain;
  test('the example layout is valid and sizes parse to bytes', () => {
    const spec = parseLayout(example);
    expect(spec.files['ram']!.size).toBe(2n << 20n);
    expect(spec.slots[1]!.guestPhysAddr).toBe(1n << 32n);
  });

  test('quantities accept numbers, hex and unit suffixes', () => {
    const spec = parseLayout({ slots: [{ guestPhysAddr: '0x1000', size: '4 KiB' }, { guestPhysAddr: 8192, size: '1M' }] });
    expect(spec.slots.map((s) => [s.guestPhysAddr, s.size])).toEqual([
      [0x1000n, 4096n],
      [8192n, 1n << 20n],
    ]);
  });

  test('sizes spelled 2MB, 4KB, 1GB or 2M are binary units, like KiB/MiB/GiB', () => {
    const spec = parseLayout({
      files: { h: { type: 'memfd', size: '2MB', hugetlb: '2MB' } },
      slots: [
        { guestPhysAddr: '1GB', size: '4KB' },
        { guestPhysAddr: '2G', size: '2MB' },
        { guestPhysAddr: '0x100000000', size: '1 mb' },
      ],
    });
    expect(spec.files['h']!.size).toBe(2n << 20n);
    expect(spec.slots.map((x) => [x.guestPhysAddr, x.size])).toEqual([
      [1n << 30n, 4096n],
      [2n << 30n, 2n << 20n],
      [1n << 32n, 1n << 20n],
    ]);
  });

  test('two slots with the same name are refused, pointing at the second', () => {
    expect(
      issues({
        slots: [
          { name: 'ram', guestPhysAddr: 0, size: 4096 },
          { name: 'ram', guestPhysAddr: 8192, size: 4096 },
        ],
      }),
    ).toEqual(["slots[1].name: 'ram' is already the name of slots[0]; slot names must be unique"]);
  });

  test('errors point at the bad field', () => {
    expect(issues({ slots: [{ guestPhysAddr: 'lots', size: 4096 }] })).toEqual([
      'slots[0].guestPhysAddr: expected a number like 4096, "0x1000", "2MiB" or "2MB"',
    ]);
    expect(issues({ slots: [{ guestPhysAddr: 0, size: 4096, privat: {} }] })[0]).toMatch(/^slots\[0\]: Unrecognized key.*privat/);
    expect(issues({ files: { f: { type: 'disk', size: 1 } }, slots: [{ guestPhysAddr: 0, size: 1 }] })[0]).toMatch(/^files\.f\.type/);
    expect(issues({ slots: [] })[0]).toMatch(/^slots: /);
  });

  test('file references are checked: unknown names and private memfds', () => {
    expect(
      issues({
        files: { ram: { type: 'memfd', size: 4096 } },
        slots: [{ guestPhysAddr: 0, size: 4096, userspace: { file: 'rom' }, private: { file: 'ram' } }],
      }),
    ).toEqual([
      "slots[0].userspace.file: no file named 'rom' in \"files\"",
      "slots[0].private.file: 'ram' is a memfd; private memory must be a guest_memfd",
    ]);
  });
});

const test = kvmTest();
// The example maps a guest_memfd that starts shared: it needs a VM type offering both flags.
const exampleTest = kvmTest({ mmap: true, initShared: true });

exampleTest('the example layout builds, describes itself and tears down', async ({ vm }) => {
  const fds = openFds();
  const maps = native.mappingCount();
  const layout = await createMemoryLayout(vm, example);
  const map = layout.describe();
  expect(map.entries.map((e) => [e.name, e.guestPhysAddr, e.slot])).toEqual([
    ['low-ram', 0n, 0],
    ['framebuffer', 0xe0000000n, 3],
    ['firmware', 0xffff0000n, 2],
    ['high-ram', 1n << 32n, 1],
  ]);
  expect(map.entries[0]!.userspace).toEqual({ kind: 'memfd', file: 'ram', offset: 0 });
  expect(map.entries[0]!.private).toEqual({ file: 'private', offset: 0 });
  expect(map.entries[2]!.flags).toEqual(['readonly']);
  expect(map.text).toMatch(/0x100000000-0x100400000\s+4 MiB\s+1\s+high-ram/);
  expect((layout.files['ram'] as unknown as { seals: string[] }).seals).toEqual(['shrink', 'grow']);
  expect(vm.slots).toHaveLength(4);
  await layout.close();
  expect(vm.slots).toHaveLength(0);
  expect(Object.values(layout.files).every((f) => f.closed)).toBe(true);
  expect(openFds()).toBe(fds);
  expect(native.mappingCount()).toBe(maps);
});

test('describe() follows the VM: a slot removed since is no longer listed, even once its id is reused', async ({ vm }) => {
  const layout = await createMemoryLayout(vm, {
    files: { ram: { type: 'memfd', size: '4MiB' } },
    slots: [
      { name: 'a', guestPhysAddr: 0, size: '2MiB', userspace: { file: 'ram' } },
      { name: 'b', guestPhysAddr: '2MiB', size: '2MiB', userspace: { file: 'ram', offset: '2MiB' } },
    ],
  });
  await vm.removeMemorySlot(layout.slots['a']!);
  expect(layout.describe().entries.map((e) => e.name)).toEqual(['b']);
  vm.addMemorySlot({ guestPhysAddr: 1n << 32n, size: 4096, userspace: 'anonymous' }); // takes slot id 0 again
  expect(layout.describe().entries.map((e) => e.name)).toEqual(['b']);
  await layout.close();
});

test('a failing slot tears down what was built and names the spec entry', async ({ vm }) => {
  const fds = openFds();
  const error = await createMemoryLayout(vm, {
    files: { ram: { type: 'memfd', size: '2MiB' } },
    slots: [
      { guestPhysAddr: 0, size: '2MiB', userspace: { file: 'ram' } },
      { name: 'clash', guestPhysAddr: '1MiB', size: '1MiB', userspace: 'anonymous' },
    ],
  }).catch((e: unknown) => e);
  expect((error as Error).message).toMatch(/^slots\[1\] \(clash\): vm.addMemorySlot: GPA range 0x100000..0x200000 overlaps slot 0/);
  expect(vm.slots).toHaveLength(0);
  expect(openFds()).toBe(fds);
});

exampleTest('gmem layout runs the example on this host and exits 0', () => {
  const cli = path.join(__dirname, '..', 'dist', 'tools', 'cli.js');
  const r = spawnSync(process.execPath, [cli, 'layout', path.join(__dirname, '..', 'examples', 'layout.json'), '--device', kvmPath], {
    encoding: 'utf8',
  });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.stdout).toMatch(/memory map of .*layout\.json/);
  expect(r.stdout).toMatch(/low-ram/);
});

test('gmem layout reports schema errors with their paths and exits 1', () => {
  const cli = path.join(__dirname, '..', 'dist', 'tools', 'cli.js');
  const bad = path.join(require('node:os').tmpdir(), `bad-layout-${process.pid}.json`);
  require('node:fs').writeFileSync(bad, JSON.stringify({ slots: [{ guestPhysAddr: 'x', size: 1 }] }));
  const r = spawnSync(process.execPath, [cli, 'layout', bad, '--device', kvmPath], { encoding: 'utf8' });
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(/slots\[0\]\.guestPhysAddr/);
});

describe('the shipped JSON Schema', () => {
  plain('schema/layout.schema.json is what the zod schema generates, and the example points at it', async () => {
    const { layoutJsonSchema } = await import('../scripts/build-schema.mjs');
    const shipped = JSON.parse(readFileSync(path.join(__dirname, '..', 'schema', 'layout.schema.json'), 'utf8'));
    expect(shipped).toEqual(layoutJsonSchema());
    expect(example.$schema).toBe('../schema/layout.schema.json');
    expect(Object.keys(shipped.properties)).toEqual(expect.arrayContaining(['files', 'slots', 'vm']));
  });
});
