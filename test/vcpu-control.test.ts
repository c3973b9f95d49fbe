// Stopping and steering vCPUs: time limits and abort signals on run(), runSync() and
// runUntil(); state replaced after an exit whose instruction the kernel finishes on
// the next KVM_RUN; workers blocked in runSync(); runners dropped mid-run.
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { expect } from 'vitest';
import { guest, loadRealMode, type Vcpu, type Vm } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';
import { kvmPath, runNode, type ChildResult } from './helpers';

const root = path.join(__dirname, '..');
const PORT = 0x3f8;
const test = kvmTest();

/** A VM with 1 MiB of anonymous memory at GPA 0 and a vCPU spinning in it. */
function spinning(vm: Vm): Vcpu {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
  const vcpu = vm.createVcpu(0);
  loadRealMode(vcpu, guest.spin());
  return vcpu;
}

/** `mov al, value; mov dx, port; out dx, al; hlt` at `at`. */
function outByte(vm: Vm, vcpu: Vcpu, at: number, port: number, value: number): void {
  vm.memory.write(at, Uint8Array.from([0xb0, value, 0xba, port & 0xff, port >> 8, 0xee, 0xf4]));
  vcpu.setSregs({ cs: { base: 0n, selector: 0 } });
  vcpu.setRegs({ rip: BigInt(at), rflags: 2n });
}

/** Runs a Node script (with --expose-gc) in a child process; resolves with how it ended. */
function child(script: string, timeoutMs = 20_000): Promise<ChildResult> {
  return runNode(['--expose-gc', '-e', script], timeoutMs);
}

test('run({ timeoutMs }) stops a spinning guest and rejects with ERR_TIMEOUT naming the limit; the vCPU runs again after', async ({ vm }) => {
  const vcpu = spinning(vm);
  const started = Date.now();
  const error = await vcpu.run({ timeoutMs: 50 }).catch((e: unknown) => e);
  expect(Date.now() - started).toBeLessThan(2000);
  expect(error).toMatchObject({ name: 'TimeoutError', code: 'ERR_TIMEOUT', timeoutMs: 50 });
  expect((error as Error).message).toMatch(/vcpu\.run: .*timeoutMs 50/);
  expect(vcpu.running).toBe(false);
  outByte(vm, vcpu, 0x2000, PORT, 0x5a);
  const exit = await vcpu.run({ timeoutMs: 10_000 });
  expect(exit).toMatchObject({ reason: 'io', port: PORT });
  if (exit.reason === 'io') expect(exit.data[0]).toBe(0x5a);
});

test('run({ signal }) stops a spinning guest when the signal aborts and rejects with ABORT_ERR carrying the reason', async ({ vm }) => {
  const vcpu = spinning(vm);
  const controller = new AbortController();
  const running = vcpu.run({ signal: controller.signal });
  setTimeout(() => controller.abort(new Error('enough')), 30);
  const error = await running.catch((e: unknown) => e);
  expect(error).toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
  expect((error as Error).cause).toMatchObject({ message: 'enough' });
  // An already aborted signal never starts a run.
  await expect(vcpu.run({ signal: controller.signal })).rejects.toMatchObject({ code: 'ABORT_ERR' });
  expect(vcpu.running).toBe(false);
});

test('a run that exits by itself resolves normally even with a timeout pending', async ({ vm }) => {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
  const vcpu = vm.createVcpu(0);
  outByte(vm, vcpu, 0x2000, PORT, 7);
  const controller = new AbortController();
  const exit = await vcpu.run({ timeoutMs: 60_000, signal: controller.signal });
  expect(exit.reason).toBe('io');
  controller.abort();
  expect((await vcpu.run()).reason).toBe('hlt');
});

test('runSync({ timeoutMs }) stops a spinning guest and throws ERR_TIMEOUT; the vCPU runs again after', ({ vm }) => {
  const vcpu = spinning(vm);
  const started = Date.now();
  expect(() => vcpu.runSync({ timeoutMs: 50 })).toThrow(expect.objectContaining({ code: 'ERR_TIMEOUT', timeoutMs: 50 }));
  expect(Date.now() - started).toBeLessThan(2000);
  outByte(vm, vcpu, 0x2000, PORT, 0x33);
  const exit = vcpu.runSync({ timeoutMs: 10_000 });
  expect(exit).toMatchObject({ reason: 'io', port: PORT });
});

test('runUntil({ timeoutMs }) bounds the whole loop, handlers included', async ({ vm }) => {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
  const vcpu = vm.createVcpu(0);
  loadRealMode(vcpu, guest.outLoop(PORT));
  let exits = 0;
  const error = await vcpu
    .runUntil({ timeoutMs: 100, io: () => void exits++ })
    .catch((e: unknown) => e);
  expect(error).toMatchObject({ code: 'ERR_TIMEOUT' });
  expect((error as Error).message).toMatch(/^vcpu\.runUntil: /);
  expect(exits).toBeGreaterThan(0);
  await expect(vcpu.runUntil({ sync: true, timeoutMs: 100, io: () => undefined })).rejects.toMatchObject({ code: 'ERR_TIMEOUT' });
});

test('run options are checked before anything runs', async ({ vm }) => {
  const vcpu = spinning(vm);
  for (const bad of [0, -1, Number.NaN, Infinity, 2 ** 31])
    await expect(vcpu.run({ timeoutMs: bad })).rejects.toMatchObject({ message: expect.stringMatching(/vcpu\.run: options\.timeoutMs/) });
  await expect(vcpu.run({ timeoutMs: '50' as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
  await expect(vcpu.run({ signal: {} as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/options\.signal/) });
  await expect(vcpu.run(null as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
  expect(() => vcpu.runSync({ timeoutMs: -5 })).toThrow(/vcpu\.runSync: options\.timeoutMs -5/);
  expect(() => vcpu.runSync({ signal: new AbortController().signal } as never)).toThrow(/cannot stop a synchronous run/);
  await expect(vcpu.runUntil({ maxExits: 0 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
  await expect(vcpu.runUntil({ io: 5 as never })).rejects.toMatchObject({ message: expect.stringMatching(/handlers\.io must be a function/) });
  expect(vcpu.running).toBe(false);
});

test('new registers after an MMIO exit run the new program, not the rest of the old instruction', async ({ vm }) => {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 0x80000, userspace: 'anonymous' });
  const vcpu = vm.createVcpu(0);
  loadRealMode(vcpu, guest.touch(0xe0000, PORT)); // outside the slot: an MMIO read
  const first = await vcpu.run();
  expect(first.reason).toBe('mmio');
  if (first.reason === 'mmio') first.data[0] = 0x11;
  outByte(vm, vcpu, 0x3000, 0x80, 0x42);
  const exit = await vcpu.run();
  expect(exit).toMatchObject({ reason: 'io', port: 0x80 });
  if (exit.reason === 'io') expect(exit.data[0]).toBe(0x42);
  expect(vcpu.getRegs().rax & 0xffn).toBe(0x42n);
});

test('new registers after an IN exit are not overwritten by the pending input', async ({ vm }) => {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
  const vcpu = vm.createVcpu(0);
  // mov dx, 0x60; in al, dx; hlt
  vm.memory.write(0x1000, Uint8Array.from([0xba, 0x60, 0x00, 0xec, 0xf4]));
  vcpu.setSregs({ cs: { base: 0n, selector: 0 } });
  vcpu.setRegs({ rip: 0x1000n, rflags: 2n });
  const first = await vcpu.run();
  expect(first).toMatchObject({ reason: 'io', direction: 'in', port: 0x60 });
  if (first.reason === 'io') first.data[0] = 0xee;
  vcpu.setRegs({ rax: 0x1234n, rip: 0x1004n }); // straight to the hlt
  expect((await vcpu.run()).reason).toBe('hlt');
  expect(vcpu.getRegs().rax).toBe(0x1234n);
});

test('a worker blocked in runSync() on a spinning guest terminates within a second', async () => {
  const worker = new Worker(
    `
    const { parentPort, workerData } = require('node:worker_threads');
    const gm = require(workerData.root);
    const kvm = gm.Kvm.open(workerData.kvmPath);
    const vm = kvm.createVm();
    vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
    const vcpu = vm.createVcpu(0);
    gm.loadRealMode(vcpu, gm.guest.spin());
    parentPort.postMessage('running');
    vcpu.runSync();
    `,
    { eval: true, workerData: { root, kvmPath } },
  );
  await new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  await new Promise((r) => setTimeout(r, 100));
  const started = Date.now();
  await worker.terminate();
  expect(Date.now() - started).toBeLessThan(1000);
});

test('process.exit() with a worker blocked in runSync() returns within a second', async () => {
  const r = await child(`
    const { Worker } = require('node:worker_threads');
    const w = new Worker(\`
      const { parentPort } = require('node:worker_threads');
      const gm = require(process.cwd());
      const vm = gm.Kvm.open().createVm();
      vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
      const vcpu = vm.createVcpu(0);
      gm.loadRealMode(vcpu, gm.guest.spin());
      parentPort.postMessage('running');
      vcpu.runSync();
    \`, { eval: true });
    w.once('message', () => setTimeout(() => { globalThis.t = Date.now(); process.on('exit', () => console.log('exit took', Date.now() - globalThis.t)); process.exit(0); }, 100));
  `);
  expect(r).toMatchObject({ code: 0, signal: null });
  expect(Number(/exit took (\d+)/.exec(r.out)?.[1])).toBeLessThan(1000);
});

test('a setup dropped without close() while run() is pending is collected without harm', async () => {
  const r = await child(`
    const gm = require(process.cwd());
    function drop() {
      const kvm = gm.Kvm.open();
      const vm = kvm.createVm();
      vm.addMemorySlot({ guestPhysAddr: 0, size: 1 << 20, userspace: 'anonymous' });
      const vcpu = vm.createVcpu(0);
      gm.loadRealMode(vcpu, gm.guest.spin());
      vcpu.run().catch(() => {});
    }
    (async () => {
      for (let i = 0; i < 8; i++) drop();
      for (let i = 0; i < 20; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); }
      const threads = require('node:fs').readdirSync('/proc/self/task')
        .filter((t) => { try { return require('node:fs').readFileSync('/proc/self/task/' + t + '/comm', 'utf8').trim() === 'gmem-vcpu'; } catch { return false; } }).length;
      console.log('threads', threads);
    })();
  `);
  expect(r).toMatchObject({ code: 0, signal: null });
  expect(r.out).toMatch(/threads 0/);
});
