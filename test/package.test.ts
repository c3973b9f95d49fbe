// The package as users load it: require and import give the same module with types;
// the addon's env cleanup hook releases what a worker thread left open.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, expect, test } from 'vitest';
import { kvmPath, needsKvm, noKvm, openFds } from './helpers';

const root = path.join(__dirname, '..');

describe('package entry points', () => {
  test('require and import load the same module instance, and both have type declarations', () => {
    const script = `
      const cjs = require('guest-memfd');
      import('guest-memfd').then((esm) => {
        console.log(JSON.stringify({ same: esm.Kvm === cjs.Kvm, names: Object.keys(esm).length, kvm: typeof esm.Kvm, def: esm.default === cjs }));
      });`;
    const r = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ same: true, kvm: 'function', def: true });
    expect(out.names).toBeGreaterThan(20);
    expect(existsSync(path.join(root, 'dist', 'index.d.ts'))).toBe(true);
    expect(existsSync(path.join(root, 'dist', 'index.d.mts'))).toBe(true);
  });
});

describe.skipIf(noKvm)(needsKvm('worker threads'), () => {
  test('a worker that exits without closing anything leaks no fd and does not crash', async () => {
    const before = openFds();
    const worker = new Worker(
      `
      const { parentPort, workerData } = require('node:worker_threads');
      const gm = require(workerData.root);
      const kvm = gm.Kvm.open(workerData.kvmPath);
      const vm = kvm.createVm();
      const ram = gm.Memfd.create('worker', { size: 2 << 20 });
      const view = ram.map();
      view.buffer[0] = 1;
      vm.addMemorySlot({ guestPhysAddr: 0, size: 2 << 20, userspace: ram });
      const vcpu = vm.createVcpu(0);
      gm.loadRealMode(vcpu, gm.guest.spin());
      vcpu.run();
      parentPort.postMessage(require('node:fs').readdirSync('/proc/self/fd').length);
      `,
      { eval: true, workerData: { root, kvmPath } },
    );
    const during = await new Promise<number>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    expect(during).toBeGreaterThan(before);
    await worker.terminate();
    // The env cleanup hook stopped the vCPU thread and closed every fd the worker held.
    for (let i = 0; i < 200 && openFds() > before; i++) await new Promise((r) => setTimeout(r, 20));
    expect(openFds()).toBe(before);
  });
});
