// Ownership safety nets: what the garbage collector and native code outside the
// addon can hold, and what happens to it.
import { expect } from 'vitest';
import { kvmTest } from '../lib/testing/vitest.mjs';
import { runNode, type ChildResult } from './helpers';

const test = kvmTest();

/** Runs a Node script (with --expose-gc) in a child process; resolves with how it ended. */
function child(script: string, timeoutMs = 30_000): Promise<ChildResult> {
  return runNode(['--expose-gc', '-e', script], timeoutMs);
}

const counts = `
  const fs = require('node:fs');
  const native = require(process.cwd() + '/dist/native.js').native;
  const counts = () => ({ fds: fs.readdirSync('/proc/self/fd').length, owned: native.ownedFdCount(), mappings: native.mappingCount() });
  const settle = async () => { for (let i = 0; i < 30; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 10)); } };
`;

test('dropped setups whose slots map memfds are collected: every fd and mapping goes', async () => {
  const r = await child(`
    const gm = require(process.cwd());
    ${counts}
    function drop() {
      const kvm = gm.Kvm.open();
      const vm = kvm.createVm();
      const ram = gm.Memfd.create('ram', { size: 1 << 20 });
      const view = ram.map();
      view.buffer[0] = 1;
      vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: ram });
      vm.addMemorySlot({ guestPhysAddr: 1 << 20, size: 1 << 20, userspace: view });
      vm.createVcpu(0);
    }
    (async () => {
      await settle();
      const before = counts();
      for (let i = 0; i < 10; i++) drop();
      const during = counts();
      await settle();
      console.log(JSON.stringify({ before, during, after: counts() }));
    })();
  `);
  expect(r).toMatchObject({ code: 0, signal: null });
  const { before, during, after } = JSON.parse(r.out.trim().split('\n').pop()!);
  expect(during.owned).toBeGreaterThanOrEqual(before.owned + 40);
  expect(after).toEqual(before);
});

test('a vCPU dropped after an I/O exit is collected with its kvm_run mapping (the decoder caches its data view weakly)', async () => {
  const r = await child(`
    const gm = require(process.cwd());
    ${counts}
    function drop(sync) {
      const kvm = gm.Kvm.open();
      const vm = kvm.createVm();
      vm.addMemorySlot({ guestPhysAddr: 0, size: 0x10000, userspace: 'anonymous' });
      const vcpu = vm.createVcpu(0);
      gm.loadRealMode(vcpu, gm.guest.outLoop(0x3f8));
      return sync ? vcpu.runSync().reason : vcpu.run().then((e) => e.reason);
    }
    (async () => {
      await settle();
      const before = counts();
      const reasons = [drop(true), await drop(false)];
      await settle();
      console.log(JSON.stringify({ reasons, before, after: counts() }));
    })();
  `);
  expect(r).toMatchObject({ code: 0, signal: null });
  const { reasons, before, after } = JSON.parse(r.out.trim().split('\n').pop()!);
  expect(reasons).toEqual(['io', 'io']);
  expect(after).toEqual(before);
});

// All four cases in one child process (a process start is expensive under emulation);
// a crash in any of them kills the child and fails the test.
const jobs = [
  ['crypto.randomFill', `require('node:crypto').randomFill(view.buffer, (err) => done(err, 'filled'))`],
  ['zlib.deflate', `require('node:zlib').deflate(view.buffer, (err, out) => done(err, 'deflated ' + out.length))`],
] as const;
const cuts = ['view.unmap()', 'file.close()'] as const;

test(`${cuts.join(' or ')} while ${jobs.map(([w]) => w).join(' or ')} holds the buffer on the threadpool neither crashes nor leaves the file behind the buffer`, async () => {
  const cases = jobs.flatMap(([what, start]) => cuts.map((how) => ({ name: `${how} / ${what}`, start, how })));
  const r = await child(`
    const gm = require(process.cwd());
    function scenario(name, run) {
      const file = gm.Memfd.create('held', { size: 4 << 20 });
      const view = file.map();
      view.buffer.fill(7);
      const held = view.buffer;
      // What the job still holds now reads zeros; the file is no longer behind it.
      const done = (err, what) => {
        if (err) throw err;
        console.log(name + ': ' + what + ' length now ' + view.buffer.length + ' held ' + held.length);
        if (!file.closed) file.close();
      };
      run(file, view, done);
    }
    ${cases.map((c) => `scenario(${JSON.stringify(c.name)}, (file, view, done) => { ${c.start}; ${c.how}; });`).join('\n    ')}
  `);
  expect(r).toMatchObject({ code: 0, signal: null });
  for (const c of cases) expect(r.out).toMatch(new RegExp(`${c.name.replace(/[.()/]/g, '\\$&')}: \\w+.* length now 0 held 4194304`));
});
