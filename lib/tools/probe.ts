/**
 * `gmem probe`: what this host's KVM offers for guest memory.
 */
import { release } from 'node:os';
import type { Capabilities } from '../core/caps';
import { KvmError } from '../core/errors';
import { Kvm } from '../kvm/kvm';
import { probeGuestMemfdMapping, type GuestMemfdMappingFeatures } from '../memory/guest-memfd-probe';
import type { VmTypeName } from '../core/caps';
import { renderTable } from './table';

/** The probe result: system-wide and per default VM answers. */
export interface ProbeReport {
  /** The device path that was opened. */
  readonly path: string;
  /** KVM_GET_API_VERSION. */
  readonly apiVersion: number;
  /** Kernel release (uname -r). */
  readonly kernel: string;
  /** Answers of the system fd. */
  readonly system: Capabilities;
  /** Answers of a default-type VM (they can differ from the system's). */
  readonly vm: Capabilities;
  /**
   * Per VM type the host offers: whether a guest_memfd mapping takes a NUMA policy
   * and registers with userfaultfd, found by trying on a small guest_memfd.
   */
  readonly guestMemfdMapping: readonly GuestMemfdMappingFeatures[];
}

/**
 * Opens KVM and collects the guest-memory capabilities of the host and of a default
 * VM, then tries a guest_memfd mapping of each VM type the host offers.
 */
export function probe(path?: string): ProbeReport {
  using kvm = Kvm.open(path);
  using vm = kvm.createVm();
  const system = kvm.capabilities();
  const guestMemfdMapping: GuestMemfdMappingFeatures[] = [];
  for (const type of system.vmTypes.length ? system.vmTypes : ['default']) {
    let typed;
    try {
      typed = kvm.createVm({ type: type as VmTypeName });
    } catch (e) {
      const no = { supported: false, detail: `cannot create a '${type}' VM: ${e instanceof Error ? e.message : String(e)}` };
      guestMemfdMapping.push({ vmType: type, mappable: false, mempolicy: no, userfaultfdMissing: no, userfaultfdMinor: no });
      continue;
    }
    try {
      guestMemfdMapping.push(probeGuestMemfdMapping(typed));
    } finally {
      typed.close();
    }
  }
  return {
    path: kvm.path,
    apiVersion: kvm.apiVersion,
    kernel: release(),
    system,
    vm: vm.capabilities(),
    guestMemfdMapping,
  };
}

function show(c: Capabilities): Array<[string, string]> {
  const yes = (b: boolean) => (b ? 'yes' : 'no');
  const list = (names: readonly string[], raw: bigint) => `${names.length ? names.join(', ') : 'none'} (${raw})`;
  return [
    ['KVM_CAP_USER_MEMORY2', yes(c.userMemory2)],
    ['KVM_CAP_GUEST_MEMFD', yes(c.guestMemfd)],
    ['KVM_CAP_GUEST_MEMFD_FLAGS', list(c.guestMemfdFlags.names, c.guestMemfdFlags.raw)],
    ['KVM_CAP_MEMORY_ATTRIBUTES', list(c.memoryAttributes.names, c.memoryAttributes.raw)],
    ['KVM_CAP_VM_TYPES', c.vmTypes.join(', ') || 'none'],
    ['KVM_CAP_PRE_FAULT_MEMORY', yes(c.preFaultMemory)],
    ['KVM_CAP_MEMORY_FAULT_INFO', yes(c.memoryFaultInfo)],
    ['KVM_CAP_NR_MEMSLOTS', String(c.nrMemslots)],
    ['KVM_CAP_READONLY_MEM', yes(c.readonlyMem)],
    ['KVM_CAP_MULTI_ADDRESS_SPACE', String(c.addressSpaces)],
    ['KVM_CAP_EXIT_HYPERCALL', list(c.exitHypercall.names, c.exitHypercall.raw)],
  ];
}

/** The probe as a readable table. */
export function formatProbe(report: ProbeReport): string {
  const sys = show(report.system);
  const vm = show(report.vm);
  const rows = sys.map(([name, value], i) => [name, value, vm[i]![1]] as const);
  const conversion = report.vm.memoryAttributes.names.includes('private')
    ? 'shared/private conversion: available'
    : 'shared/private conversion: not available (KVM_CAP_MEMORY_ATTRIBUTES lacks PRIVATE)';
  const answer = (f: { supported: boolean }) => (f.supported ? 'yes' : 'no');
  const mapping = renderTable(
    ['VM type', 'mappable', 'NUMA policy', 'uffd missing', 'uffd minor'],
    report.guestMemfdMapping.map((m) => [m.vmType, m.mappable ? 'yes' : 'no', answer(m.mempolicy), answer(m.userfaultfdMissing), answer(m.userfaultfdMinor)]),
  );
  const details = report.guestMemfdMapping.flatMap((m) =>
    m.mappable
      ? [`  ${m.vmType}: NUMA policy: ${m.mempolicy.detail}`, `  ${m.vmType}: userfaultfd: ${m.userfaultfdMissing.detail}; ${m.userfaultfdMinor.detail}`]
      : [`  ${m.vmType}: ${m.mempolicy.detail}`],
  );
  return [
    `KVM at ${report.path}: API version ${report.apiVersion}, kernel ${report.kernel}`,
    '',
    renderTable(['capability', 'system', 'default VM'], rows),
    '',
    conversion,
    '',
    'guest_memfd mappings (tried on a small file per VM type):',
    mapping,
    ...details,
  ].join('\n');
}

/** JSON form of the probe (bigints as strings). */
export function probeJson(report: ProbeReport): string {
  return JSON.stringify(report, (_, v) => (typeof v === 'bigint' ? v.toString() : v), 2);
}

/** Turns a failure to open KVM into advice for a person. */
export function explainProbeFailure(error: unknown, path: string): string {
  if (error instanceof KvmError) {
    switch (error.code) {
      case 'ENOENT':
        return path === '/dev/kvm'
          ? `${path} does not exist: this machine has no KVM. Enable virtualization in the firmware or the hypervisor (nested virtualization), then load kvm_intel or kvm_amd (modprobe).`
          : `${path} does not exist (the default KVM device is /dev/kvm).`;
      case 'EACCES':
      case 'EPERM':
        return `${path} exists but this user may not open it. Add the user to the group that owns it (usually kvm: sudo usermod -aG kvm $USER, then log in again) or run as root.`;
      case 'ENOTTY':
        return `${path} is not a KVM device.`;
      default:
        return `cannot use ${path}: ${error.message}`;
    }
  }
  return `cannot use ${path}: ${error instanceof Error ? error.message : String(error)}`;
}

/** The JSON form of a probe failure, for `gmem probe --json`. */
export function probeFailureJson(error: unknown, path: string): string {
  const e = error as { code?: unknown; errno?: unknown; message?: unknown };
  return JSON.stringify(
    {
      path,
      error: {
        code: typeof e?.code === 'string' ? e.code : undefined,
        errno: typeof e?.errno === 'number' ? e.errno : undefined,
        message: error instanceof Error ? error.message : String(error),
        advice: explainProbeFailure(error, path),
      },
    },
    null,
    2,
  );
}
