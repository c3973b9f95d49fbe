// `npm run bench:kernel`: the benchmark rows that need a kernel this host may lack
// (shared/private conversion: a sw-protected VM with KVM_MEMORY_ATTRIBUTE_PRIVATE),
// run inside the newest test kernel under QEMU, C, Python and Node alike. The guest is
// emulated (TCG), so only the ratios mean anything. Writes
// bench/results/kernel-<version>.json. punch_hole_4k runs there too, as a
// calibration: its ratio on the host is known, so it shows what the emulation does
// to a ratio. Options after `--` go to the harness (e.g. --quick, --op convert_4k).
// Kernel: $GMEM_BENCH_KERNEL, else the newest of test:kernels' list. Build first
// (npm run build:ts).
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { testKernels } from './kernels.mjs';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const { runInVm, findExecutable } = require(path.join(root, 'dist', 'tools', 'vm-run.js'));

const kernel = process.env.GMEM_BENCH_KERNEL || testKernels(root).at(-1);
if (!kernel || !existsSync(kernel)) {
  console.error(`bench:kernel: no test kernel${kernel ? ` at ${kernel}` : ''} (set GMEM_BENCH_KERNEL, or see kernel/README.md)`);
  process.exit(2);
}
const qemu = process.env.GMEM_QEMU || 'qemu-system-x86_64';
if (!findExecutable(qemu)) {
  console.error(`bench:kernel: ${qemu} not found (Debian/Ubuntu: apt-get install qemu-system-x86)`);
  process.exit(2);
}
const version = path.basename(kernel).replace(/^bzImage-/, '');
const args = process.argv.slice(2);
const out = path.join('bench', 'results', `kernel-${version}.json`);
const harness = [process.execPath, '--expose-gc', path.join(root, 'bench', 'index.mjs'), '--op', 'punch_hole_4k,convert_4k,convert_1g,convert_batch_1000', ...(args.includes('--out') ? [] : ['--out', out]), ...args];
console.error(`bench:kernel: inside ${path.basename(kernel)} (QEMU, emulated: compare ratios only)`);
const r = await runInVm({ kernel, command: harness, cwd: root, memoryMiB: 4096, timeoutMs: 30 * 60_000 });
if (r.error) console.error(`bench:kernel: ${r.error}`);
process.exitCode = r.exitCode ?? 1;
