// Sequences of calls a careless or hostile user (or another process) can make, and
// what the library guarantees then: no crash, no hang, no data lost, nothing leaked.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect, test as plain } from 'vitest';
import { Memfd } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';
import { slowdown } from './runs';

const root = path.join(__dirname, '..');
const MiB = 1 << 20;
const test = kvmTest();

function freeHugePages(): number {
  try {
    return Number(readFileSync('/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages', 'utf8'));
  } catch {
    return 0;
  }
}

/** Another process's `truncate -s SIZE` of one of this process's fds (through /proc). */
function truncateFromOutside(fd: number, size: number): { status: number | null; stderr: string } {
  const r = spawnSync('truncate', ['-s', String(size), `/proc/${process.pid}/fd/${fd}`], { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

plain('another process cannot shrink a memfd under a view: the default shrink seal refuses it', () => {
  using ram = Memfd.create('guarded', { size: 2 * MiB });
  const view = ram.map();
  view.buffer.fill(0x5a);
  const r = truncateFromOutside(ram.fd, 0);
  expect(r.status).not.toBe(0);
  expect(r.stderr).toMatch(/not permitted/i);
  expect(ram.stat().size).toBe(2 * MiB);
  expect(view.buffer[2 * MiB - 1]).toBe(0x5a); // still there: no SIGBUS
});

plain('memfd.stat() and size follow a size another process set (growth is allowed)', () => {
  using ram = Memfd.create('grown', { size: 4096 });
  expect(truncateFromOutside(ram.fd, 8192).status).toBe(0);
  expect(ram.stat().size).toBe(8192);
  expect(ram.size).toBe(8192);
});

plain('with shrinkable: true the guarantee is given up: a shrink from outside, then a touch, raises SIGBUS', () => {
  // In a child process: this is the crash the default seal exists to prevent.
  const r = spawnSync(
    process.execPath,
    [
      '-e',
      `
      const gm = require(process.cwd());
      const ram = gm.Memfd.create('loose', { size: 2 << 20, shrinkable: true });
      const view = ram.map();
      view.buffer[0] = 1;
      require('node:child_process').spawnSync('truncate', ['-s', '0', '/proc/' + process.pid + '/fd/' + ram.fd]);
      view.buffer[4096] = 1;
      console.log('survived');
      `,
    ],
    { cwd: root, encoding: 'utf8', timeout: 30_000 * slowdown },
  );
  expect(r.signal).toBe('SIGBUS');
  expect(r.stdout).not.toMatch(/survived/);
});

plain('a punch awaiting its listeners never acts on the fd once the file closed, even if a new file got the same number', async () => {
  const first = Memfd.create('first', { size: 4 * 4096 });
  const number = first.fd;
  let second: Memfd | undefined;
  first.notifier.register({
    async invalidateStart(e) {
      if (e.cause !== 'punch-hole') return;
      await new Promise((r) => setTimeout(r, 5));
      first.close();
      second = Memfd.create('second', { size: 4 * 4096 });
      second.map().buffer.fill(0x77);
    },
  });
  await expect(first.punchHole(0, 4 * 4096)).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  try {
    expect(second!.fd).toBe(number); // the number was reused: the old code would have punched it
    expect(second!.map().buffer.every((b) => b === 0x77)).toBe(true);
  } finally {
    second!.close();
  }
});

const hugeSkip = freeHugePages() < 2 ? 'fewer than two free 2 MiB huge pages here' : undefined;
plain.skipIf(!!hugeSkip)(
  `a hugetlb view mapped while a punch awaits its listeners stops the punch (it would SIGBUS later)${hugeSkip ? ` [skipped: ${hugeSkip}]` : ''}`,
  async () => {
    using huge = Memfd.create('huge', { size: 2 * MiB, hugetlb: '2MB' });
    let view: ReturnType<Memfd['map']> | undefined;
    huge.notifier.register({
      async invalidateStart() {
        await new Promise((r) => setTimeout(r, 5));
        view = huge.map();
        view.buffer[0] = 9;
      },
    });
    await expect(huge.punchHole(0, 2 * MiB)).rejects.toMatchObject({ code: 'ERR_IN_USE' });
    expect(view!.buffer[0]).toBe(9);
    view!.unmap();
  },
);

plain('a listener whose property reads throw after registration cannot stop a discard; its peers hear start and end', async () => {
  using ram = Memfd.create('hostile', { size: 2 * 4096 });
  ram.map().buffer.fill(1);
  let armed = false;
  const hostile = {
    get invalidateStart() {
      if (armed) throw new Error('getter bomb');
      return () => undefined;
    },
  };
  const seen: string[] = [];
  const errors: unknown[] = [];
  ram.notifier.onError = (e) => void errors.push(e);
  ram.notifier.register(hostile);
  ram.notifier.register({ invalidateStart: () => void seen.push('start'), invalidateEnd: () => void seen.push('end') });
  armed = true;
  (hostile as { invalidateEnd?: unknown }).invalidateEnd = 'not a function'; // later changes change nothing
  await ram.punchHole(0, 4096);
  expect(seen).toEqual(['start', 'end']);
  expect(errors).toEqual([]);
  expect(ram.map(0, 4096).buffer[0]).toBe(0);
  // A getter that throws while registering is the caller's error, before anything registers.
  expect(() => ram.notifier.register(hostile)).toThrow('getter bomb');
  expect(ram.notifier.size).toBe(2);
});

test('an onError that throws is reported as a warning and never stops a discard or a close, sync or async', async ({ vm }) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => void unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  const warnings: string[] = [];
  // Collected instead of printed.
  const emitWarning = process.emitWarning;
  process.emitWarning = ((w: string | Error) => void warnings.push(typeof w === 'string' ? w : w.message)) as typeof process.emitWarning;
  try {
    const ram = Memfd.create('ram', { size: MiB });
    ram.map().buffer.fill(3);
    vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: ram });
    for (const n of [ram.notifier, vm.notifier] as Array<{ onError: unknown; register(l: object): unknown }>) {
      n.onError = () => {
        throw new Error('the handler fails too');
      };
      n.register({
        invalidateStart: () => {
          throw new Error('listener fails');
        },
        async invalidateEnd() {
          throw new Error('async listener fails');
        },
      });
    }
    await ram.punchHole(0, 4096);
    expect(ram.map(0, 4096).buffer[0]).toBe(0);
    ram[Symbol.dispose]();
    vm.close(); // removes the slot (sync listeners, async rejections) and closes the file
    expect(vm.closed).toBe(true);
    expect(ram.closed).toBe(true);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(unhandled).toEqual([]);
    expect(warnings.some((w) => /listener fails/.test(w))).toBe(true);
    expect(warnings.some((w) => /the handler fails too/.test(w))).toBe(true);
  } finally {
    process.off('unhandledRejection', onUnhandled);
    process.emitWarning = emitWarning;
  }
});

test('the synchronous addMemorySlot refuses an async populate listener (it could not veto), adds nothing, rolls back the others', async ({ vm }) => {
  const seen: string[] = [];
  vm.notifier.register({ populate: () => void seen.push('sync populate'), invalidateStart: () => void seen.push('start'), invalidateEnd: () => void seen.push('end') });
  vm.notifier.register({
    async populate() {
      throw new Error('async veto');
    },
  });
  expect(() => vm.addMemorySlot({ guestPhysAddr: 0, size: MiB, userspace: 'anonymous' })).toThrow(
    expect.objectContaining({ code: 'ERR_ASYNC_LISTENER', message: expect.stringMatching(/use vm\.addMemorySlotAsync/) }),
  );
  expect(vm.slots).toEqual([]);
  expect(seen).toEqual(['sync populate', 'start', 'end']);
  await expect(vm.addMemorySlotAsync({ guestPhysAddr: 0, size: MiB, userspace: 'anonymous' })).rejects.toThrow('async veto');
  expect(vm.slots).toEqual([]);
});

test('addMemorySlotAsync waits for populate listeners and re-checks the plan they may have changed', async ({ vm }) => {
  let slow = true;
  vm.notifier.register({
    async populate(e) {
      if (!slow || e.cause !== 'slot-added') return;
      slow = false;
      await new Promise((r) => setTimeout(r, 5));
      await vm.addMemorySlotAsync({ guestPhysAddr: 0, size: 4096, userspace: 'anonymous' }); // takes the GPA meanwhile
    },
  });
  await expect(vm.addMemorySlotAsync({ guestPhysAddr: 0, size: MiB, userspace: 'anonymous' })).rejects.toMatchObject({ code: 'ERR_SLOT_OVERLAP' });
  expect(vm.slots.map((s) => s.size)).toEqual([4096n]);
  const slot = await vm.addMemorySlotAsync({ guestPhysAddr: MiB, size: MiB, userspace: 'anonymous' });
  expect(vm.slotAt(MiB)).toBe(slot);
  await expect(vm.addMemorySlotAsync({ guestPhysAddr: MiB, size: 4096, userspace: 'anonymous' })).rejects.toMatchObject({ code: 'ERR_SLOT_OVERLAP' });
});

