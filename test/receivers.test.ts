// Every method and accessor of every public class refuses a receiver its class did
// not construct (forged with Object.create, borrowed onto another object, detached)
// with a typed ERR_INVALID_THIS naming the call, before any field, fd or addon call.
import { describe, expect, test } from 'vitest';
import {
  AttributeMap,
  DirtyBitmap,
  EventFd,
  GuestMemfd,
  GuestMemory,
  Kvm,
  LapicState,
  Memfd,
  MemoryFile,
  MemoryLayout,
  MemorySlot,
  MemoryView,
  Notifier,
  Vcpu,
  Vm,
} from '../lib';

const classes: Array<[string, { prototype: object }]> = [
  ['Kvm', Kvm],
  ['Vm', Vm],
  ['Vcpu', Vcpu],
  ['EventFd', EventFd],
  ['LapicState', LapicState],
  ['Notifier', Notifier],
  ['MemorySlot', MemorySlot],
  ['MemoryFile', MemoryFile],
  ['Memfd', Memfd],
  ['GuestMemfd', GuestMemfd],
  ['GuestMemory', GuestMemory],
  ['MemoryView', MemoryView],
  ['DirtyBitmap', DirtyBitmap],
  ['AttributeMap', AttributeMap],
  ['MemoryLayout', MemoryLayout],
];

type Member = { cls: string; key: string | symbol; kind: 'method' | 'get' | 'set'; fn: (...a: unknown[]) => unknown };

function members(): Member[] {
  const out: Member[] = [];
  for (const [cls, ctor] of classes) {
    for (const key of Reflect.ownKeys(ctor.prototype)) {
      if (key === 'constructor') continue;
      const d = Object.getOwnPropertyDescriptor(ctor.prototype, key)!;
      if (typeof d.value === 'function') out.push({ cls, key, kind: 'method', fn: d.value });
      if (d.get) out.push({ cls, key, kind: 'get', fn: d.get });
      if (d.set) out.push({ cls, key, kind: 'set', fn: d.set });
    }
  }
  return out;
}

const all = members();
const name = (m: Member): string => `${m.cls}.${String(m.key)}${m.kind === 'method' ? '()' : ` (${m.kind})`}`;

/** Calls `m` on `receiver`; the error it throws or rejects with. */
async function failure(m: Member, receiver: unknown): Promise<unknown> {
  try {
    const r = m.kind === 'set' ? m.fn.call(receiver, 1) : m.fn.call(receiver, 0, 4096);
    if (r instanceof Promise) await r;
  } catch (e) {
    return e;
  }
  return undefined;
}

function expectInvalidThis(error: unknown, m: Member): void {
  expect(error, `${name(m)} must fail`).toBeInstanceOf(TypeError);
  expect((error as { code?: string }).code, `${name(m)}: ${(error as Error).message}`).toBe('ERR_INVALID_THIS');
  expect((error as Error).message).toMatch(/must be called on an? [A-Z]\w+ \(from /);
}

describe('receiver checks', () => {
  test('every public class has guarded members (the list below is not empty)', () => {
    for (const [cls] of classes) expect(all.filter((m) => m.cls === cls).length, cls).toBeGreaterThan(0);
  });

  describe.each(classes)('%s', (cls, ctor) => {
    const own = all.filter((m) => m.cls === cls);
    test.each(own.map((m) => [name(m), m] as const))('%s refuses a forged object', async (_, m) => {
      expectInvalidThis(await failure(m, Object.create(ctor.prototype)), m);
    });
    test.each(own.map((m) => [name(m), m] as const))('%s refuses a plain object, a primitive and undefined', async (_, m) => {
      for (const receiver of [{}, 42, undefined, null, new Proxy({}, { getPrototypeOf: () => { throw new Error('hostile'); } })])
        expectInvalidThis(await failure(m, receiver), m);
    });
  });

  test('an instance of another class is refused with its class named', async () => {
    const m = all.find((x) => x.cls === 'Vm' && x.key === 'checkExtension')!;
    const error = await failure(m, new AttributeMap());
    expectInvalidThis(error, m);
    expect((error as Error).message).toBe(
      'vm.checkExtension: must be called on a Vm (from kvm.createVm()), was called on an object of class AttributeMap it did not construct',
    );
  });

  test('a detached method names the call and says it was detached', async () => {
    const map = new AttributeMap();
    const { at } = map;
    expect(() => at(0)).toThrow(/^attributes\.at: must be called on an AttributeMap .*undefined \(a method detached from its object\)$/);
    expect(map.at(0)).toBe('shared');
  });

  test('async methods reject (they do not throw) on a wrong receiver', () => {
    const punch = MemoryFile.prototype.punchHole;
    const truncate = Memfd.prototype.truncate;
    let first: unknown;
    let second: unknown;
    expect(() => (first = punch.call({}, 0, 4096))).not.toThrow();
    expect(() => (second = truncate.call({}, 0))).not.toThrow();
    return Promise.all([
      expect(first).rejects.toMatchObject({ code: 'ERR_INVALID_THIS' }),
      expect(second).rejects.toMatchObject({ code: 'ERR_INVALID_THIS' }),
    ]);
  });

  test('guarded members keep their names and arities', () => {
    expect(Vm.prototype.checkExtension.name).toBe('checkExtension');
    expect(AttributeMap.prototype.at.name).toBe('at');
    expect(AttributeMap.prototype.at.length).toBe(1);
  });
});
