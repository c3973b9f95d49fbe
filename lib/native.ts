/**
 * The only module that loads the compiled addon. Its shape is declared once here,
 * so no `any` leaks into the rest of the library.
 *
 * The binary is found by node-gyp-build: a prebuild in `prebuilds/linux-x64` when
 * present, otherwise the `build/Release` output of `npm install`'s source build.
 * @internal
 */
import * as path from 'node:path';
import { KvmError } from './core/errors';

/** `[ArrayBuffer, mapping id, address]` as returned by the mapping functions. @internal */
export type NativeMapping = [ArrayBuffer, number, bigint];

/** The runner object that owns a vCPU's KVM_RUN thread. @internal */
export interface NativeVcpuRunner {
  /** errno when the exit came within the spin window, else undefined (callback later). */
  run(): number | undefined;
  setSpin(callerNs: number, threadNs: number): void;
  /** errno, or `runTimedOut` once `timeoutNs` (0: none) passed. */
  runSync(timeoutNs?: number): number;
  /** KVM_RUN with immediate_exit: finishes a pending I/O/MMIO/MSR/hypercall exit. Returns errno. */
  completePending(): number;
  kick(): boolean;
  close(): void;
}

/** A one-shot wait for an fd to become readable, on the event loop (libuv poll). @internal */
export interface NativeFdPoll {
  /** Cancels a wait that has not fired (its callback is then never called). True if it cancelled one. */
  close(): boolean;
}

/** @internal */
export interface NativeBinding {
  readonly pageSize: number;
  /** Sanitizer builds only: LeakSanitizer's check now (reports go to its log); 1 if it found leaks. */
  sanitizerLeakCheck?(): number;
  setErrorFactory(factory: (errno: number, syscall: string, ioctl: string | undefined) => Error): void;

  close(fd: number): boolean;
  fallocate(fd: number, mode: number, offset: number | bigint, length: number | bigint): void;
  fallocateMany(fd: number, mode: number, pairs: BigUint64Array): number;
  ftruncate(fd: number, size: number | bigint): void;
  fstat(fd: number, out: Float64Array): void;
  isCloexec(fd: number): boolean;
  ownedFdCount(): number;
  /** Whether the addon holds `fd` (for tests of the collector's safety net). */
  ownsFd(fd: number): boolean;

  kvmOpen(path: string): number;
  getApiVersion(fd: number): number;
  checkExtension(fd: number, cap: number): number;
  getVcpuMmapSize(fd: number): number;
  createVm(fd: number, type: number): number;
  getSupportedCpuid(kvmFd: number): Uint32Array;
  getMsrIndexList(kvmFd: number): Uint32Array;
  getMsrFeatureIndexList(kvmFd: number): Uint32Array;
  /** KVM_GET_MSRS on the system fd; fills `data`, returns the entries read. */
  getMsrFeatures(kvmFd: number, indices: Uint32Array, data: BigUint64Array): number;

  setUserMemoryRegion2(
    vmFd: number, slot: number, flags: number, guestPhysAddr: number | bigint, memorySize: number | bigint,
    userspaceAddr: number | bigint, guestMemfdOffset: number | bigint, guestMemfd: number,
  ): void;
  setUserMemoryRegion(
    vmFd: number, slot: number, flags: number, guestPhysAddr: number | bigint, memorySize: number | bigint,
    userspaceAddr: number | bigint,
  ): void;
  setMemoryAttributes(vmFd: number, address: number | bigint, size: number | bigint, attributes: number | bigint): void;
  setMemoryAttributesMany(vmFd: number, triples: BigUint64Array): number;
  getDirtyLog(vmFd: number, slot: number, bitmap: BigUint64Array): void;
  createVcpu(vmFd: number, id: number): number;
  enableCap(fd: number, cap: number, flags: number, a0: bigint, a1: bigint, a2: bigint, a3: bigint): void;
  createIrqchip(vmFd: number): void;
  createPit2(vmFd: number, flags: number): void;
  /** KVM_IRQ_LINE_STATUS (returns the status) with `withStatus`, else KVM_IRQ_LINE (undefined). */
  irqLine(vmFd: number, irq: number, level: number, withStatus: boolean): number | undefined;
  setTssAddr(vmFd: number, addr: bigint): void;
  setIdentityMapAddr(vmFd: number, addr: bigint): void;
  irqfd(vmFd: number, eventFd: number, gsi: number, flags: number, resampleFd: number): void;
  ioeventfd(vmFd: number, datamatch: bigint, addr: bigint, len: number, eventFd: number, flags: number): void;

  createGuestMemfd(vmFd: number, size: number | bigint, flags: number | bigint): number;

  memfdCreate(name: string, flags: number): number;
  memfdSecret(): number;
  addSeals(fd: number, seals: number): void;
  getSeals(fd: number): number;

  mapFile(fd: number, offset: number | bigint, length: number | bigint, writable: boolean): NativeMapping;
  mapAnonymous(length: number | bigint): NativeMapping;
  unmap(id: number): boolean;
  madvise(address: bigint, length: number | bigint, advice: number): void;
  mappingCount(): number;
  reservedMappingCount(): number;

  readonly runTimedOut: number;
  VcpuRunner: new (fd: number, onExit: (errno: number) => void) => NativeVcpuRunner;
  getRegs(fd: number, out: Uint8Array): void;
  setRegs(fd: number, regs: Uint8Array): void;
  getSregs(fd: number, out: Uint8Array): void;
  setSregs(fd: number, sregs: Uint8Array): void;
  getFpu(fd: number, out: Uint8Array): void;
  setFpu(fd: number, fpu: Uint8Array): void;
  preFaultMemory(fd: number, gpa: number | bigint, size: number | bigint): void;
  getCpuid(vcpuFd: number): Uint32Array;
  setCpuid(vcpuFd: number, entries: Uint32Array): void;
  /** KVM_GET_MSRS; fills `data`, returns the entries read. */
  getMsrs(vcpuFd: number, indices: Uint32Array, data: BigUint64Array): number;
  /** KVM_SET_MSRS; returns the entries written. */
  setMsrs(vcpuFd: number, indices: Uint32Array, data: BigUint64Array): number;
  getLapic(vcpuFd: number, out: Uint8Array): void;
  setLapic(vcpuFd: number, state: Uint8Array): void;
  getMpState(vcpuFd: number): number;
  setMpState(vcpuFd: number, state: number): void;
  setGuestDebug(vcpuFd: number, control: number, debugreg: BigUint64Array): void;

  eventfdCreate(initval: number, flags: number): number;
  /** The counter (1 in semaphore mode), 0n when it is zero; never blocks. */
  eventfdRead(fd: number, blocking: boolean): bigint;
  /** Adds to the counter; never blocks (EAGAIN when it would overflow). */
  eventfdWrite(fd: number, value: bigint, blocking: boolean): void;
  FdPoll: new (fd: number, onReadable: (status: number) => void) => NativeFdPoll;

  mbind(address: bigint, length: number | bigint, mode: number, nodemask: BigUint64Array, flags: number): void;
  /** get_mempolicy(MPOL_F_ADDR) of `address`: fills the mask, returns the mode. */
  addressPolicy(address: bigint, mask: BigUint64Array): number;
  /** The policy a fresh mapping of `fd` at `offset` sees: fills the mask, returns the mode. */
  filePolicy(fd: number, offset: number | bigint, mask: BigUint64Array): number;
  /** move_pages(2) status of `pages` pages from `address`: node or negative errno. */
  pageNodes(address: bigint, pages: number, status: Int32Array): void;

  /** errno of UFFDIO_REGISTER of the range in `mode` (0: it registered). */
  uffdRegisterErrno(address: bigint, length: number | bigint, mode: number): number;
  readonly uffdModeMissing: number;
  readonly uffdModeMinor: number;
}

const load = require('node-gyp-build') as (dir: string) => unknown;

function loadAddon(): NativeBinding {
  // For sanitizer builds and the like: an explicit addon file.
  const explicit = process.env['GMEM_ADDON_PATH'];
  if (explicit) return require(path.resolve(explicit)) as NativeBinding;
  try {
    return load(path.join(__dirname, '..')) as NativeBinding;
  } catch (e) {
    const why = e instanceof Error ? e.message.split('\n')[0] : String(e);
    throw Object.assign(
      new Error(
        `guest-memfd: no compiled addon for Node ${process.versions.node} (${process.platform}-${process.arch}, ABI ${process.versions.modules}) was found (${why}). Run \`npm rebuild guest-memfd\` to build it (needs Python 3, make and a C++17 compiler), or install a release that ships prebuilds for this platform.`,
        { cause: e },
      ),
      { code: 'ERR_ADDON_NOT_FOUND' },
    );
  }
}

/** The loaded addon (lib/ and dist/ both sit one level below the package root). @internal */
export const native = loadAddon();

// Native code throws kernel failures as KvmError, built here (code, errno, syscall, ioctl).
native.setErrorFactory((errno, syscall, ioctl) => new KvmError({ errno, syscall, ioctl }));
