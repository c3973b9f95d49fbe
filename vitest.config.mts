import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/setup.ts'],
    // Transformed modules are cached on disk: the runs inside the test kernels (which
    // see this directory) reuse what the host's run transformed.
    experimental: { fsModuleCache: true },
    // Native addons and KVM fds are per process: run each file in its own child process.
    pool: 'forks',
    // Except inside an emulated test kernel (one CPU, ~5x slower process start): one
    // worker runs every file, so the process and its modules start once.
    ...(process.env.GMEM_VM_KERNEL ? { isolate: false, fileParallelism: false } : {}),
    // Inside an emulated test kernel (gmem vm-run sets GMEM_VM_KERNEL) everything is
    // many times slower.
    testTimeout: process.env.GMEM_VM_KERNEL ? 600_000 : 60_000,
    hookTimeout: process.env.GMEM_VM_KERNEL ? 600_000 : 60_000,
  },
});
