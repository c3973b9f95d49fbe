/**
 * Error types. Kernel failures are {@link KvmError}, shaped like Node's SystemError;
 * bad arguments are `TypeError`/`RangeError` with an `ERR_*` code, thrown before any
 * syscall; a missing capability is {@link UnsupportedError}.
 */
import { getSystemErrorMap } from 'node:util';

const errnoTable = getSystemErrorMap();
// libuv names errno 95 ENOTSUP ("...on socket"); for files and ioctls Linux means
// EOPNOTSUPP, the name the kernel's documentation uses.
errnoTable.set(-95, ['EOPNOTSUPP', 'operation not supported']);

/** Options describing a failed kernel call. */
export interface KvmErrorOptions {
  /** errno number reported by the kernel. */
  errno: number;
  /** The syscall that failed: `'ioctl'`, `'fallocate'`, `'mmap'`, ... */
  syscall: string;
  /** For ioctls: the request name, e.g. `'KVM_SET_USER_MEMORY_REGION2'`. */
  ioctl?: string | undefined;
  /** What the library asked the kernel for, in words. */
  operation?: string | undefined;
  /** Why the kernel refuses it, where the rule is known. */
  reason?: string | undefined;
}

/**
 * A kernel call failed. `code` is the errno name (`'EINVAL'`), `errno` its number,
 * `syscall` the system call and `ioctl` the request name where one applies.
 *
 * @example
 * try { vm.setUserMemoryRegion2(raw); } catch (e) {
 *   if (e instanceof KvmError && e.code === 'EEXIST') { ... }
 * }
 */
/** Marks KvmErrors across copies of this module (the addon is shared by every copy in a process). */
const KVM_ERROR = Symbol.for('guest-memfd.KvmError');

export class KvmError extends Error {
  /**
   * `instanceof KvmError` holds for a KvmError made by any copy of this library in
   * the process: the native addon is loaded once and builds its errors with one of them.
   */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return value !== null && typeof value === 'object' && (value as Record<symbol, unknown>)[KVM_ERROR] === true;
  }

  /** errno name, e.g. `'EINVAL'`. */
  readonly code: string;
  /** errno number, e.g. `22`. */
  readonly errno: number;
  /** The failing system call. */
  readonly syscall: string;
  /** The ioctl request name, when the syscall is `ioctl`. */
  readonly ioctl: string | undefined;
  /** The operation that was asked for, if known. */
  readonly operation: string | undefined;
  /** For batch calls: how many items the kernel applied before this failure. */
  applied?: number;

  /** Builds the error and its message from the errno, the call and what was asked. */
  constructor(options: KvmErrorOptions) {
    const [name, description] = errnoTable.get(-options.errno) ?? [`E${options.errno}`, 'unknown error'];
    const call = options.ioctl ?? options.syscall;
    const head = options.operation ? `${options.operation}: ` : '';
    const why = options.reason ? `: ${options.reason}` : '';
    super(`${head}${call} failed with ${name} (${description})${why}`);
    this.name = 'KvmError';
    Object.defineProperty(this, KVM_ERROR, { value: true });
    this.code = name;
    this.errno = options.errno;
    this.syscall = options.syscall;
    this.ioctl = options.ioctl;
    this.operation = options.operation;
  }
}

/**
 * Re-issues a native {@link KvmError} with what was asked and, per errno, why the
 * kernel refuses it. Other errors pass through unchanged.
 * @internal
 */
export function explain(error: unknown, operation: string, reasons: Partial<Record<string, string>> = {}): unknown {
  if (!(error instanceof KvmError)) return error;
  const better = new KvmError({
    errno: error.errno,
    syscall: error.syscall,
    ioctl: error.ioctl,
    operation,
    reason: reasons[error.code],
  });
  if (error.applied !== undefined) better.applied = error.applied;
  return better;
}

/**
 * The host's KVM lacks a capability this call needs. Thrown before any other work.
 */
export class UnsupportedError extends Error {
  /** Always `'ERR_UNSUPPORTED'`. */
  readonly code = 'ERR_UNSUPPORTED';
  /** The capability's kernel name, e.g. `'KVM_CAP_MEMORY_ATTRIBUTES'`. */
  readonly capability: string;
  /** What KVM_CHECK_EXTENSION reported for it on this host (or VM). */
  readonly reported: number | bigint;

  /** `needed` names what requires the capability, for the message. */
  constructor(capability: string, reported: number | bigint, needed: string) {
    super(`${needed} needs ${capability}, but this host reported ${capability}=${reported}`);
    this.name = 'UnsupportedError';
    this.capability = capability;
    this.reported = reported;
  }
}

/** A `TypeError` with a Node-style `code`. */
export class ArgumentTypeError extends TypeError {
  /** e.g. `'ERR_INVALID_ARG_TYPE'`. */
  readonly code: string;
  /** A `TypeError` with `message` and the given `code`. */
  constructor(code: string, message: string) {
    super(message);
    this.name = 'TypeError';
    this.code = code;
  }
}

/** A `RangeError` with a Node-style `code`. */
export class ArgumentRangeError extends RangeError {
  /** e.g. `'ERR_OUT_OF_RANGE'`, `'ERR_UNALIGNED'`. */
  readonly code: string;
  /** A `RangeError` with `message` and the given `code`. */
  constructor(code: string, message: string) {
    super(message);
    this.name = 'RangeError';
    this.code = code;
  }
}

/**
 * An operation the library refuses because of the state of its objects (a file in
 * use by a slot, a view pinned by a slot, overlapping slots...). `code` names the rule.
 */
export class StateError extends Error {
  /** e.g. `'ERR_CLOSED'`, `'ERR_IN_USE'`, `'ERR_SLOT_OVERLAP'`. */
  readonly code: string;
  /** A state error with `message` and the rule `code` names. */
  constructor(code: string, message: string) {
    super(message);
    this.name = 'StateError';
    this.code = code;
  }
}

/** Use of an object after `close()`. @internal */
export function closedError(what: string, operation: string): StateError {
  return new StateError('ERR_CLOSED', `${operation}: ${what} is closed`);
}

/**
 * A call did not finish within its `timeoutMs`. For a vCPU run: the vCPU was kicked
 * (the guest stopped where it was, resumable) and the call rejected; the vCPU stays
 * usable. For an eventfd wait: the wait was cancelled, the counter left as it was.
 */
export class TimeoutError extends Error {
  /** Always `'ERR_TIMEOUT'`. */
  readonly code = 'ERR_TIMEOUT';
  /** The time limit that expired, in milliseconds. */
  readonly timeoutMs: number;
  /**
   * `operation` names the call, e.g. `'vcpu.run'`; `what` says what did not happen
   * in time and what became of it (default: the vCPU case).
   */
  constructor(operation: string, timeoutMs: number, what?: string) {
    super(`${operation}: ${what ?? `the guest did not exit within timeoutMs ${timeoutMs}; the vCPU was kicked and can run again`}`);
    this.name = 'TimeoutError';
    this.timeoutMs = timeoutMs;
  }
}

/** A vCPU run stopped by its AbortSignal (Node's `AbortError` shape: code `'ABORT_ERR'`, the signal's reason as `cause`). */
export class AbortError extends Error {
  /** Always `'ABORT_ERR'`, as Node's own abortable APIs use. */
  readonly code = 'ABORT_ERR';
  /** `operation` names the call; `reason` is the signal's reason. */
  constructor(operation: string, reason: unknown) {
    super(`${operation}: aborted${reason instanceof Error ? `: ${reason.message}` : reason !== undefined ? `: ${String(reason)}` : ''}`, { cause: reason });
    this.name = 'AbortError';
  }
}
