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

/** @internal */
export interface NativeBinding {
  readonly pageSize: number;
  setErrorFactory(factory: (errno: number, syscall: string, ioctl: string | undefined) => Error): void;

  close(fd: number): boolean;
  fallocate(fd: number, mode: number, offset: number | bigint, length: number | bigint): void;
  fallocateMany(fd: number, mode: number, pairs: BigUint64Array): number;
  ftruncate(fd: number, size: number | bigint): void;
  fstat(fd: number, out: Float64Array): void;
  isCloexec(fd: number): boolean;
  ownedFdCount(): number;

  kvmOpen(path: string): number;
  getApiVersion(fd: number): number;
  checkExtension(fd: number, cap: number): number;
  getVcpuMmapSize(fd: number): number;
  createVm(fd: number, type: number): number;
  getSupportedCpuid(kvmFd: number): Uint32Array;

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
