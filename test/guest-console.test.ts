// The "hello" guest and the console collector, on real vCPUs.
import { expect } from 'vitest';
import { captureOutput, guest, loadLongMode, loadRealMode, type Vm } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';

const test = kvmTest();

function vcpuWithMemory(vm: Vm) {
  vm.addMemorySlot({ guestPhysAddr: 0, size: 2 << 20, userspace: 'anonymous' });
  return vm.createVcpu(0);
}

test('a real-mode hello prints its message on COM1, one byte per exit, then halts', async ({ vm }) => {
  const vcpu = vcpuWithMemory(vm);
  loadRealMode(vcpu, guest.hello('hello from the guest\n'));
  const out = await captureOutput(vcpu, { timeoutMs: 60_000 });
  expect(out.text).toBe('hello from the guest\n');
  expect(out.exit.reason).toBe('hlt');
  expect(out.truncated).toBe(false);
});

test('a long-mode hello prints UTF-8 and raw bytes the same way, from any load address', async ({ vm }) => {
  const vcpu = vcpuWithMemory(vm);
  loadLongMode(vcpu, guest.longHello('grüße, 世界', 0x3f8, { loadAddress: 0x40000 }));
  expect((await captureOutput(vcpu, { timeoutMs: 60_000 })).text).toBe('grüße, 世界');
  loadLongMode(vcpu, guest.longHello(Uint8Array.from([0, 1, 255]), 0x2f8));
  const raw = await captureOutput(vcpu, { port: 0x2f8, timeoutMs: 60_000 });
  expect([...raw.bytes]).toEqual([0, 1, 255]);
});

test('an empty message halts at once; the port and the byte limit are honoured', async ({ vm }) => {
  const vcpu = vcpuWithMemory(vm);
  loadRealMode(vcpu, guest.hello(''));
  expect(await captureOutput(vcpu, { timeoutMs: 60_000 })).toMatchObject({ text: '', truncated: false, exit: { reason: 'hlt' } });
  loadRealMode(vcpu, guest.hello('0123456789'));
  const cut = await captureOutput(vcpu, { maxBytes: 4, timeoutMs: 60_000 });
  expect(cut).toMatchObject({ text: '0123', truncated: true, exit: { reason: 'io' } });
  // Output to another port ends the collection at that exit.
  loadRealMode(vcpu, guest.hello('x', 0x80));
  const other = await captureOutput(vcpu, { timeoutMs: 60_000 });
  expect(other).toMatchObject({ text: '', exit: { reason: 'io', port: 0x80 } });
  loadRealMode(vcpu, guest.hello('sync'));
  expect((await captureOutput(vcpu, { sync: true, timeoutMs: 60_000 })).text).toBe('sync');
});

test('hello and captureOutput check their arguments', async ({ vm }) => {
  const vcpu = vcpuWithMemory(vm);
  expect(() => guest.hello(5 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/hello: message must be a string/) }));
  expect(() => guest.hello('x', 0x10000)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  expect(() => guest.hello('x'.repeat(0xf000))).toThrow(/must end below 0x10000/);
  await expect(captureOutput(vcpu, { port: -1 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE', message: expect.stringMatching(/options\.port/) });
  await expect(captureOutput(vcpu, { maxBytes: 0 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
  await expect(captureOutput(vcpu, null as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
});
