// `npm run consumer-check`: the package as a user gets it. Builds the prebuild, packs
// the tarball, installs it with --ignore-scripts (no compiler involved: the prebuild
// must load) into fresh ESM/TypeScript and CommonJS consumers, type-checks them with
// `strict` and `skipLibCheck: false` (and no "node" in `types`), and runs a vitest
// file written with guest-memfd/testing, with KVM and with GMEM_KVM_PATH=/nonexistent
// (where its tests must be skipped with the reason in their titles).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const lock = JSON.parse(readFileSync(path.join(root, 'package-lock.json'), 'utf8'));
const version = (name) => lock.packages[`node_modules/${name}`].version;
const keep = process.argv.includes('--keep');

function sh(cmd, args, options = {}) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  return execFileSync(cmd, args, { stdio: 'inherit', ...options });
}

function check(condition, message) {
  if (!condition) throw new Error(`consumer-check: ${message}`);
  console.log(`ok: ${message}`);
}

const work = mkdtempSync(path.join(tmpdir(), 'gmem-consumer-'));
try {
  sh('npm', ['run', 'prebuild'], { cwd: root });
  const prebuilds = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  check(existsSync(prebuilds) && readdirSync(prebuilds).some((f) => f.endsWith('.node')), `a prebuild exists in ${path.relative(root, prebuilds)}`);
  const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', work], { cwd: root, encoding: 'utf8' }));
  const tarball = path.join(work, packed[0].filename);
  const files = packed[0].files.map((f) => f.path);
  check(files.some((f) => f.startsWith('prebuilds/') && f.endsWith('.node')), 'the tarball carries the prebuild');
  check(files.includes('LICENSE') && files.includes('dist/testing/vitest.mjs') && files.includes('schema/layout.schema.json'), 'the tarball has LICENSE, the testing entry and the layout schema');
  check(!files.some((f) => f.endsWith('.js.map')) || files.some((f) => f.startsWith('lib/') && f.endsWith('.ts')), 'source maps come with their sources');

  const app = path.join(work, 'app');
  mkdirSync(path.join(app, 'src'), { recursive: true });
  mkdirSync(path.join(app, 'test'), { recursive: true });
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }, null, 2));
  writeFileSync(
    path.join(app, 'tsconfig.json'),
    JSON.stringify(
      {
        compilerOptions: {
          strict: true,
          skipLibCheck: false,
          noEmit: true,
          target: 'es2022',
          lib: ['es2022', 'esnext.disposable'],
          module: 'nodenext',
          moduleResolution: 'nodenext',
          types: [],
        },
        include: ['src', 'test'],
      },
      null,
      2,
    ),
  );
  writeFileSync(
    path.join(app, 'src', 'vmm.ts'),
    `import { Kvm, Memfd, guest, loadRealMode, captureOutput, type VcpuExit } from 'guest-memfd';

export async function hello(): Promise<{ text: string; exit: VcpuExit }> {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  using ram = Memfd.create('ram', { size: 1 << 20 });
  vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: ram });
  const vcpu = vm.createVcpu(0);
  loadRealMode(vcpu, guest.hello('hello from a consumer\\n'));
  const { text, exit } = await captureOutput(vcpu, { timeoutMs: 60_000 });
  return { text, exit };
}
`,
  );
  writeFileSync(
    path.join(app, 'test', 'consumer.test.ts'),
    `import { expect } from 'vitest';
import { describeKvm, kvmTest, findVmType } from 'guest-memfd/testing';
import { guest, loadRealMode, captureOutput } from 'guest-memfd';
import { hello } from '../src/vmm.js';

const test = kvmTest({ guestMemfd: true });

test('a guest says hello through the fixtures', async ({ vm }) => {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
  const vcpu = vm.createVcpu(0);
  loadRealMode(vcpu, guest.hello('fixture hello'));
  expect((await captureOutput(vcpu, { timeoutMs: 60_000 })).text).toBe('fixture hello');
});

describeKvm({}, 'the consumer module', () => {
  kvmTest()('runs its own VMM', async () => {
    expect((await hello()).text).toBe('hello from a consumer\\n');
  });
});

kvmTest({ privateMemory: true })('conversion, where a VM type offers it', async ({ vm }) => {
  expect(vm.capabilities().memoryAttributes.names).toContain('private');
});

kvmTest()('findVmType answers without throwing', () => {
  expect(findVmType({ guestMemfd: true })).toBeTypeOf('object');
});
`,
  );
  writeFileSync(
    path.join(app, 'cjs.cjs'),
    `const gm = require('guest-memfd');
const testing = require('guest-memfd/testing');
if (typeof gm.Kvm.open !== 'function' || typeof testing.findVmType !== 'function') process.exit(1);
console.log('cjs: loaded', Object.keys(gm).length, 'exports; KVM here:', testing.kvmUnavailable() ?? 'usable');
`,
  );
  sh(
    'npm',
    [
      'install',
      '--ignore-scripts',
      '--no-audit',
      '--no-fund',
      '--prefer-offline',
      tarball,
      `typescript@${version('typescript')}`,
      `vitest@${version('vitest')}`,
      `@types/node@${version('@types/node')}`,
    ],
    { cwd: app },
  );
  check(!existsSync(path.join(app, 'node_modules', 'guest-memfd', 'build')), 'installed without compiling (no build/ directory)');
  sh('npx', ['tsc', '-p', '.'], { cwd: app });
  console.log('ok: the consumer type-checks with strict, skipLibCheck false and no "node" in types');
  sh(process.execPath, ['cjs.cjs'], { cwd: app });
  const withKvm = spawnSync('npx', ['vitest', 'run'], { cwd: app, encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  process.stdout.write(withKvm.stdout + withKvm.stderr);
  check(withKvm.status === 0, 'the consumer\'s vitest suite passes here');
  const without = spawnSync('npx', ['vitest', 'run', '--reporter=verbose'], { cwd: app, encoding: 'utf8', env: { ...process.env, CI: 'true', GMEM_KVM_PATH: '/nonexistent' } });
  process.stdout.write(without.stdout + without.stderr);
  check(without.status === 0, 'without KVM the suite passes too');
  check(/\[skipped: no usable KVM at \/nonexistent/.test(without.stdout), 'and its KVM tests are skipped with the reason in their titles');
  console.log('consumer-check: all good');
} finally {
  if (keep) console.log(`kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}
