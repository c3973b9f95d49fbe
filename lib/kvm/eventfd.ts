/**
 * eventfd(2): a 64-bit counter in the kernel that KVM signals (ioeventfd) or listens
 * to (irqfd). One {@link EventFd} owns one fd.
 */
import { AbortError, ArgumentRangeError, ArgumentTypeError, closedError, explain, KvmError, StateError, TimeoutError } from '../core/errors';
import { closed, track, type FdCell } from '../core/ownership';
import { bool, options as readOptions, u64 } from '../core/validate';
import { native, type NativeFdPoll } from '../native';
import { guardReceivers } from '../core/receiver';

/** eventfd2 flags (include/uapi/linux/eventfd.h). */
const EFD_SEMAPHORE = 1;
const EFD_NONBLOCK = 0o4000;
/** The counter's largest value: a write that would pass it fails (or blocks). */
const COUNTER_MAX = 0xfffffffffffffffen;
/** setTimeout's limit (2^31-1 ms). */
const MAX_TIMEOUT_MS = 0x7fffffff;

/** Options of {@link EventFd.create}. */
export interface EventFdOptions {
  /** The counter's starting value, 0..2^32-1 (eventfd2's `initval` is an unsigned int). Default 0. */
  initialValue?: number | bigint;
  /** EFD_SEMAPHORE: a read takes 1 from the counter instead of all of it. Default false. */
  semaphore?: boolean;
  /**
   * EFD_NONBLOCK on the fd itself. Default true. This object's own calls never block
   * either way; a blocking fd only matters to code given `eventfd.fd` directly.
   */
  nonBlocking?: boolean;
}

/** Options of {@link EventFd.wait}. */
export interface EventFdWaitOptions {
  /** Aborting cancels the wait; it rejects with an {@link AbortError} (code `'ABORT_ERR'`). */
  signal?: AbortSignal;
  /** After this many milliseconds the wait is cancelled and rejects with a {@link TimeoutError}. */
  timeoutMs?: number;
}

/** A VM's use of an eventfd (an irqfd, its resample fd, or an ioeventfd), for messages and bookkeeping. */
export interface EventFdRegistration {
  /** `'irqfd'`, `'irqfd-resample'` or `'ioeventfd'`. */
  readonly kind: 'irqfd' | 'irqfd-resample' | 'ioeventfd';
  /** What it is bound to, e.g. `'GSI 5'` or `'PIO 0x50 (1 byte)'`. */
  readonly description: string;
  /** The VM holding it. */
  readonly vm: object;
}

interface PendingWait {
  resolve(value: bigint): void;
  reject(error: unknown): void;
  poll: NativeFdPoll | undefined;
  cleanup(): void;
}

function waitOptions(op: string, options: unknown): EventFdWaitOptions {
  const o = readOptions<EventFdWaitOptions>(options, op);
  const out: EventFdWaitOptions = {};
  if (o.signal !== undefined) {
    if (!(o.signal instanceof AbortSignal)) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.signal must be an AbortSignal`);
    out.signal = o.signal;
  }
  if (o.timeoutMs !== undefined) {
    if (typeof o.timeoutMs !== 'number' || Number.isNaN(o.timeoutMs))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.timeoutMs must be a number of milliseconds, got ${typeof o.timeoutMs}`);
    if (!(o.timeoutMs > 0) || o.timeoutMs > MAX_TIMEOUT_MS)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: options.timeoutMs ${o.timeoutMs} is outside (0, ${MAX_TIMEOUT_MS}]`);
    out.timeoutMs = o.timeoutMs;
  }
  return out;
}

/**
 * An eventfd (eventfd2 with EFD_CLOEXEC). `write` adds to its counter, `read` takes
 * the counter (never blocking: 0n when it is zero), and `await wait()` resolves with
 * the counter once it becomes non-zero. A wait is watched by the event loop itself
 * (libuv's epoll): it holds no thread and no libuv threadpool worker, and other I/O
 * and timers run meanwhile.
 *
 * Hand it to a VM with `vm.irqfd(eventfd, gsi)` (writing it raises the interrupt) or
 * `vm.ioeventfd({ ..., eventfd })` (a guest write to the address signals it without
 * an exit). While a VM holds it, `close()` is refused with ERR_IN_USE, naming the
 * registrations: deassign them first, or close the VM (which drops them all).
 * `[Symbol.dispose]` instead closes it as soon as the last registration goes.
 *
 * @example
 * using notify = EventFd.create();
 * vm.ioeventfd({ addr: 0x50, len: 1, pio: true, eventfd: notify });
 * const count = await notify.wait();    // the guest wrote port 0x50, count times
 */
export class EventFd {
  static {
    guardReceivers(this, (o) => #fd in o, 'eventfd', 'EventFd.create()');
  }
  /** EFD_SEMAPHORE: reads take 1 at a time. */
  readonly semaphore: boolean;
  /** EFD_NONBLOCK on the fd. */
  readonly nonBlocking: boolean;
  #fd: number;
  #fdCell: FdCell;
  #wait: PendingWait | undefined;
  readonly #registrations = new Set<EventFdRegistration>();
  #closeWhenUnregistered = false;

  private constructor(fd: number, semaphore: boolean, nonBlocking: boolean) {
    this.#fd = fd;
    this.semaphore = semaphore;
    this.nonBlocking = nonBlocking;
    this.#fdCell = track(this, fd);
  }

  /**
   * eventfd2(initialValue, EFD_CLOEXEC [| EFD_SEMAPHORE] [| EFD_NONBLOCK]).
   *
   * @example
   * using efd = EventFd.create({ semaphore: true });
   */
  static create(options?: EventFdOptions): EventFd {
    const op = 'EventFd.create';
    const o = readOptions<EventFdOptions>(options, op);
    const initial = u64(o.initialValue ?? 0, op, 'options.initialValue');
    if (initial > 0xffffffffn)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: options.initialValue ${initial} is above 2^32-1 (eventfd2 takes an unsigned int)`);
    const semaphore = bool(o.semaphore, false, op, 'options.semaphore');
    const nonBlocking = bool(o.nonBlocking, true, op, 'options.nonBlocking');
    let fd: number;
    try {
      fd = native.eventfdCreate(Number(initial), (semaphore ? EFD_SEMAPHORE : 0) | (nonBlocking ? EFD_NONBLOCK : 0));
    } catch (e) {
      throw explain(e, op, { EMFILE: 'this process has no free file descriptor', ENFILE: 'the system has no free file descriptor' });
    }
    return new EventFd(fd, semaphore, nonBlocking);
  }

  /** The fd. Throws ERR_CLOSED after close. */
  get fd(): number {
    if (this.#fd < 0) throw closedError('the eventfd', 'fd');
    return this.#fd;
  }

  /** True after `close()`. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /** True while a `wait()` is pending. */
  get waiting(): boolean {
    return this.#wait !== undefined;
  }

  /** The VMs' uses of this eventfd (irqfds, resample fds, ioeventfds). */
  get registrations(): readonly EventFdRegistration[] {
    return [...this.#registrations];
  }

  #check(op: string): number {
    if (this.#fd < 0) throw closedError('the eventfd', op);
    return this.#fd;
  }

  /**
   * write(2): adds `value` (default 1) to the counter, waking waiters (and, for an
   * irqfd, raising its interrupt). Never blocks: a write that would take the counter
   * past 2^64-2 fails with EAGAIN.
   */
  write(value: number | bigint = 1n): void {
    const op = 'eventfd.write';
    const fd = this.#check(op);
    const v = u64(value, op, 'value');
    if (v > COUNTER_MAX) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: value ${v} is above 2^64-2, the counter's limit`);
    try {
      native.eventfdWrite(fd, v, !this.nonBlocking);
    } catch (e) {
      throw explain(e, `${op}(${v})`, { EAGAIN: 'the counter would pass 2^64-2; read it first' });
    }
  }

  /**
   * read(2) without blocking: the counter (which becomes 0), or 1 in semaphore mode
   * (the counter drops by 1); 0n when the counter is zero.
   */
  read(): bigint {
    return this.#read(this.#check('eventfd.read'));
  }

  #read(fd: number): bigint {
    try {
      return native.eventfdRead(fd, !this.nonBlocking);
    } catch (e) {
      throw explain(e, 'eventfd.read');
    }
  }

  /**
   * Resolves with what `read()` returns once the counter is non-zero (at once if it
   * already is): the counter is consumed. The wait runs on the event loop, holding
   * no thread. With `timeoutMs` or `signal`, the wait is cancelled when the time is
   * up or the signal aborts (rejecting with a {@link TimeoutError} or
   * {@link AbortError}); closing the eventfd rejects it with ERR_CLOSED. One wait at
   * a time (another is refused with ERR_BUSY).
   *
   * @example
   * const n = await efd.wait({ timeoutMs: 5000 });
   */
  wait(options?: EventFdWaitOptions): Promise<bigint> {
    const op = 'eventfd.wait';
    let o: EventFdWaitOptions;
    let fd: number;
    let now: bigint;
    try {
      o = waitOptions(op, options);
      fd = this.#check(op);
      if (this.#wait) throw new StateError('ERR_BUSY', `${op}: a wait on this eventfd is already pending`);
      if (o.signal?.aborted) throw new AbortError(op, o.signal.reason);
      now = this.#read(fd);
    } catch (e) {
      return Promise.reject(e);
    }
    if (now > 0n) return Promise.resolve(now);
    return new Promise<bigint>((resolve, reject) => {
      const pending: PendingWait = { resolve, reject, poll: undefined, cleanup: () => {} };
      const timer = o.timeoutMs !== undefined
        ? setTimeout(() => this.#cancel(pending, new TimeoutError(op, o.timeoutMs!, `the eventfd did not become readable within timeoutMs ${o.timeoutMs}; the wait was cancelled`)), o.timeoutMs)
        : undefined;
      const onAbort = () => this.#cancel(pending, new AbortError(op, o.signal!.reason));
      o.signal?.addEventListener('abort', onAbort, { once: true });
      pending.cleanup = () => {
        if (timer !== undefined) clearTimeout(timer);
        o.signal?.removeEventListener('abort', onAbort);
      };
      this.#wait = pending;
      try {
        this.#arm(fd, pending);
      } catch (e) {
        this.#cancel(pending, explain(e, op));
      }
    });
  }

  #arm(fd: number, pending: PendingWait): void {
    pending.poll = new native.FdPoll(fd, (status) => this.#onReadable(pending, status));
  }

  #onReadable(pending: PendingWait, status: number): void {
    if (this.#wait !== pending) return;
    pending.poll = undefined;
    if (status < 0) {
      this.#finish(pending);
      pending.reject(explain(new KvmError({ errno: -status, syscall: 'epoll_wait' }), 'eventfd.wait'));
      return;
    }
    let value: bigint;
    try {
      value = this.#read(this.#fd);
      // Readable, but another reader (an irqfd consumes the counter when it
      // fires) took the count first: wait again.
      if (value === 0n) {
        this.#arm(this.#fd, pending);
        return;
      }
    } catch (e) {
      this.#finish(pending);
      pending.reject(e);
      return;
    }
    this.#finish(pending);
    pending.resolve(value);
  }

  #finish(pending: PendingWait): void {
    if (this.#wait === pending) this.#wait = undefined;
    pending.poll?.close();
    pending.poll = undefined;
    pending.cleanup();
  }

  #cancel(pending: PendingWait, error: unknown): void {
    if (this.#wait !== pending) return;
    this.#finish(pending);
    pending.reject(error);
  }

  /** A VM started using this eventfd. @internal */
  attach(registration: EventFdRegistration): void {
    this.#registrations.add(registration);
  }

  /** A VM stopped using it; closes it if it was disposed meanwhile. @internal */
  detach(registration: EventFdRegistration): void {
    this.#registrations.delete(registration);
    if (this.#registrations.size === 0 && this.#closeWhenUnregistered) this.close();
  }

  /**
   * Closes the fd. Idempotent. A pending `wait()` is cancelled first and rejects with
   * ERR_CLOSED. Refused with ERR_IN_USE while a VM holds the eventfd (an irqfd, a
   * resample fd or an ioeventfd): the kernel keeps such bindings alive after the fd
   * is gone, and an ioeventfd could then never be deassigned.
   */
  close(): void {
    if (this.#fd < 0) return;
    if (this.#registrations.size > 0) {
      const uses = [...this.#registrations].map((r) => `${r.kind} (${r.description})`);
      throw new StateError(
        'ERR_IN_USE',
        `eventfd.close: the eventfd (fd ${this.#fd}) is registered with a VM as ${uses.join(', ')}; deassign ${uses.length > 1 ? 'them' : 'it'} first (or close the VM)`,
      );
    }
    const pending = this.#wait;
    if (pending) this.#finish(pending);
    closed(this.#fdCell);
    native.close(this.#fd);
    this.#fd = -1;
    pending?.reject(closedError('the eventfd', 'eventfd.wait'));
  }

  /** Closes now, or, while a VM still holds the eventfd, as soon as the last registration goes. */
  [Symbol.dispose](): void {
    if (this.#registrations.size > 0) this.#closeWhenUnregistered = true;
    else this.close();
  }
}
