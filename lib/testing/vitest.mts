/// <reference types="node" preserve="true" />
/**
 * `guest-memfd/testing` for vitest (the ES module form of the entry): everything the
 * framework-free part exports, plus capability-gated `describeKvm`/`testKvm` that
 * skip with the reason in their titles, and `kvmTest(needs)`, a `test` with
 * fixtures that give each test a Kvm and a VM of a type offering what it needs, close
 * both after it, and fail it if it left an fd, a mapping or a vCPU thread behind.
 *
 * @example
 * import { kvmTest, describeKvm } from 'guest-memfd/testing';
 * const test = kvmTest({ privateMemory: true });
 * test('converts a page', async ({ vm }) => { ... });   // "[skipped: ...]" where no VM type can
 *
 * @packageDocumentation
 */
import { describe, test } from 'vitest';
import { Kvm } from '../kvm/kvm.js';
import type { Vm } from '../kvm/vm.js';
import type { VmTypeName } from '../core/caps.js';
import { assertNoLeaks, findVmType, resourceSnapshot, titleWithReason, type ResourceSnapshot } from './index.js';

export {
  assertNoLeaks,
  findVmType,
  kvmUnavailable,
  resourceLeaks,
  resourceSnapshot,
  titleWithReason,
  unmetRequirements,
  vcpuThreadCount,
  type ResourceSnapshot,
  type VmRequirements,
  type VmTypeMatch,
} from './index.js';
import type { VmRequirements, VmTypeMatch } from './index.js';

/** What a gated suite or test body is told: the VM type that qualified. */
export interface KvmContext {
  /** The first VM type offering the needs (`'default'` while collecting a skipped suite). */
  readonly vmType: VmTypeName;
  /** The full match, with the skip reason when none qualified. */
  readonly match: VmTypeMatch;
}

/**
 * A `describe` that runs only where a VM type offers `needs`; otherwise the whole
 * suite is reported as skipped with the reason in its title. The body is still
 * called to collect the (skipped) tests, so it must not touch KVM outside hooks and tests.
 */
export function describeKvm(needs: VmRequirements, title: string, body: (ctx: KvmContext) => void): void {
  const match = findVmType(needs);
  describe.skipIf(match.type === undefined)(titleWithReason(title, match.reason), () => body({ vmType: match.type ?? 'default', match }));
}

/** A `test` that runs only where a VM type offers `needs`, skipped with the reason in its title otherwise. */
export function testKvm(
  needs: VmRequirements,
  title: string,
  fn: (ctx: KvmContext) => unknown,
  timeout?: number,
): void {
  const match = findVmType(needs);
  test.skipIf(match.type === undefined)(titleWithReason(title, match.reason), () => fn({ vmType: match.type ?? 'default', match }) as Promise<void>, timeout);
}

/** Fixtures of {@link kvmTest}. */
export interface KvmFixtures {
  /** The VM type that qualified for the needs. */
  vmType: VmTypeName;
  /** An open KVM device, closed after the test (closing every VM made from it). */
  kvm: Kvm;
  /** A VM of `vmType`, closed after the test. */
  vm: Vm;
  /** Taken before the test; after it (and after `kvm`/`vm` close), anything that grew fails the test. */
  leakCheck: ResourceSnapshot;
}

/** A `test` function bound to fixtures; the title gets the skip reason where the needs are unmet. */
export interface GatedTest<F> {
  (title: string, fn: (fixtures: F) => unknown, timeout?: number): void;
  /** Why the tests skip here, or undefined when they run. */
  readonly reason: string | undefined;
  /** The VM type the fixtures create. */
  readonly vmType: VmTypeName | undefined;
  /** The same test, also skipped (with `reason` in its title) when `reason` is a string. */
  skipIf(reason: string | undefined): GatedTest<F>;
}

/**
 * `test` with KVM fixtures for tests that need `needs`: `{ kvm, vm, vmType, leakCheck }`.
 * Each test gets its own device and VM (closed after it); with `leakCheck` (default
 * on) a test that leaves an fd, a mapping or a vCPU thread behind fails, naming them.
 *
 * @example
 * const test = kvmTest({ guestMemfd: true });
 * test('creates a guest_memfd', ({ vm }) => { vm.createGuestMemfd({ size: 4096 }).close(); });
 */
export function kvmTest(needs: VmRequirements = {}, options: { leakCheck?: boolean } = {}): GatedTest<KvmFixtures> {
  const match = findVmType(needs);
  const checkLeaks = options.leakCheck ?? true;
  const extended = test.extend<KvmFixtures>({
    leakCheck: [
      // vitest reads which fixtures a fixture uses from its destructuring pattern.
      async ({}, use) => {
        const before = resourceSnapshot();
        await use(before);
        if (checkLeaks) assertNoLeaks(before);
      },
      { auto: true },
    ],
    vmType: async ({}, use) => use(match.type ?? 'default'),
    // Depending on leakCheck makes vitest take the snapshot before the device opens
    // and compare after it (and its VMs) closed.
    kvm: async ({ leakCheck }, use) => {
      void leakCheck;
      const kvm = Kvm.open();
      try {
        await use(kvm);
      } finally {
        kvm.close();
      }
    },
    vm: async ({ kvm, vmType }, use) => {
      const vm = kvm.createVm({ type: vmType });
      try {
        await use(vm);
      } finally {
        vm.close();
      }
    },
  });
  const gate = (reason: string | undefined): GatedTest<KvmFixtures> => {
    const gated = extended.skipIf(reason !== undefined);
    // The body goes to vitest as it is: vitest reads which fixtures a test uses from
    // its parameter's destructuring pattern, so only those are created.
    const fn = (title: string, body: (fixtures: KvmFixtures) => unknown, timeout?: number) =>
      gated(titleWithReason(title, reason), body as never, timeout);
    return Object.assign(fn, {
      reason,
      vmType: match.type,
      skipIf: (extra: string | undefined) => gate(reason ?? extra),
    });
  };
  return gate(match.reason);
}
