// `npm run test:kernels`: the test suite inside each test kernel, under QEMU (see
// kernel/README.md). Kernels come from $GMEM_KERNELS (paths separated by ':') or the
// bzImage-* files of ../shared/kernels; with none, or without QEMU, this says so and
// skips (a clone without them still passes). The compiled library is the host's: run
// `npm test` (or `npm run build:ts`) first.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { testKernels } from './kernels.mjs';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const { runInVm, findExecutable } = require(path.join(root, 'dist', 'tools', 'vm-run.js'));

const list = testKernels(root);
if (list.length === 0) {
  console.log('test:kernels: skipped: no test kernels (set GMEM_KERNELS, or see kernel/README.md to build one)');
  process.exit(0);
}
const qemu = process.env.GMEM_QEMU || 'qemu-system-x86_64';
if (!findExecutable(qemu)) {
  console.log(`test:kernels: skipped: ${qemu} not found (Debian/Ubuntu: apt-get install qemu-system-x86)`);
  process.exit(0);
}

const vitest = path.join(root, 'node_modules', 'vitest', 'vitest.mjs');
const args = process.argv.slice(2);
const numaNodes = Number(process.env.GMEM_VM_NUMA_NODES ?? 2);
const results = [];
for (const kernel of list) {
  if (!existsSync(kernel)) {
    console.log(`test:kernels: ${kernel}: skipped: no such kernel image`);
    continue;
  }
  console.log(`\n=== test suite inside ${path.basename(kernel)} (QEMU, ${numaNodes} NUMA node${numaNodes > 1 ? 's' : ''}) ===`);
  const r = await runInVm({
    kernel,
    command: [process.execPath, vitest, 'run', ...args],
    cwd: root,
    numaNodes,
    memoryMiB: 4096,
    // A few huge pages, so the hugetlb tests run inside too.
    append: 'hugepagesz=2M hugepages=8',
    timeoutMs: 40 * 60_000,
  });
  const verdict = r.exitCode === 0 ? 'passed' : r.error ? `failed: ${r.error}` : `failed (exit ${r.exitCode})`;
  results.push({ kernel: path.basename(kernel), verdict, seconds: Math.round(r.durationMs / 1000) });
  console.log(`=== ${path.basename(kernel)}: ${verdict} in ${Math.round(r.durationMs / 1000)} s ===`);
}
console.log('\ntest:kernels summary:');
for (const r of results) console.log(`  ${r.kernel}: ${r.verdict} (${r.seconds} s)`);
process.exitCode = results.every((r) => r.verdict === 'passed') ? 0 : 1;
