// Bad input to the loaders, the exit decoder, dirty bitmaps, memfd_secret files and
// write-sealed memfds: typed ERR_* errors naming the call and the argument, before
// any system call (the file's state is unchanged afterwards).
import { describe, expect, test } from 'vitest';
import { decodeExit, DirtyBitmap, guest, Kvm, loadLongMode, loadProgram, loadRealMode, Memfd } from '../lib/index';
import { codeOf, noKvm } from './helpers';

const secretUnavailable = (() => {
  try {
    Memfd.create('probe', { secret: true, size: 4096 }).close();
    return undefined;
  } catch (e) {
    return `memfd_secret unavailable here (${(e as Error).message})`;
  }
})();

/** The error `fn` throws or rejects with. */
async function failure(fn: () => unknown): Promise<{ code?: string; message: string }> {
  try {
    await fn();
  } catch (e) {
    return e as { code?: string; message: string };
  }
  throw new Error('expected a failure');
}

describe('guest program loaders', () => {
  const bad: Array<[string, unknown]> = [
    ['null', null],
    ['a number', 5],
    ['an object without mode', { bytes: new Uint8Array(1), loadAddress: 0x1000n, entry: 0x1000n }],
    ['bytes that are not a Uint8Array', { mode: 'real', bytes: [1, 2], loadAddress: 0x1000n, entry: 0x1000n }],
    ['a negative load address', { mode: 'real', bytes: new Uint8Array(1), loadAddress: -1, entry: 0x1000n }],
    ['a string entry', { mode: 'real', bytes: new Uint8Array(1), loadAddress: 0x1000n, entry: '4096' }],
  ];
  test.each(bad)('a program that is %s is refused by all three loaders', (_, program) => {
    for (const [name, load] of [['loadRealMode', loadRealMode], ['loadLongMode', loadLongMode], ['loadProgram', loadProgram]] as const) {
      // The vCPU is checked first, so this needs no KVM: a non-vCPU fails on the vcpu argument.
      expect(codeOf(() => load({} as never, program as never))).toBe('ERR_INVALID_ARG_TYPE');
      expect(() => load({} as never, program as never)).toThrow(new RegExp(`^${name}: vcpu must be a Vcpu`));
    }
  });

  test.skipIf(noKvm)(`a bad program on a real vCPU names program.*${noKvm ? ` [skipped: ${noKvm}]` : ''}`, () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    const codes = bad.map(([, p]) => codeOf(() => loadProgram(vcpu, p as never)));
    expect(codes).toEqual(['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_INVALID_ARG_TYPE', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_ARG_TYPE']);
    expect(() => loadRealMode(vcpu, null as never)).toThrow(/^loadRealMode: program must be a GuestProgram/);
    expect(() => loadRealMode(vcpu, { ...guest.outLoop(), bytes: 'x' } as never)).toThrow(/program\.bytes must be a Uint8Array/);
    // The mode rule still holds, and a bad long-mode setup is refused before any write.
    expect(codeOf(() => loadLongMode(vcpu, guest.outLoop()))).toBe('ERR_INVALID_ARG_VALUE');
    expect(codeOf(() => loadRealMode(vcpu, guest.spin({ mode: 'long' })))).toBe('ERR_INVALID_ARG_VALUE');
    expect(() => loadLongMode(vcpu, guest.spin({ mode: 'long' }), null as never)).toThrow(/^loadLongMode: setup must be a LongModeSetup/);
    expect(() => loadLongMode(vcpu, guest.spin({ mode: 'long' }), { memory: [{ gpa: 0 }], sregs: {} } as never)).toThrow(
      /setup\.memory\[0\] must be/,
    );
  });
});

describe('decodeExit', () => {
  test.each([
    ['null', null, 0, 'ERR_INVALID_ARG_TYPE'],
    ['a Uint8Array', new Uint8Array(4096), 0, 'ERR_INVALID_ARG_TYPE'],
    ['a short Buffer', Buffer.alloc(100), 0, 'ERR_INVALID_ARG_TYPE'],
    ['a negative errno', Buffer.alloc(4096), -1, 'ERR_OUT_OF_RANGE'],
    ['a fractional errno', Buffer.alloc(4096), 1.5, 'ERR_OUT_OF_RANGE'],
    ['a string errno', Buffer.alloc(4096), '4', 'ERR_OUT_OF_RANGE'],
  ])('refuses %s', (_, run, errno, code) => {
    expect(codeOf(() => decodeExit(run as never, errno as never))).toBe(code);
    expect(() => decodeExit(run as never, errno as never)).toThrow(/^decodeExit: (run|errno) /);
  });
  test('decodes a zeroed kvm_run as an unknown exit', () => {
    expect(decodeExit(Buffer.alloc(4096), 0).rawReason).toBe(0);
  });
});

describe('DirtyBitmap', () => {
  test.each([
    ['a string address', ['x', 1, 4096], 'ERR_INVALID_ARG_TYPE', /guestPhysAddr/],
    ['a negative address', [-1n, 1, 4096], 'ERR_OUT_OF_RANGE', /guestPhysAddr/],
    ['a fractional page count', [0n, 1.5, 4096], 'ERR_OUT_OF_RANGE', /pages/],
    ['a null page count', [0n, null, 4096], 'ERR_INVALID_ARG_TYPE', /pages/],
    ['a page size that is not a power of two', [0n, 1, 3000], 'ERR_OUT_OF_RANGE', /pageSize/],
    ['a zero page size', [0n, 1, 0], 'ERR_OUT_OF_RANGE', /pageSize/],
    ['words of the wrong type', [0n, 1, 4096, [1n]], 'ERR_INVALID_ARG_TYPE', /words/],
    ['words too short', [0n, 65, 4096, new BigUint64Array(1)], 'ERR_OUT_OF_RANGE', /words/],
  ])('refuses %s', (_, args, code, message) => {
    expect(codeOf(() => new DirtyBitmap(...(args as [bigint, number, number])))).toBe(code);
    expect(() => new DirtyBitmap(...(args as [bigint, number, number]))).toThrow(message);
  });
  test('allocate refuses a bad page count; a good bitmap still works', () => {
    expect(codeOf(() => DirtyBitmap.allocate(-1))).toBe('ERR_OUT_OF_RANGE');
    const words = DirtyBitmap.allocate(65);
    words[1] = 1n;
    const bitmap = new DirtyBitmap(0x1000n, 65, 4096, words);
    expect([...bitmap].map((p) => p.guestPhysAddr)).toEqual([0x1000n + 64n * 4096n]);
  });
});

describe('memfd_secret files', () => {
  test.skipIf(secretUnavailable)(
    `punch, allocate, resize and seal are refused before the syscall; seals reads as none${secretUnavailable ? ` [skipped: ${secretUnavailable}]` : ''}`,
    async () => {
      using secret = Memfd.create('key', { secret: true, size: 8192 });
      for (const [op, fn] of [
        ['punchHole', () => secret.punchHole(0, 4096)],
        ['punchHoles', () => secret.punchHoles([[0, 4096]])],
        ['allocate', () => secret.allocate(0, 4096)],
        ['truncate', () => secret.truncate(4096)],
        ['truncate', () => secret.truncate(16384)],
        ['seal', () => secret.seal(['grow'])],
      ] as const) {
        const e = await failure(fn);
        expect(e.code, e.message).toBe('ERR_SECRET_MEMFD');
        expect(e.message).toMatch(new RegExp(`^memfd\\.${op}.*is a memfd_secret file`));
      }
      expect(secret.seals).toEqual([]);
      expect(secret.size).toBe(8192);
      // Same size: nothing to do.
      await secret.truncate(8192);
      const view = secret.map();
      view.buffer[0] = 7;
      expect(view.buffer[0]).toBe(7);
    },
  );
});

describe('write-sealed memfds', () => {
  test.each([['write'], ['future-write']] as const)('after seal([%s]) map and punch are ERR_SEALED and the data stays', async (seal) => {
    using file = Memfd.create('sealed', { size: 8192, allowSealing: true });
    const before = file.map();
    before.buffer[0] = 9;
    if (seal === 'write') before.unmap();
    file.seal([seal]);
    const map = await failure(() => file.map());
    expect(map.code).toBe('ERR_SEALED');
    expect(map.message).toMatch(/^memfd\.map: .* is sealed against writes/);
    for (const fn of [() => file.punchHole(0, 4096), () => file.punchHoles([[0, 4096]])]) {
      const punch = await failure(fn);
      expect(punch.code).toBe('ERR_SEALED');
      expect(punch.message).toMatch(/^memfd\.punchHoles?(\[0\])?: .* punching would change its contents/);
    }
    expect(file.stat().allocatedBytes).toBeGreaterThan(0);
    if (seal === 'future-write') expect(before.buffer[0]).toBe(9);
  });
});
