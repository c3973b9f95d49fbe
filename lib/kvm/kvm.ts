/**
 * The KVM system fd (/dev/kvm).
 */
import { Cap, capName, decodeCapabilities, VmType, type Capabilities, type VmTypeName } from '../core/caps';
import { ArgumentRangeError, ArgumentTypeError, closedError, explain, UnsupportedError } from '../core/errors';
import { native } from '../native';
import { closed, track, type FdCell } from '../core/ownership';
import { options as readOptions, oneOf, uint, given } from '../core/validate';
import { decodeCpuid, type CpuidEntry } from './cpuid';
import { checkMsrIndices, msrEntries, MsrError, type MsrEntry } from './msr';
import { Vm } from './vm';
import { guardReceivers } from '../core/receiver';

/** The path `Kvm.open()` uses: `$GMEM_KVM_PATH`, else `/dev/kvm`. */
export function defaultKvmPath(): string {
  return process.env['GMEM_KVM_PATH'] || '/dev/kvm';
}

/** Options of `kvm.createVm`. */
export interface CreateVmOptions {
  /** VM type (default `'default'`); must be in KVM_CAP_VM_TYPES. */
  type?: VmTypeName;
}

/**
 * An open /dev/kvm (KVM_GET_API_VERSION, KVM_CHECK_EXTENSION, KVM_CREATE_VM,
 * KVM_GET_SUPPORTED_CPUID, KVM_GET_MSR_INDEX_LIST).
 * Closing it closes every VM it created.
 *
 * @example
 * using kvm = Kvm.open();
 * if (kvm.checkExtension(Cap.GuestMemfd)) { using vm = kvm.createVm(); }
 */
export class Kvm {
  static {
    guardReceivers(this, (o) => #fd in o, 'kvm', 'Kvm.open()');
  }
  /** The path that was opened. */
  readonly path: string;
  /** KVM_GET_API_VERSION (12 on every kernel since 2.6.22). */
  readonly apiVersion: number;
  #fd: number;
  #fdCell: FdCell;
  readonly #vms = new Set<Vm>();
  #vcpuMmapSize = 0;
  #supportedCpuid: Uint32Array | undefined;
  #msrIndexList: Uint32Array | undefined;
  #msrFeatureIndexList: Uint32Array | undefined;

  private constructor(path: string, fd: number, apiVersion: number) {
    this.path = path;
    this.#fd = fd;
    this.apiVersion = apiVersion;
    this.#fdCell = track(this, fd);
  }

  /**
   * Opens the KVM device read-write and close-on-exec.
   * @param path default `$GMEM_KVM_PATH` or `/dev/kvm`.
   */
  static open(path: string = defaultKvmPath()): Kvm {
    if (typeof path !== 'string')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `Kvm.open: path must be a string, got ${path === null ? 'null' : typeof path}`);
    if (path.length === 0 || path.includes('\0'))
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `Kvm.open: path must be a non-empty string without NUL characters`);
    let fd: number;
    try {
      fd = native.kvmOpen(path);
    } catch (e) {
      throw explain(e, `Kvm.open('${path}')`, {
        ENOENT:
          path === '/dev/kvm'
            ? 'no KVM device here: load the kvm module (modprobe kvm_intel or kvm_amd) or enable virtualization'
            : `no such file (the KVM device is usually /dev/kvm)`,
        EACCES: 'add this user to the group that owns the device (usually kvm), or run as root',
        EPERM: 'add this user to the group that owns the device (usually kvm), or run as root',
      });
    }
    try {
      return new Kvm(path, fd, native.getApiVersion(fd));
    } catch (e) {
      native.close(fd);
      throw explain(e, `Kvm.open('${path}'): KVM_GET_API_VERSION`, { ENOTTY: `${path} is not a KVM device` });
    }
  }

  /** The system fd. Throws ERR_CLOSED after close. */
  get fd(): number {
    return this.#open('kvm.fd');
  }

  #open(op: string): number {
    if (this.#fd < 0) throw closedError('the KVM device', op);
    return this.#fd;
  }

  /** True after `close()`. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /**
   * KVM_CHECK_EXTENSION on the system fd: 0 when absent, otherwise the capability's
   * value. Per-VM answers can differ: prefer `vm.checkExtension`.
   */
  checkExtension(cap: number): number {
    const c = uint(cap, 'kvm.checkExtension', 'cap', 0xffffffff);
    return native.checkExtension(this.#open('kvm.checkExtension'), c);
  }

  /** Every guest-memory related capability of this host, decoded. */
  capabilities(): Capabilities {
    const fd = this.#open('kvm.capabilities');
    return decodeCapabilities((cap) => native.checkExtension(fd, cap));
  }

  /**
   * KVM_GET_SUPPORTED_CPUID: every CPUID leaf KVM can offer a guest on this host, as
   * plain entries (a fresh copy per call; the kernel is asked once).
   *
   * @example
   * const table = kvm.getSupportedCpuid();
   * vcpu.setCpuid(withCpuidLeaf(table, 0x40000000, 0, { eax: 0x40000001 }));
   */
  getSupportedCpuid(): CpuidEntry[] {
    const fd = this.#open('kvm.getSupportedCpuid');
    if (!this.#supportedCpuid) {
      try {
        this.#supportedCpuid = native.getSupportedCpuid(fd);
      } catch (e) {
        throw explain(e, 'kvm.getSupportedCpuid', { ENOTTY: 'this KVM has no CPUID support (not x86)' });
      }
    }
    return decodeCpuid(this.#supportedCpuid);
  }

  /**
   * KVM_GET_MSR_INDEX_LIST: the MSRs `vcpu.getMsrs` / `vcpu.setMsrs` can transfer on
   * this host (a fresh copy per call; the kernel is asked once).
   *
   * @example
   * kvm.msrIndexList().includes(Msr.SysenterCs);   // true
   */
  msrIndexList(): number[] {
    const fd = this.fd;
    if (!this.#msrIndexList) {
      try {
        this.#msrIndexList = native.getMsrIndexList(fd);
      } catch (e) {
        throw explain(e, 'kvm.msrIndexList', { ENOTTY: 'this KVM has no MSRs (not x86)' });
      }
    }
    return Array.from(this.#msrIndexList);
  }

  /**
   * KVM_GET_MSR_FEATURE_INDEX_LIST: the feature MSRs (what the host CPU can offer a
   * guest, e.g. IA32_ARCH_CAPABILITIES) that `kvm.getMsrFeatures` reads. Needs
   * KVM_CAP_GET_MSR_FEATURES.
   *
   * @example
   * const features = kvm.getMsrFeatures(kvm.msrFeatureIndexList());
   */
  msrFeatureIndexList(): number[] {
    const fd = this.fd;
    const cap = native.checkExtension(fd, Cap.GetMsrFeatures);
    if (cap <= 0) throw new UnsupportedError(capName(Cap.GetMsrFeatures), cap, 'kvm.msrFeatureIndexList');
    if (!this.#msrFeatureIndexList) {
      try {
        this.#msrFeatureIndexList = native.getMsrFeatureIndexList(fd);
      } catch (e) {
        throw explain(e, 'kvm.msrFeatureIndexList');
      }
    }
    return Array.from(this.#msrFeatureIndexList);
  }

  /**
   * KVM_GET_MSRS on the system fd: the values of feature MSRs (those
   * `msrFeatureIndexList` lists), in order. KVM stops at the first it cannot read:
   * that is an {@link MsrError} naming it, with the values read before it. Needs
   * KVM_CAP_GET_MSR_FEATURES.
   *
   * @example
   * const [arch] = kvm.getMsrFeatures([0x10a]);   // IA32_ARCH_CAPABILITIES
   */
  getMsrFeatures(indices: readonly number[]): MsrEntry[] {
    const op = 'kvm.getMsrFeatures';
    const list = checkMsrIndices(op, indices);
    const fd = this.fd;
    const cap = native.checkExtension(fd, Cap.GetMsrFeatures);
    if (cap <= 0) throw new UnsupportedError(capName(Cap.GetMsrFeatures), cap, op);
    const data = new BigUint64Array(list.length);
    let n: number;
    try {
      n = native.getMsrFeatures(fd, list, data);
    } catch (e) {
      throw explain(e, `${op}(${list.length} MSRs)`);
    }
    const entries = msrEntries(list, data, n);
    if (n < list.length) throw new MsrError(op, 'read', list.length, entries, list[n]!);
    return entries;
  }

  /** KVM_GET_VCPU_MMAP_SIZE (cached). @internal */
  vcpuMmapSize(): number {
    if (this.#vcpuMmapSize === 0) this.#vcpuMmapSize = native.getVcpuMmapSize(this.#open('kvm.vcpuMmapSize'));
    return this.#vcpuMmapSize;
  }

  /**
   * KVM_CREATE_VM. The type must be one KVM_CAP_VM_TYPES lists; otherwise an
   * {@link UnsupportedError} says what this host offers.
   */
  createVm(options?: CreateVmOptions): Vm {
    const op = 'kvm.createVm';
    const fd = this.#open(op);
    const o = readOptions<CreateVmOptions>(options, op);
    const type = oneOf(given(o.type, 'default'), Object.keys(VmType) as VmTypeName[], op, 'options.type');
    const number = VmType[type];
    if (number !== 0) {
      const types = native.checkExtension(fd, Cap.VmTypes);
      if (((types >> number) & 1) === 0) {
        const offered = (Object.keys(VmType) as VmTypeName[]).filter((t) => ((types || 1) >> VmType[t]) & 1);
        const error = new UnsupportedError(capName(Cap.VmTypes), types, `a '${type}' VM (type ${number})`);
        error.message += ` (offered: ${offered.join(', ')})`;
        throw error;
      }
    }
    let vmFd: number;
    try {
      vmFd = native.createVm(fd, number);
    } catch (e) {
      throw explain(e, `${op}({ type: '${type}' })`, {
        EINVAL: 'the kernel does not accept this VM type',
        ENOMEM: 'out of memory',
      });
    }
    const vm = Vm.create(this, vmFd, type);
    this.#vms.add(vm);
    return vm;
  }

  /** @internal */
  forgetVm(vm: Vm): void {
    this.#vms.delete(vm);
  }

  /**
   * Closes every VM this device created, then the device fd. Idempotent. Every VM is
   * attempted; failures come back together as an AggregateError.
   */
  close(): void {
    if (this.#fd < 0) return;
    const errors: unknown[] = [];
    for (const vm of [...this.#vms])
      try {
        vm.close();
      } catch (e) {
        errors.push(e);
      }
    closed(this.#fdCell);
    native.close(this.#fd);
    this.#fd = -1;
    if (errors.length)
      throw Object.assign(new AggregateError(errors, `kvm.close: the device is closed, but ${errors.length} VM(s) did not close cleanly`), {
        code: 'ERR_CLOSE_INCOMPLETE',
      });
  }

  /** Same as `close()`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
