// eventfds: the counter, waits on the event loop (no thread, no threadpool), close
// and dispose rules, and their bindings to a VM (irqfd, ioeventfd).
import { spawn } from 'node:child_process';
import { pbkdf2 } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, test as plain } from 'vitest';
import { EventFd } from '../lib/index';
import { assertNoLeaks, kvmTest, resourceSnapshot, type ResourceSnapshot } from '../lib/testing/vitest.mjs';
import { openFds } from './helpers';

const root = path.join(__dirname, '..');
const test = kvmTest({ irqchip: true, irqfd: true, ioeventfd: true });
/** Child processes start slowly inside the test kernels (Node under TCG). */
const SLOW = 300_000;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

/** The fd's status flags, from /proc/self/fdinfo. */
function fdFlags(fd: number): number {
  return parseInt(/flags:\s*([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
}

function threadCount(): number {
  return readdirSync('/proc/self/task').length;
}

/** Runs a Node script in a child process and resolves with how it ended. */
function child(script: string, timeoutMs = 150_000): Promise<{ code: number | null; signal: string | null; out: string; ms: number }> {
  return new Promise((resolve) => {
    const started = Date.now();
    const p = spawn(process.execPath, ['--expose-gc', '-e', script], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, ms: Date.now() - started });
    });
  });
}

describe('EventFd on its own', () => {
  let before: ResourceSnapshot;
  beforeEach(() => {
    before = resourceSnapshot();
  });
  afterEach(() => assertNoLeaks(before));

  plain('write adds to the counter, read takes all of it and gives 0n when there is nothing', () => {
    using efd = EventFd.create();
    expect(efd.read()).toBe(0n);
    efd.write();
    efd.write(41);
    efd.write(1n << 40n);
    expect(efd.read()).toBe((1n << 40n) + 42n);
    expect(efd.read()).toBe(0n);
  });

  plain('semaphore mode: each read takes 1; initialValue starts the counter', () => {
    using efd = EventFd.create({ semaphore: true, initialValue: 2 });
    expect(efd.semaphore).toBe(true);
    expect([efd.read(), efd.read(), efd.read()]).toEqual([1n, 1n, 0n]);
  });

  plain('the fd is close-on-exec, nonblocking by default, blocking when asked, and read and write never block either way', () => {
    using nb = EventFd.create();
    expect(fdFlags(nb.fd) & O_CLOEXEC).toBe(O_CLOEXEC);
    expect(fdFlags(nb.fd) & O_NONBLOCK).toBe(O_NONBLOCK);
    using blocking = EventFd.create({ nonBlocking: false });
    expect(blocking.nonBlocking).toBe(false);
    expect(fdFlags(blocking.fd) & O_NONBLOCK).toBe(0);
    expect(blocking.read()).toBe(0n); // would block on the fd itself
    blocking.write(0xfffffffffffffffen);
    expect(() => blocking.write(1)).toThrow(expect.objectContaining({ name: 'KvmError', code: 'EAGAIN', message: expect.stringMatching(/counter would pass 2\^64-2/) }));
    expect(blocking.read()).toBe(0xfffffffffffffffen);
    expect(fdFlags(blocking.fd) & O_NONBLOCK).toBe(0); // left as its owner chose
  });

  plain('wait() resolves with the counter once something writes it, and consumes it', async () => {
    using efd = EventFd.create();
    setTimeout(() => efd.write(3), 20);
    expect(efd.waiting).toBe(false);
    const waiting = efd.wait({ timeoutMs: 10_000 });
    expect(efd.waiting).toBe(true);
    expect(await waiting).toBe(3n);
    expect(efd.waiting).toBe(false);
    expect(efd.read()).toBe(0n);
    efd.write(5);
    expect(await efd.wait()).toBe(5n); // already readable: at once
  });

  plain('a wait leaves a blocking eventfd blocking (libuv makes polled fds nonblocking)', async () => {
    using efd = EventFd.create({ nonBlocking: false });
    setTimeout(() => efd.write(), 10);
    await efd.wait({ timeoutMs: 10_000 });
    expect(fdFlags(efd.fd) & O_NONBLOCK).toBe(0);
  });

  plain('pending waits hold no thread and no threadpool worker: timers, fs and crypto go on meanwhile', async () => {
    const threads = threadCount();
    const efds = Array.from({ length: 8 }, () => EventFd.create()); // more than the 4 threadpool workers
    try {
      const waits = efds.map((e) => e.wait({ timeoutMs: 30_000 }));
      expect(threadCount()).toBe(threads);
      let ticks = 0;
      const timer = setInterval(() => ticks++, 5);
      const work = await Promise.all([
        ...Array.from({ length: 6 }, () => readFile(__filename, 'utf8')),
        ...Array.from({ length: 6 }, () => promisify(pbkdf2)('x', 'y', 1000, 16, 'sha256')),
      ]);
      await new Promise((r) => setTimeout(r, 50));
      clearInterval(timer);
      expect(work).toHaveLength(12);
      expect(ticks).toBeGreaterThan(2);
      expect(efds.every((e) => e.waiting)).toBe(true);
      efds.forEach((e, i) => e.write(i + 1));
      expect(await Promise.all(waits)).toEqual(efds.map((_, i) => BigInt(i + 1)));
      expect(threadCount()).toBeLessThanOrEqual(threads + 4); // at most the threadpool the fs and crypto work started
    } finally {
      for (const e of efds) e.close();
    }
  });

  plain('a wait is cancelled by its timeout or its signal, leaving the counter alone; one wait at a time', async () => {
    using efd = EventFd.create();
    await expect(efd.wait({ timeoutMs: 30 })).rejects.toMatchObject({
      name: 'TimeoutError',
      code: 'ERR_TIMEOUT',
      timeoutMs: 30,
      message: expect.stringMatching(/eventfd\.wait: the eventfd did not become readable within timeoutMs 30/),
    });
    const controller = new AbortController();
    const aborted = efd.wait({ signal: controller.signal });
    await expect(efd.wait()).rejects.toMatchObject({ code: 'ERR_BUSY' });
    controller.abort(new Error('enough'));
    await expect(aborted).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR', cause: { message: 'enough' } });
    await expect(efd.wait({ signal: controller.signal })).rejects.toMatchObject({ code: 'ABORT_ERR' });
    expect(efd.waiting).toBe(false);
    efd.write(2);
    expect(efd.read()).toBe(2n);
  });

  plain('closing an eventfd with a wait pending rejects the wait with ERR_CLOSED and leaves nothing running', async () => {
    const efd = EventFd.create();
    const waiting = efd.wait();
    efd.close();
    await expect(waiting).rejects.toMatchObject({ code: 'ERR_CLOSED', message: expect.stringMatching(/eventfd\.wait: the eventfd is closed/) });
    expect(efd.closed).toBe(true);
    efd.close(); // idempotent
    // Nothing keeps the event loop alive: a process that does this exits at once.
    const r = await child(`
      const { EventFd } = require(process.cwd());
      const e = EventFd.create();
      e.wait().catch((err) => console.log('rejected', err.code));
      setTimeout(() => e.close(), 20);
    `);
    expect(r).toMatchObject({ code: 0, signal: null });
    expect(r.out).toMatch(/rejected ERR_CLOSED/);
  }, SLOW);

  plain('use after close throws ERR_CLOSED', async () => {
    const efd = EventFd.create();
    efd.close();
    expect(() => efd.fd).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
    expect(() => efd.read()).toThrow(expect.objectContaining({ code: 'ERR_CLOSED', message: expect.stringMatching(/^eventfd\.read: /) }));
    expect(() => efd.write()).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
    await expect(efd.wait()).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  });

  plain('bad arguments are refused before any syscall', async () => {
    const fds = openFds();
    expect(() => EventFd.create(null as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => EventFd.create([] as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => EventFd.create({ initialValue: -1 })).toThrow(/EventFd\.create: options\.initialValue -1 is negative/);
    expect(() => EventFd.create({ initialValue: 2 ** 32 })).toThrow(/above 2\^32-1/);
    expect(() => EventFd.create({ initialValue: '1' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => EventFd.create({ semaphore: 'yes' as never })).toThrow(/options\.semaphore must be a boolean/);
    expect(() => EventFd.create({ nonBlocking: 0 as never })).toThrow(/options\.nonBlocking must be a boolean/);
    expect(openFds()).toBe(fds);
    using efd = EventFd.create();
    expect(() => efd.write(-1)).toThrow(/eventfd\.write: value -1 is negative/);
    expect(() => efd.write(1.5)).toThrow(/not an integer/);
    expect(() => efd.write(0xffffffffffffffffn)).toThrow(/above 2\^64-2/);
    expect(() => efd.write('1' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    for (const bad of [0, -1, Number.NaN, Infinity, 2 ** 31])
      await expect(efd.wait({ timeoutMs: bad })).rejects.toMatchObject({ message: expect.stringMatching(/eventfd\.wait: options\.timeoutMs/) });
    await expect(efd.wait({ timeoutMs: '5' as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    await expect(efd.wait({ signal: {} as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/options\.signal/) });
    await expect(efd.wait('soon' as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    expect(efd.waiting).toBe(false);
  });

  plain('no fd leaks over 1,000 create/close cycles, waits included', async () => {
    const fds = openFds();
    for (let i = 0; i < 1000; i++) {
      const efd = EventFd.create();
      if (i % 10 === 0) {
        const w = efd.wait();
        efd.write();
        await w;
        const pending = efd.wait();
        efd.close();
        await pending.catch(() => {});
      } else efd.close();
    }
    expect(openFds()).toBe(fds);
  }, SLOW);

  plain('a worker ending with a wait pending, and a process exiting with one, end cleanly', async () => {
    const worker = new Worker(
      `
      const { parentPort, workerData } = require('node:worker_threads');
      const { EventFd } = require(workerData.root);
      const e = EventFd.create();
      e.wait();
      parentPort.postMessage('waiting');
      `,
      { eval: true, workerData: { root } },
    );
    await new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    const started = Date.now();
    await worker.terminate();
    expect(Date.now() - started).toBeLessThan(10_000); // not held by the wait (a hang would be for good)
    const r = await child(`
      const { EventFd } = require(process.cwd());
      const e = EventFd.create();
      e.wait();
      setTimeout(() => process.exit(3), 20);
    `);
    expect(r).toMatchObject({ code: 3, signal: null });
  }, SLOW);

  plain('an EventFd dropped without close() has its fd closed by the garbage collector', async () => {
    const r = await child(`
      const { EventFd } = require(process.cwd());
      const count = () => require('node:fs').readdirSync('/proc/self/fd').length;
      const before = count();
      (() => { for (let i = 0; i < 50; i++) EventFd.create(); })();
      (async () => {
        for (let i = 0; i < 50 && count() > before; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 10)); }
        console.log('left', count() - before);
      })();
    `);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/left 0/);
  }, SLOW);
});

// --- bindings to a VM ------------------------------------------------------------------------------

test('an irqfd needs the irqchip and a routed GSI; one per eventfd; the deassign must name its GSI', ({ vm }) => {
  using efd = EventFd.create();
  expect(() => vm.irqfd(efd, 5)).toThrow(expect.objectContaining({ code: 'ERR_NO_IRQCHIP', message: expect.stringMatching(/vm\.irqfd: an irqfd raises a line of the in-kernel irqchip/) }));
  vm.createIrqchip();
  expect(() => vm.irqfd(efd, 24)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', message: expect.stringMatching(/gsi 24 has no route/) }));
  expect(() => vm.irqfd({ fd: 3 } as never, 5)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/eventfd must be an EventFd/) }));
  expect(() => vm.irqfd(efd, '5' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  expect(() => vm.irqfd(efd, 5, { deassign: 'yes' as never })).toThrow(/options\.deassign must be a boolean/);
  expect(() => vm.irqfd(efd, 5, { resample: efd })).toThrow(/options\.resample must be another eventfd/);
  expect(() => vm.irqfd(efd, 5, { resample: 7 as never })).toThrow(/options\.resample must be an EventFd/);
  vm.irqfd(efd, 5);
  expect(() => vm.irqfd(efd, 6)).toThrow(expect.objectContaining({ code: 'ERR_IN_USE', message: expect.stringMatching(/already raises GSI 5/) }));
  expect(() => vm.irqfd(efd, 6, { deassign: true })).toThrow(expect.objectContaining({ code: 'ERR_NOT_REGISTERED', message: expect.stringMatching(/not an irqfd of GSI 6 .*\(it raises GSI 5\)/) }));
  expect(efd.registrations).toEqual([{ kind: 'irqfd', description: 'GSI 5', vm }]);
  vm.irqfd(efd, 5, { deassign: true });
  expect(vm.irqfds).toEqual([]);
  expect(efd.registrations).toEqual([]);
  vm.irqfd(efd, 6); // free again
  const closed = EventFd.create();
  closed.close();
  expect(() => vm.irqfd(closed, 7)).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
});

kvmTest({ irqchip: true, irqfd: true, capabilities: { 82: 1 } })('a level-triggered irqfd holds its resample eventfd too; deassign takes no resample', ({ vm }) => {
  vm.createIrqchip();
  using line = EventFd.create();
  using resample = EventFd.create();
  vm.irqfd(line, 9, { resample });
  expect(vm.irqfds).toEqual([{ eventfd: line, gsi: 9, resample }]);
  expect(() => resample.close()).toThrow(expect.objectContaining({ code: 'ERR_IN_USE', message: expect.stringMatching(/registered with a VM as irqfd-resample \(GSI 9\)/) }));
  expect(() => vm.irqfd(line, 9, { deassign: true, resample })).toThrow(/options\.resample goes with an assignment/);
  vm.irqfd(line, 9, { deassign: true });
  resample.close();
});

test('an eventfd a VM holds cannot be closed; dispose waits for the VM, and closing the VM releases it', ({ kvm }) => {
  const vm = kvm.createVm();
  vm.createIrqchip();
  const efd = EventFd.create();
  vm.irqfd(efd, 4);
  vm.ioeventfd({ addr: 0x60, len: 1, pio: true, eventfd: efd });
  expect(() => efd.close()).toThrow(
    expect.objectContaining({ code: 'ERR_IN_USE', message: expect.stringMatching(/eventfd\.close: .* as irqfd \(GSI 4\), ioeventfd \(PIO 0x60, 1 byte, any value\); deassign them first \(or close the VM\)/) }),
  );
  efd[Symbol.dispose]();
  expect(efd.closed).toBe(false); // deferred
  vm.close();
  expect(efd.closed).toBe(true);
  // An eventfd that outlives its VM is free again.
  const other = kvm.createVm();
  const kept = EventFd.create();
  other.ioeventfd({ addr: 0x1000, len: 4, eventfd: kept });
  other.close();
  expect(kept.registrations).toEqual([]);
  kept.close();
});

test('ioeventfd arguments are checked before the ioctl', ({ vm }) => {
  using efd = EventFd.create();
  const bad: Array<[unknown, RegExp]> = [
    [undefined, /options \{ addr, len, eventfd, \.\.\. \} are required/],
    [null, /options must be an object/],
    [{ addr: 0x50, len: 1 }, /options\.eventfd must be an EventFd/],
    [{ addr: -1, len: 1, eventfd: efd }, /options\.addr -1 is negative/],
    [{ addr: 0x50, len: 3, eventfd: efd }, /options\.len must be 0, 1, 2, 4 or 8, got 3/],
    [{ addr: 0x50, len: '1', eventfd: efd }, /options\.len must be/],
    [{ addr: 0x50, len: 1, pio: 'yes', eventfd: efd }, /options\.pio must be a boolean/],
    [{ addr: 0x50, len: 1, deassign: 1, eventfd: efd }, /options\.deassign must be a boolean/],
    [{ addr: 0x50, len: 1, datamatch: 0x100, eventfd: efd }, /datamatch 0x100 does not fit in len 1 byte/],
    [{ addr: 0x50, len: 0, datamatch: 0, pio: true, eventfd: efd }, /datamatch needs a width/],
    [{ addr: 0x50, len: 2, datamatch: -1, eventfd: efd }, /options\.datamatch -1 is negative/],
    [{ addr: 0xffff, len: 2, pio: true, eventfd: efd }, /port 0xffff \+ len 2 is past 0xffff/],
    [{ addr: 0x10000, len: 0, pio: true, eventfd: efd }, /port 0x10000 \+ len 0 is past 0xffff/],
    [{ addr: 0xfffffffffffffffcn, len: 8, eventfd: efd }, /wraps past 2\^64/],
  ];
  for (const [options, message] of bad) expect(() => vm.ioeventfd(options as never), String(message)).toThrow(message);
  expect(vm.ioeventfds).toEqual([]);
});

test('ioeventfds that would select the same write are refused as KVM does (EEXIST), naming the other', ({ vm }) => {
  using a = EventFd.create();
  using b = EventFd.create();
  vm.ioeventfd({ addr: 0x70, len: 1, pio: true, datamatch: 1, eventfd: a });
  vm.ioeventfd({ addr: 0x70, len: 1, pio: true, datamatch: 2, eventfd: b }); // another value: fine
  vm.ioeventfd({ addr: 0x70, len: 2, pio: true, datamatch: 1, eventfd: b }); // another width: fine
  vm.ioeventfd({ addr: 0x70, len: 1, eventfd: b }); // MMIO, not PIO: fine
  const clash = (o: object) => expect(() => vm.ioeventfd({ eventfd: b, ...o } as never)).toThrow(expect.objectContaining({ code: 'ERR_IOEVENTFD_CLASH' }));
  clash({ addr: 0x70, len: 1, pio: true, datamatch: 1 });
  clash({ addr: 0x70, len: 1, pio: true }); // any value vs value 1
  clash({ addr: 0x70, len: 0, pio: true }); // any width
  expect(() => vm.ioeventfd({ addr: 0x70, len: 1, pio: true, eventfd: b })).toThrow(/PIO 0x70, 1 byte, any value clashes with the ioeventfd at PIO 0x70, 1 byte, value 0x1/);
  expect(vm.ioeventfds).toHaveLength(4);
  expect(() => vm.ioeventfd({ addr: 0x70, len: 1, pio: true, datamatch: 3, eventfd: a, deassign: true })).toThrow(expect.objectContaining({ code: 'ERR_NOT_REGISTERED' }));
  expect(() => vm.ioeventfd({ addr: 0x70, len: 1, pio: true, datamatch: 1, eventfd: b, deassign: true })).toThrow(expect.objectContaining({ code: 'ERR_NOT_REGISTERED' })); // b is not the one
  vm.ioeventfd({ addr: 0x70, len: 1, pio: true, datamatch: 1, eventfd: a, deassign: true });
  vm.ioeventfd({ addr: 0x70, len: 1, pio: true, datamatch: 1, eventfd: b }); // value 1 is free now
  expect(vm.ioeventfds.map((x) => [x.len, x.pio, x.datamatch])).toEqual([[1, true, 2n], [2, true, 1n], [1, false, undefined], [1, true, 1n]]);
  expect(a.registrations).toEqual([]);
});

test('no fd leaks over 1,000 eventfds bound to and released from a VM', ({ vm }) => {
  vm.createIrqchip();
  const fds = openFds();
  for (let i = 0; i < 1000; i++) {
    const efd = EventFd.create();
    vm.irqfd(efd, i % 24);
    vm.ioeventfd({ addr: 0x100 + (i % 16), len: 1, pio: true, eventfd: efd });
    vm.irqfd(efd, i % 24, { deassign: true });
    vm.ioeventfd({ addr: 0x100 + (i % 16), len: 1, pio: true, eventfd: efd, deassign: true });
    efd.close();
  }
  expect(openFds()).toBe(fds);
}, SLOW);
