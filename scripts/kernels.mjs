// The test kernels the kernel scripts use: $GMEM_KERNELS (paths separated by ':') or
// the bzImage-* files of ../shared/kernels, oldest first.
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';

/** Kernel image paths, in version order; empty when there are none. */
export function testKernels(root) {
  if (process.env.GMEM_KERNELS) return process.env.GMEM_KERNELS.split(':').filter(Boolean);
  const dir = path.join(root, '..', 'shared', 'kernels');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.startsWith('bzImage-'))
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
    .map((f) => path.join(dir, f));
}
