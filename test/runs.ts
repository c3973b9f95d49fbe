/**
 * Cases for a property test of pure logic: `n` on a real host, a tenth inside a test
 * kernel under QEMU (`gmem vm-run` sets GMEM_VM_KERNEL), where the CPU is emulated
 * about 20x slower and the logic checked does not depend on the kernel.
 */
export function runs(n: number): number {
  return process.env['GMEM_VM_KERNEL'] ? Math.max(10, Math.ceil(n / 10)) : n;
}

/** How much longer things take here: 10 inside an emulated test kernel, else 1 (for time limits, never for assertions). */
export const slowdown = process.env['GMEM_VM_KERNEL'] ? 10 : 1;
