// NUMA placement of guest memory: memory policies on memfd, guest_memfd and
// anonymous slot views (mbind), and where pages landed (move_pages). Whether a
// guest_memfd takes a policy is found by trying, never from the kernel version.
import { expect, test as plain } from 'vitest';
import { Kvm, Memfd, numaNodes, probeGuestMemfdMapping, UnsupportedError, type Vm, type VmTypeName } from '../lib/index';
import { kvmTest } from '../lib/testing/vitest.mjs';

const PAGE = 4096;
const nodes = numaNodes();
const first = nodes[0]!;
const second = nodes[1];
const twoNodes = second === undefined ? `this host has one NUMA node with memory (${first}); run with vm-run --numa-nodes 2` : undefined;

const test = kvmTest();
/** A VM type whose guest_memfd can be mapped and touched by the host. */
const gmemTest = kvmTest({ mmap: true, initShared: true });

/** Whether this VM's guest_memfd takes a NUMA policy, found by the probe (a small file, tried). */
function gmemPolicy(vm: Vm): { supported: boolean; detail: string } {
  return probeGuestMemfdMapping(vm).mempolicy;
}

/** Counts of each value in a list. */
function tally<T>(list: readonly T[]): Map<T, number> {
  const m = new Map<T, number>();
  for (const v of list) m.set(v, (m.get(v) ?? 0) + 1);
  return m;
}

plain('numaNodes lists the nodes with memory, ascending, at least one', () => {
  expect(nodes.length).toBeGreaterThanOrEqual(1);
  expect([...nodes].sort((a, b) => a - b)).toEqual(nodes);
  expect(nodes.every((n) => Number.isInteger(n) && n >= 0)).toBe(true);
});

plain('a memfd bound to a node: the policy reads back, touched pages are there, untouched ones are not mapped', () => {
  using ram = Memfd.create('numa', { size: 16 * PAGE });
  const view = ram.map();
  expect(view.getMemoryPolicy()).toEqual({ mode: 'default', nodes: [] });
  view.setMemoryPolicy({ mode: 'bind', nodes: [first] });
  expect(view.getMemoryPolicy()).toEqual({ mode: 'bind', nodes: [first] });
  expect(view.getMemoryPolicy(15 * PAGE)).toEqual({ mode: 'bind', nodes: [first] });
  view.buffer.fill(1, 0, 8 * PAGE);
  expect(view.pageNodes()).toEqual([...Array(8).fill(first), ...Array(8).fill(null)]);
  expect(view.pageNodes(4 * PAGE, 2 * PAGE)).toEqual([first, first]);
  // The policy belongs to the file: another mapping of it sees the same.
  const other = ram.map(8 * PAGE, 8 * PAGE);
  expect(other.getMemoryPolicy()).toEqual({ mode: 'bind', nodes: [first] });
  view.setMemoryPolicy({ mode: 'preferred', nodes: [first] });
  expect(view.getMemoryPolicy()).toEqual({ mode: 'preferred', nodes: [first] });
  view.setMemoryPolicy({ mode: 'default' });
  expect(view.getMemoryPolicy()).toEqual({ mode: 'default', nodes: [] });
});

test('anonymous slot memory takes a policy on the slot\'s own mapping, the one the guest faults through', ({ vm }) => {
  const slot = vm.addMemorySlot({ guestPhysAddr: 0, size: 64 * PAGE, userspace: 'anonymous' });
  const view = slot.userspace.view;
  view.setMemoryPolicy({ mode: 'interleave', nodes });
  expect(view.getMemoryPolicy()).toEqual({ mode: 'interleave', nodes });
  vm.memory.write(0, Buffer.alloc(4 * PAGE, 7));
  expect(view.pageNodes(0, 4 * PAGE).every((n) => n !== null && nodes.includes(n))).toBe(true);
});

gmemTest('guest_memfd takes a NUMA policy exactly where the kernel attaches it to the file; elsewhere UnsupportedError, and the view is left as it was', ({ vm }) => {
  const probe = gmemPolicy(vm);
  using gmem = vm.createGuestMemfd({ size: 16 * PAGE, mmap: true, initShared: true });
  const view = gmem.map();
  if (probe.supported) {
    view.setMemoryPolicy({ mode: 'bind', nodes: [first] });
    expect(view.getMemoryPolicy()).toEqual({ mode: 'bind', nodes: [first] });
    view.buffer.fill(3);
    expect(view.pageNodes()).toEqual(Array(16).fill(first));
    return;
  }
  let error: unknown;
  try {
    view.setMemoryPolicy({ mode: 'bind', nodes: [first] });
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(UnsupportedError);
  expect((error as Error).message).toMatch(/^view\.setMemoryPolicy: this kernel cannot give guest_memfd \(fd \d+\) a NUMA memory policy: /);
  expect(view.getMemoryPolicy()).toEqual({ mode: 'default', nodes: [] }); // undone
  expect(probe.detail).toMatch(/mbind/);
  view.setMemoryPolicy({ mode: 'default' }); // resetting is always possible
});

test('for every VM type, the probe\'s answer on guest_memfd policies is what setMemoryPolicy finds, or why no view can be made', ({ kvm }: { kvm: Kvm }) => {
  for (const type of kvm.capabilities().vmTypes as VmTypeName[]) {
    using vm = kvm.createVm({ type });
    const probe = probeGuestMemfdMapping(vm);
    const caps = vm.capabilities();
    const flags = caps.guestMemfdFlags.names;
    expect(probe.vmType).toBe(type);
    expect(probe.mappable).toBe(caps.guestMemfd && flags.includes('mmap'));
    if (!probe.mappable) {
      expect(probe.mempolicy).toEqual({ supported: false, detail: expect.stringMatching(caps.guestMemfd ? /cannot be mapped \(KVM_CAP_GUEST_MEMFD_FLAGS=0x[0-9a-f]+ lacks MMAP\)/ : /KVM_CAP_GUEST_MEMFD=0/) });
      expect(() => vm.createGuestMemfd({ size: PAGE, mmap: true, initShared: true })).toThrow(UnsupportedError);
      continue;
    }
    if (!flags.includes('init-shared')) continue; // mappable, but the host may not touch it: no view
    using gmem = vm.createGuestMemfd({ size: 4 * PAGE, mmap: true, initShared: true });
    const view = gmem.map();
    if (probe.mempolicy.supported) view.setMemoryPolicy({ mode: 'bind', nodes: [first] });
    else expect(() => view.setMemoryPolicy({ mode: 'bind', nodes: [first] })).toThrow(UnsupportedError);
  }
});

test('probeGuestMemfdMapping takes an open VM and leaves it as it was', ({ kvm }: { kvm: Kvm }) => {
  expect(() => probeGuestMemfdMapping({} as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/vm must be a Vm/) }));
  const vm = kvm.createVm();
  probeGuestMemfdMapping(vm);
  expect(vm.guestMemfds).toEqual([]);
  vm.close();
  expect(() => probeGuestMemfdMapping(vm)).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
});

plain.skipIf(twoNodes !== undefined)(`memfd pages bound to the second node land there; interleaved ones spread over both${twoNodes ? ` [skipped: ${twoNodes}]` : ''}`, () => {
  using bound = Memfd.create('bound', { size: 32 * PAGE });
  const b = bound.map();
  b.setMemoryPolicy({ mode: 'bind', nodes: [second!] });
  b.buffer.fill(1);
  expect(b.pageNodes()).toEqual(Array(32).fill(second));
  using spread = Memfd.create('spread', { size: 32 * PAGE });
  const s = spread.map();
  s.setMemoryPolicy({ mode: 'interleave', nodes: [first, second!] });
  s.buffer.fill(1);
  const counts = tally(s.pageNodes());
  expect([...counts.keys()].sort()).toEqual([first, second].sort());
  expect(counts.get(first)! + counts.get(second!)!).toBe(32);
  expect(Math.abs(counts.get(first)! - counts.get(second!)!)).toBeLessThanOrEqual(2);
});

(twoNodes ? plain.skipIf(true) : gmemTest)(
  `guest_memfd pages bound to the second node land there; interleaved ones spread over both${twoNodes ? ` [skipped: ${twoNodes}]` : ''}`,
  ({ vm }: { vm: Vm }) => {
    const probe = gmemPolicy(vm);
    using bound = vm.createGuestMemfd({ size: 32 * PAGE, mmap: true, initShared: true });
    const b = bound.map();
    if (!probe.supported) {
      // Where the kernel keeps no policy with the file (6.18 and older), saying so is the answer.
      expect(() => b.setMemoryPolicy({ mode: 'bind', nodes: [second!] })).toThrow(UnsupportedError);
      return;
    }
    b.setMemoryPolicy({ mode: 'bind', nodes: [second!] });
    b.buffer.fill(1);
    expect(b.pageNodes()).toEqual(Array(32).fill(second));
    using spread = vm.createGuestMemfd({ size: 32 * PAGE, mmap: true, initShared: true });
    const s = spread.map();
    s.setMemoryPolicy({ mode: 'interleave', nodes: [first, second!] });
    s.buffer.fill(1);
    const counts = tally(s.pageNodes());
    expect([...counts.keys()].sort()).toEqual([first, second].sort());
    expect(Math.abs(counts.get(first)! - counts.get(second!)!)).toBeLessThanOrEqual(2);
  },
);

plain('memory policy arguments are checked before any syscall', () => {
  using ram = Memfd.create('args', { size: 4 * PAGE });
  const view = ram.map();
  const bad: Array<[unknown, RegExp]> = [
    [undefined, /view\.setMemoryPolicy: policy \{ mode, nodes \} is required/],
    [null, /policy must be an object/],
    [{ mode: 'spread', nodes: [first] }, /policy\.mode must be one of 'default', 'preferred', 'bind', 'interleave', got spread/],
    [{ mode: 2, nodes: [first] }, /policy\.mode must be one of/],
    [{ mode: 'bind', nodes: first }, /policy\.nodes must be an array/],
    [{ mode: 'bind', nodes: [-1] }, /policy\.nodes\[0\] must be a non-negative integer/],
    [{ mode: 'bind', nodes: [0.5] }, /policy\.nodes\[0\] must be a non-negative integer/],
    [{ mode: 'bind', nodes: [1023] }, /node 1023 has no memory on this host \(nodes with memory: /],
    [{ mode: 'bind', nodes: [first, first] }, /policy\.nodes\[1\] repeats node/],
    [{ mode: 'bind', nodes: [] }, /policy 'bind' needs at least one node/],
    [{ mode: 'interleave' }, /policy 'interleave' needs at least one node/],
    [{ mode: 'preferred', nodes: [] }, /policy 'preferred' takes exactly one node, got 0/],
    [{ mode: 'default', nodes: [first] }, /policy 'default' takes no nodes, got 1/],
  ];
  for (const [policy, message] of bad) expect(() => view.setMemoryPolicy(policy as never), String(message)).toThrow(message);
  expect(view.getMemoryPolicy()).toEqual({ mode: 'default', nodes: [] });
  expect(() => view.pageNodes(1)).toThrow(expect.objectContaining({ code: 'ERR_UNALIGNED' }));
  expect(() => view.pageNodes(0, 100)).toThrow(expect.objectContaining({ code: 'ERR_UNALIGNED' }));
  expect(() => view.pageNodes(0, 0)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  expect(() => view.pageNodes(2 * PAGE, 4 * PAGE)).toThrow(/ends past the view's 0x4000 bytes/);
  expect(() => view.pageNodes(-PAGE)).toThrow(/offset -4096 is negative/);
  expect(() => view.pageNodes('0' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  expect(() => view.getMemoryPolicy(4 * PAGE)).toThrow(/offset 0x4000 is past the view's 0x4000 bytes/);
  view.unmap();
  expect(() => view.setMemoryPolicy({ mode: 'default' })).toThrow(expect.objectContaining({ code: 'ERR_CLOSED', message: expect.stringMatching(/view\.setMemoryPolicy: this view of memfd .* is unmapped/) }));
  expect(() => view.pageNodes()).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
  expect(() => view.getMemoryPolicy()).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
});
