/**
 * Shared test plumbing: whether a usable KVM is here (and why not), fd counting,
 * child processes with a time limit.
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { Cap, defaultKvmPath, Kvm, Memfd, VmType, type GuestMemfd, type MemoryFile, type MemorySlot, type Vm, type VmTypeName } from '../lib/index';

import { slowdown } from './runs';

/** The repository root: children run there, so `require(process.cwd())` is the library. */
export const repoRoot = path.join(__dirname, '..');

/** How a child process ended: exit code or signal, its stdout and stderr together, how long it ran. */
export interface ChildResult {
  code: number | null;
  signal: string | null;
  out: string;
  ms: number;
}

/**
 * Runs Node with `args` in a child process at the repository root, with the suite's
 * KVM device; SIGKILLs it after `timeoutMs` (scaled by the emulation slowdown), so a
 * hang ends the test with a signal instead of a timeout.
 */
export function runNode(args: readonly string[], timeoutMs: number): Promise<ChildResult> {
  return new Promise((resolve) => {
    const started = Date.now();
    const p = spawn(process.execPath, [...args], {
      cwd: repoRoot,
      env: { ...process.env, GMEM_KVM_PATH: kvmPath },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs * slowdown);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, ms: Date.now() - started });
    });
  });
}

/** The device the suite uses (GMEM_KVM_PATH switches it, e.g. to /nonexistent). */
export const kvmPath = defaultKvmPath();

function probeKvm(): string | undefined {
  try {
    Kvm.open(kvmPath).close();
    return undefined;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

/** Why KVM tests cannot run here, or undefined when they can. */
export const noKvm: string | undefined = probeKvm();

/** Title suffix for suites that need KVM: says why they are skipped. */
export function needsKvm(title: string): string {
  return noKvm ? `${title} [skipped: no usable KVM at ${kvmPath}: ${noKvm}]` : title;
}

/** Open fds of this process, from /proc/self/fd. */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Expects `fn` to throw an error with `code` (and optionally an instance of `type`). */
export function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

/** A default VM's KVM_CHECK_EXTENSION answer (0 without KVM), for skip conditions. */
export function vmCap(cap: number): number {
  if (noKvm) return 0;
  const kvm = Kvm.open(kvmPath);
  try {
    return kvm.createVm().checkExtension(cap);
  } finally {
    kvm.close();
  }
}

/** A VM type whose VMs report KVM_MEMORY_ATTRIBUTE_PRIVATE, if this host has one. */
export const conversionType: VmTypeName | undefined = (() => {
  if (noKvm) return undefined;
  const kvm = Kvm.open(kvmPath);
  try {
    const offered = kvm.checkExtension(Cap.VmTypes) || 1;
    for (const type of Object.keys(VmType) as VmTypeName[]) {
      if (!((offered >> VmType[type]) & 1)) continue;
      try {
        const vm = kvm.createVm({ type });
        const attrs = BigInt(vm.checkExtension(Cap.MemoryAttributes));
        vm.close();
        if (attrs & 8n) return type;
      } catch {
        // a type the host lists but cannot create here
      }
    }
    return undefined;
  } finally {
    kvm.close();
  }
})();

/** Skip reason for tests that need shared/private conversion. */
export const noConversion = conversionType
  ? undefined
  : 'no VM type on this host reports KVM_MEMORY_ATTRIBUTE_PRIVATE in KVM_CAP_MEMORY_ATTRIBUTES';

/**
 * guest_memfd memory the host can read and write too. Where the VM offers mmap and
 * init-shared, the guest_memfd is its own shared backing (`inPlace`); otherwise (Linux
 * 6.12, sw-protected VMs) a memfd of the same size is, at the same offsets, so suites
 * whose subject is guest memory still run. The memfd is disposed once a slot binds
 * it: it closes when the VM removes its last slot.
 */
export interface GuestRam {
  readonly gmem: GuestMemfd;
  /** The host-visible backing: `gmem` itself, or a memfd of the same size. */
  readonly shared: MemoryFile;
  /** True when `shared` is the guest_memfd. */
  readonly inPlace: boolean;
  /** Adds a slot binding `[offset, +size)` of the guest_memfd at `gpa`, shared through `shared` at the same offset. */
  slot(gpa: number | bigint, size: number, offset?: number): MemorySlot;
}

export function guestRam(vm: Vm, size: number): GuestRam {
  const flags = BigInt(vm.checkExtension(Cap.GuestMemfdFlags));
  const inPlace = (flags & 3n) === 3n;
  const gmem = vm.createGuestMemfd({ size, mmap: inPlace, initShared: inPlace });
  const shared: MemoryFile = inPlace ? gmem : Memfd.create('guest-ram', { size });
  return {
    gmem,
    shared,
    inPlace,
    slot: (gpa, slotSize, offset = 0) => {
      const slot = vm.addMemorySlot({ guestPhysAddr: gpa, size: slotSize, guestMemfd: { file: gmem, offset }, userspace: shared, userspaceOffset: offset });
      if (!inPlace) shared[Symbol.dispose]();
      return slot;
    },
  };
}

/** A guest_memfd of `size` bytes, mappable and initially shared where the VM offers both. */
export function gmemOf(vm: Vm, size: number): GuestMemfd {
  const inPlace = (BigInt(vm.checkExtension(Cap.GuestMemfdFlags)) & 3n) === 3n;
  return vm.createGuestMemfd({ size, mmap: inPlace, initShared: inPlace });
}

