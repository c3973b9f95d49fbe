/**
 * KVM_SET_GUEST_DEBUG arguments (struct kvm_guest_debug, x86): the KVM_GUESTDBG_*
 * control bits and the debug registers for hardware breakpoints, built from named
 * options.
 */
import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import { bool, hex, options as readOptions, u64 } from '../core/validate';

/** `KVM_GUESTDBG_*` control bits (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h). */
export const GuestDebugFlag = {
  /** KVM_GUESTDBG_ENABLE */
  Enable: 0x1,
  /** KVM_GUESTDBG_SINGLESTEP */
  SingleStep: 0x2,
  /** KVM_GUESTDBG_USE_SW_BP: `int3` exits to userspace instead of reaching the guest. */
  UseSwBp: 0x10000,
  /** KVM_GUESTDBG_USE_HW_BP: the debug registers given are the host's breakpoints. */
  UseHwBp: 0x20000,
} as const;

/** What a hardware breakpoint watches (DR7 R/W bits): instruction fetch, data writes, or data reads and writes. */
export type BreakpointType = 'exec' | 'write' | 'rw';

/** One hardware breakpoint (one of DR0..DR3). */
export interface HardwareBreakpoint {
  /** The linear address watched. */
  address: number | bigint;
  /** `'exec'` (the default), `'write'` or `'rw'`. */
  type?: BreakpointType;
  /** Bytes watched: 1, 2, 4 or 8 (default 1; `'exec'` takes 1 only). The address must be aligned to it. */
  length?: 1 | 2 | 4 | 8;
}

/** Options of `vcpu.setGuestDebug`. Nothing enabled turns guest debugging off. */
export interface GuestDebugOptions {
  /** Exit with a `debug` exit after every guest instruction. */
  singleStep?: boolean;
  /** Turn guest `int3` instructions into `debug` exits (exception 3). */
  softwareBreakpoints?: boolean;
  /** Up to four hardware breakpoints (DR0..DR3); a hit is a `debug` exit (exception 1). */
  hardwareBreakpoints?: readonly HardwareBreakpoint[];
}

const RW_BITS: Record<BreakpointType, bigint> = { exec: 0n, write: 1n, rw: 3n };
const LEN_BITS: Record<number, bigint> = { 1: 0n, 2: 1n, 4: 3n, 8: 2n };

/** The control word and debugreg[8] for KVM_SET_GUEST_DEBUG. @internal */
export function encodeGuestDebug(op: string, options: unknown): { control: number; debugreg: BigUint64Array } {
  if (options === null || typeof options !== 'object' || Array.isArray(options))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options must be an object { singleStep?, softwareBreakpoints?, hardwareBreakpoints? }`);
  const o = readOptions<GuestDebugOptions>(options, op);
  for (const k of Object.keys(o))
    if (!['singleStep', 'softwareBreakpoints', 'hardwareBreakpoints'].includes(k))
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: unknown option '${k}' (singleStep, softwareBreakpoints, hardwareBreakpoints)`);
  const singleStep = bool(o.singleStep, false, op, 'options.singleStep');
  const sw = bool(o.softwareBreakpoints, false, op, 'options.softwareBreakpoints');
  const hw = o.hardwareBreakpoints ?? [];
  if (!Array.isArray(hw)) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.hardwareBreakpoints must be an array`);
  if (hw.length > 4)
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: options.hardwareBreakpoints has ${hw.length} entries; x86 has 4 (DR0..DR3)`);
  const debugreg = new BigUint64Array(8);
  let dr7 = 0n;
  hw.forEach((bp: unknown, i) => {
    const at = `options.hardwareBreakpoints[${i}]`;
    if (bp === null || typeof bp !== 'object') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: ${at} must be an object { address, type?, length? }`);
    const b = bp as HardwareBreakpoint;
    const address = u64(b.address, op, `${at}.address`);
    const type = b.type ?? 'exec';
    if (typeof type !== 'string' || !(type in RW_BITS))
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: ${at}.type must be 'exec', 'write' or 'rw', got ${String(type)}`);
    const length = b.length ?? 1;
    if (typeof length !== 'number' || !(length in LEN_BITS))
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: ${at}.length must be 1, 2, 4 or 8, got ${String(length)}`);
    if (type === 'exec' && length !== 1)
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: ${at}: an 'exec' breakpoint watches one instruction (length 1), got length ${length}`);
    if (address % BigInt(length) !== 0n)
      throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: ${at}.address ${hex(address)} is not aligned to its length ${length} (the CPU ignores the low bits)`);
    debugreg[i] = address;
    const n = BigInt(i);
    // G<n> (global enable), R/W<n>, LEN<n>: what QEMU's gdbstub sets.
    dr7 |= (2n << (n * 2n)) | (RW_BITS[type as BreakpointType]! << (16n + n * 4n)) | (LEN_BITS[length]! << (18n + n * 4n));
  });
  debugreg[7] = dr7;
  let control = 0;
  if (singleStep) control |= GuestDebugFlag.SingleStep;
  if (sw) control |= GuestDebugFlag.UseSwBp;
  if (hw.length) control |= GuestDebugFlag.UseHwBp;
  if (control) control |= GuestDebugFlag.Enable;
  return { control, debugreg };
}
