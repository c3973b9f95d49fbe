/**
 * What the kernel lets a mapping of a guest_memfd do beyond plain loads and stores:
 * take a NUMA memory policy, and register with userfaultfd (missing and minor
 * faults). Found by trying it on a small guest_memfd of the VM, never from the
 * kernel version.
 */
import { Cap, GuestMemfdFlag } from '../core/caps';
import { ArgumentTypeError, KvmError } from '../core/errors';
import { hex } from '../core/validate';
import { native } from '../native';
import { Vm } from '../kvm/vm';
import { maskNodes, MemoryPolicyMode, modeName, nodeMask, numaNodes } from './numa';

/** One answer of {@link probeGuestMemfdMapping}. */
export interface MappingFeature {
  /** True when the kernel did it. */
  readonly supported: boolean;
  /** What was tried and what the kernel said. */
  readonly detail: string;
}

/** What a mapping of this VM's guest_memfd supports. */
export interface GuestMemfdMappingFeatures {
  /** The VM type asked. */
  readonly vmType: string;
  /** A guest_memfd of this VM can be mmap()ed (GUEST_MEMFD_FLAG_MMAP). Without it nothing below can be tried. */
  readonly mappable: boolean;
  /** mbind(2) on the mapping gives the file a NUMA policy (one a fresh mapping sees). */
  readonly mempolicy: MappingFeature;
  /** UFFDIO_REGISTER with UFFDIO_REGISTER_MODE_MISSING on the mapping. */
  readonly userfaultfdMissing: MappingFeature;
  /** UFFDIO_REGISTER with UFFDIO_REGISTER_MODE_MINOR on the mapping. */
  readonly userfaultfdMinor: MappingFeature;
}

const PROBE_SIZE = 2 * native.pageSize;

function errnoName(errno: number): string {
  return new KvmError({ errno, syscall: 'ioctl' }).code;
}

/**
 * Creates a two-page guest_memfd on `vm` (with GUEST_MEMFD_FLAG_MMAP, and
 * INIT_SHARED where offered), maps it without touching it, and tries on the mapping:
 * mbind(MPOL_BIND) to a node with memory (then asks a second mapping of the file
 * whether it has the policy), and UFFDIO_REGISTER in missing and in minor mode. The
 * file is closed before returning; `vm` is otherwise left as it was.
 *
 * @example
 * const f = probeGuestMemfdMapping(vm);
 * if (!f.mempolicy.supported) console.log(f.mempolicy.detail);
 */
export function probeGuestMemfdMapping(vm: Vm): GuestMemfdMappingFeatures {
  if (!(vm instanceof Vm)) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', 'probeGuestMemfdMapping: vm must be a Vm');
  vm.checkOpen('probeGuestMemfdMapping');
  const none = (detail: string): MappingFeature => ({ supported: false, detail });
  const base = { vmType: vm.type };
  if (vm.checkExtension(Cap.GuestMemfd) <= 0) {
    const no = none('no guest_memfd on this VM type (KVM_CAP_GUEST_MEMFD=0)');
    return { ...base, mappable: false, mempolicy: no, userfaultfdMissing: no, userfaultfdMinor: no };
  }
  const offered = BigInt(vm.checkExtension(Cap.GuestMemfdFlags));
  if ((offered & GuestMemfdFlag.Mmap) === 0n) {
    const no = none(`a guest_memfd of this VM type cannot be mapped (KVM_CAP_GUEST_MEMFD_FLAGS=${hex(offered)} lacks MMAP)`);
    return { ...base, mappable: false, mempolicy: no, userfaultfdMissing: no, userfaultfdMinor: no };
  }
  const file = vm.createGuestMemfdRaw(PROBE_SIZE, offered & (GuestMemfdFlag.Mmap | GuestMemfdFlag.InitShared));
  try {
    // Mapped directly: without INIT_SHARED the pages are private and touching them
    // would fault, but none of the probes touches them.
    const view = file.views.adopt(native.mapFile(file.fd, 0, PROBE_SIZE, true), 0, PROBE_SIZE);
    return {
      ...base,
      mappable: true,
      mempolicy: probePolicy(file.fd, view.address),
      userfaultfdMissing: probeUffd(view.address, native.uffdModeMissing, 'missing'),
      userfaultfdMinor: probeUffd(view.address, native.uffdModeMinor, 'minor'),
    };
  } finally {
    file.close();
  }
}

function probePolicy(fd: number, address: bigint): MappingFeature {
  const node = numaNodes()[0]!;
  try {
    native.mbind(address, PROBE_SIZE, MemoryPolicyMode.bind, nodeMask([node]), 0);
  } catch (e) {
    return { supported: false, detail: `mbind(MPOL_BIND, node ${node}) on the mapping failed with ${(e as KvmError).code ?? String(e)}` };
  }
  const mask = nodeMask();
  let mode: number;
  try {
    mode = native.filePolicy(fd, 0, mask);
  } catch (e) {
    return { supported: false, detail: `mbind succeeded, but reading the file's policy failed with ${(e as KvmError).code ?? String(e)}` };
  }
  const nodes = maskNodes(mask);
  if (mode === MemoryPolicyMode.bind && nodes.length === 1 && nodes[0] === node)
    return { supported: true, detail: `mbind(MPOL_BIND, node ${node}) on the mapping; a fresh mapping of the file reports it` };
  return {
    supported: false,
    detail: `mbind(MPOL_BIND, node ${node}) succeeded, but a fresh mapping of the file reports ${modeName(mode)} [${nodes.join(', ')}]: the policy stays in that one mapping`,
  };
}

function probeUffd(address: bigint, mode: number, name: string): MappingFeature {
  let errno: number;
  try {
    errno = native.uffdRegisterErrno(address, PROBE_SIZE, mode);
  } catch (e) {
    const err = e as KvmError;
    return { supported: false, detail: `${err.ioctl ?? err.syscall ?? 'userfaultfd'} failed with ${err.code ?? String(e)} before registering` };
  }
  if (errno === 0) return { supported: true, detail: `UFFDIO_REGISTER (mode ${name}) on the mapping succeeded` };
  return { supported: false, detail: `UFFDIO_REGISTER (mode ${name}) on the mapping failed with ${errnoName(errno)}` };
}
