/**
 * Two-phase invalidation and populate notifications (the memfile_notifier idea,
 * brought to userspace). Every discard of a file range runs
 * `invalidateStart` (every listener, awaited, in registration order) → the kernel
 * operation → `invalidateEnd`. `populate` listeners run before a range becomes
 * usable and may veto by throwing.
 *
 * Error policy: a listener that throws in `invalidateStart` or `invalidateEnd` cannot
 * stop a discard (the memory is going away). Its error goes to the notifier's
 * `onError` hook, which by default emits a process warning (`GuestMemfdListenerWarning`),
 * so nothing fails silently. A `populate` listener that throws vetoes: the caller
 * rolls back and rejects with that error.
 */

import { ArgumentTypeError, StateError } from '../core/errors';
import { guardReceivers } from '../core/receiver';

/** Why a range is being discarded. */
export type InvalidationCause =
  | 'punch-hole'
  | 'truncate'
  | 'convert-to-private'
  | 'convert-to-shared'
  | 'slot-removed'
  | 'close';

/** Why a range is about to become usable. */
export type PopulateCause = 'convert-to-private' | 'convert-to-shared' | 'slot-added' | 'replay';

/** A guest-physical range of one memory slot. */
export interface BoundRange {
  /** The slot id. */
  readonly slot: number;
  /** First guest physical address of the piece. */
  readonly guestPhysAddr: bigint;
  /** Size of the piece in bytes. */
  readonly size: bigint;
}

/** A range of a file (guest_memfd or memfd), as its own notifier reports it. */
export interface FileRangeEvent<F = unknown> {
  /** The file whose range changes. */
  readonly file: F;
  /** Byte offset in the file. */
  readonly offset: number;
  /** Length in bytes. */
  readonly length: number;
  /** What causes the change. */
  readonly cause: InvalidationCause | PopulateCause;
  /** The GPA ranges of every slot bound to this file range. */
  readonly ranges: readonly BoundRange[];
}

/** A guest-physical range, as a VM's notifier reports it. */
export interface GpaRangeEvent<V = unknown> {
  /** The VM. */
  readonly vm: V;
  /** First guest physical address. */
  readonly guestPhysAddr: bigint;
  /** Size in bytes. */
  readonly size: bigint;
  /** What causes the change. */
  readonly cause: InvalidationCause | PopulateCause;
  /** The pieces of the range, per slot. */
  readonly ranges: readonly BoundRange[];
  /** For conversions and replays: the state the range has once the change is done. */
  readonly state?: 'private' | 'shared';
}

/** Callbacks a consumer of a file or VM registers. All are optional and may be async. */
export interface NotifierListener<E> {
  /** Before a range is discarded. Hold off new references to it. */
  invalidateStart?(event: E): void | Promise<void>;
  /** After the discard. The range reads as zeros (or is gone). */
  invalidateEnd?(event: E): void | Promise<void>;
  /** Before a range becomes usable. Throw to veto: everything done so far is rolled back. */
  populate?(event: E): void | Promise<void>;
}

/** Removes a registered listener. Calling it twice is harmless. */
export type Unregister = () => void;

/** One notification as yielded by {@link Notifier.events}. */
export interface NotifierEvent<E> {
  /** Which phase fired. */
  readonly type: 'invalidate-start' | 'invalidate-end' | 'populate';
  /** The event itself. */
  readonly event: E;
}

/** Where a listener error is reported. */
export type ListenerErrorHandler<E> = (
  error: unknown,
  phase: 'invalidateStart' | 'invalidateEnd' | 'populate',
  event: E,
) => void;

function describeError(error: unknown): string {
  try {
    return error instanceof Error ? error.message : String(error);
  } catch {
    return 'an error that cannot be printed';
  }
}

function defaultErrorHandler(error: unknown, phase: string): void {
  const what =
    phase === 'populate'
      ? 'a populate listener failed after it could no longer veto (its promise rejected)'
      : `a notifier listener threw in ${phase}; the discard went ahead`;
  process.emitWarning(`${what}: ${describeError(error)}`, { type: 'GuestMemfdListenerWarning', code: 'ERR_LISTENER_FAILED' });
}

/**
 * A listener as registered: its callbacks read once, at registration, so a getter
 * or a later change on the object cannot break (or hijack) a dispatch. @internal
 */
export interface Registered<E> {
  readonly target: NotifierListener<E>;
  readonly invalidateStart: ((event: E) => void | Promise<void>) | undefined;
  readonly invalidateEnd: ((event: E) => void | Promise<void>) | undefined;
  readonly populate: ((event: E) => void | Promise<void>) | undefined;
}

/**
 * The listeners of one file or VM.
 *
 * @example
 * const off = gmem.notifier.register({
 *   invalidateStart(r) { cache.block(r.offset, r.length); },
 *   async invalidateEnd(r) { await cache.drop(r.offset, r.length); },
 * });
 * await gmem.punchHole(0, 4096);
 * off();
 */
export class Notifier<E> {
  static {
    guardReceivers(this, (o) => #listeners in o, 'notifier', 'a file or VM');
  }
  #listeners: Registered<E>[] = [];
  #replay: (() => E[]) | undefined;

  /**
   * Receives listener errors from `invalidateStart`/`invalidateEnd` (and late populate
   * failures). Replace to collect them. If it throws, the default (a process warning)
   * reports both errors instead: a failing handler cannot stop a discard either.
   */
  onError: ListenerErrorHandler<E> = defaultErrorHandler;

  /** @internal */
  static create<T>(replay?: () => T[]): Notifier<T> {
    return new Notifier<T>(replay);
  }

  private constructor(replay?: () => E[]) {
    this.#replay = replay;
  }

  /** Number of registered listeners. */
  get size(): number {
    return this.#listeners.length;
  }

  /**
   * Adds a listener. With `{ replay: true }` its `populate` callback first receives
   * every range that is populated now (cause `'replay'`), and the returned promise
   * resolves to the unregister function once the replay is done. The callbacks are
   * read from the object now; changing the object later changes nothing.
   */
  register(listener: NotifierListener<E>): Unregister;
  /** Adds a listener after replaying the populated ranges to its `populate`; resolves to the unregister function. */
  register(listener: NotifierListener<E>, options: { replay: true }): Promise<Unregister>;
  /** Adds a listener; returns a promise only when `options.replay` is true. */
  register(listener: NotifierListener<E>, options?: { replay?: boolean }): Unregister | Promise<Unregister>;
  register(listener: NotifierListener<E>, options?: { replay?: boolean }): Unregister | Promise<Unregister> {
    if (listener === null || typeof listener !== 'object')
      throw new ArgumentTypeError(
        'ERR_INVALID_ARG_TYPE',
        'notifier.register: listener must be an object with invalidateStart/invalidateEnd/populate',
      );
    if (options !== undefined && (options === null || typeof options !== 'object'))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', 'notifier.register: options must be an object { replay? }');
    const replay = options?.replay;
    if (replay !== undefined && typeof replay !== 'boolean')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', 'notifier.register: options.replay must be a boolean');
    const fns: Record<'invalidateStart' | 'invalidateEnd' | 'populate', ((event: E) => void | Promise<void>) | undefined> = {
      invalidateStart: undefined,
      invalidateEnd: undefined,
      populate: undefined,
    };
    for (const key of ['invalidateStart', 'invalidateEnd', 'populate'] as const) {
      const fn: unknown = listener[key];
      if (fn !== undefined && typeof fn !== 'function')
        throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `notifier.register: listener.${key} must be a function`);
      fns[key] = fn as ((event: E) => void | Promise<void>) | undefined;
    }
    const entry: Registered<E> = { target: listener, ...fns };
    // A copy-on-write array: dispatch iterates a stable snapshot without copying.
    this.#listeners = [...this.#listeners, entry];
    let registered = true;
    const unregister: Unregister = () => {
      if (!registered) return;
      registered = false;
      this.#listeners = this.#listeners.filter((l) => l !== entry);
    };
    if (!replay) return unregister;
    return (async () => {
      try {
        if (entry.populate && this.#replay) {
          for (const event of this.#replay()) await entry.populate.call(listener, event);
        }
      } catch (e) {
        unregister();
        throw e;
      }
      return unregister;
    })();
  }

  /**
   * An async iterator over notifications, for `for await`. Listening starts at the
   * call; breaking out of the loop unregisters. Events are queued, not awaited: use
   * `register` to hold a discard until you are done.
   */
  async *events(): AsyncGenerator<NotifierEvent<E>, void, undefined> {
    const queue: NotifierEvent<E>[] = [];
    let wake: (() => void) | undefined;
    const push = (type: NotifierEvent<E>['type']) => (event: E) => {
      queue.push({ type, event });
      wake?.();
    };
    const off = this.register({
      invalidateStart: push('invalidate-start'),
      invalidateEnd: push('invalidate-end'),
      populate: push('populate'),
    });
    try {
      for (;;) {
        while (queue.length > 0) yield queue.shift()!;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      off();
    }
  }

  /** The listeners now, for one dispatch. @internal */
  snapshot(): readonly Registered<E>[] {
    return this.#listeners;
  }

  /**
   * Reports a listener error through `onError`; if that throws too, both go to the
   * default warning. Never throws. @internal
   */
  report(error: unknown, phase: 'invalidateStart' | 'invalidateEnd' | 'populate', event: E): void {
    const failed = (handlerError: unknown) => {
      try {
        defaultErrorHandler(error, phase);
        process.emitWarning(`the notifier's onError threw while reporting the ${phase} failure: ${describeError(handlerError)}`, {
          type: 'GuestMemfdListenerWarning',
          code: 'ERR_LISTENER_FAILED',
        });
      } catch {
        // Nothing left to report with.
      }
    };
    try {
      const result: unknown = this.onError(error, phase, event);
      // An async onError: its rejection is reported the same way, never left unhandled
      // (an unhandled rejection ends the process).
      if (result !== null && typeof result === 'object' && typeof (result as PromiseLike<unknown>).then === 'function')
        Promise.resolve(result).then(undefined, failed);
    } catch (handlerError) {
      failed(handlerError);
    }
  }
}

/** One notifier and the event it should receive, for a multi-party dispatch. @internal */
export type Delivery = readonly [Notifier<any>, unknown];

/** True when none of the notifiers has a listener: the caller may skip dispatch. @internal */
export function quiet(deliveries: readonly Delivery[]): boolean {
  for (const [n] of deliveries) if (n.size > 0) return false;
  return true;
}

/** True for a value that looks like a promise (a listener's async result). @internal */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  try {
    return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as { then?: unknown }).then === 'function';
  } catch {
    return false;
  }
}

/**
 * Runs `operation` between `invalidateStart` and `invalidateEnd` of every listener of
 * every delivery. Listener errors are reported, never thrown; `invalidateEnd` runs
 * even when the operation fails, so every start has its end. @internal
 */
export async function invalidate<T>(deliveries: readonly Delivery[], operation: () => T | Promise<T>): Promise<T> {
  const plan = deliveries.map(([n, e]) => [n, e, n.snapshot()] as const);
  for (const [n, e, listeners] of plan)
    for (const l of listeners)
      if (l.invalidateStart)
        try {
          await l.invalidateStart.call(l.target, e);
        } catch (error) {
          n.report(error, 'invalidateStart', e);
        }
  try {
    return await operation();
  } finally {
    for (const [n, e, listeners] of plan)
      for (const l of listeners)
        if (l.invalidateEnd)
          try {
            await l.invalidateEnd.call(l.target, e);
          } catch (error) {
            n.report(error, 'invalidateEnd', e);
          }
  }
}

/** Calls one listener callback synchronously; a returned promise is watched, not awaited. */
function callSync<E>(n: Notifier<E>, fn: (event: E) => unknown, target: unknown, phase: 'invalidateStart' | 'invalidateEnd' | 'populate', e: E): void {
  try {
    const r = fn.call(target, e);
    if (isThenable(r)) Promise.resolve(r).then(undefined, (error: unknown) => n.report(error, phase, e));
  } catch (error) {
    n.report(error, phase, e);
  }
}

/**
 * The synchronous form for `close()`: listeners are called in order, but a promise
 * they return is not awaited (its rejection is reported). @internal
 */
export function invalidateSync<T>(deliveries: readonly Delivery[], operation: () => T): T {
  const call = (phase: 'invalidateStart' | 'invalidateEnd') => {
    for (const [n, e] of deliveries)
      for (const l of n.snapshot()) {
        const fn = l[phase];
        if (fn) callSync(n, fn, l.target, phase, e);
      }
  };
  call('invalidateStart');
  try {
    return operation();
  } finally {
    call('invalidateEnd');
  }
}

/** A populate one listener accepted, for rolling it back. @internal */
export type Accepted = readonly [Notifier<unknown>, Registered<unknown>, unknown];

/**
 * Gives each listener that accepted a populate an invalidateStart/End pair (all
 * starts, then all ends). Listener errors are reported, never thrown. @internal
 */
export async function rollBack(accepted: ReadonlyArray<readonly [Notifier<unknown>, Registered<unknown>, unknown, ...unknown[]]>): Promise<void> {
  for (const phase of ['invalidateStart', 'invalidateEnd'] as const)
    for (const [notifier, listener, event] of accepted) {
      const fn = listener[phase];
      if (!fn) continue;
      try {
        await fn.call(listener.target, event);
      } catch (error) {
        notifier.report(error, phase, event);
      }
    }
}

/** The synchronous form of {@link rollBack}, for synchronous callers. @internal */
export function rollBackSync(accepted: ReadonlyArray<readonly [Notifier<unknown>, Registered<unknown>, unknown, ...unknown[]]>): void {
  for (const phase of ['invalidateStart', 'invalidateEnd'] as const)
    for (const [notifier, listener, event] of accepted) {
      const fn = listener[phase];
      if (fn) callSync(notifier, fn, listener.target, phase, event);
    }
}

/**
 * Asks every `populate` listener, one at a time. The first that throws vetoes: the
 * listeners that had accepted hear an invalidateStart/End pair, and the veto is
 * rethrown (the caller changes nothing). @internal
 */
export async function populate(deliveries: readonly Delivery[]): Promise<void>;
/** With `keep`: resolves to the acceptances, so the caller can roll them back if its own step fails. @internal */
export async function populate(deliveries: readonly Delivery[], options: { keep: true }): Promise<Accepted[]>;
export async function populate(deliveries: readonly Delivery[], options?: { keep: true }): Promise<void | Accepted[]> {
  const accepted: Accepted[] = [];
  for (const [n, e] of deliveries)
    for (const l of n.snapshot() as readonly Registered<unknown>[]) {
      if (!l.populate) continue;
      try {
        await l.populate.call(l.target, e);
      } catch (veto) {
        await rollBack(accepted);
        throw veto;
      }
      accepted.push([n as Notifier<unknown>, l, e]);
    }
  return options?.keep ? accepted : undefined;
}

/**
 * The synchronous form of {@link populate}, for synchronous adds: a listener that
 * throws vetoes; one that returns a promise cannot be waited for, so the add is
 * refused (ERR_ASYNC_LISTENER) as if it had vetoed, and the promise's outcome is
 * only reported. Either way the listeners that had accepted hear the rollback. @internal
 */
export function populateSync(deliveries: readonly Delivery[], op: string, asyncForm: string): void {
  const accepted: Accepted[] = [];
  for (const [n, e] of deliveries)
    for (const l of n.snapshot() as readonly Registered<unknown>[]) {
      if (!l.populate) continue;
      let result: unknown;
      try {
        result = l.populate.call(l.target, e);
      } catch (veto) {
        rollBackSync(accepted);
        throw veto;
      }
      if (isThenable(result)) {
        // Keep its rejection from becoming an unhandled one.
        Promise.resolve(result).then(undefined, (error: unknown) => (n as Notifier<unknown>).report(error, 'populate', e));
        rollBackSync([...accepted, [n as Notifier<unknown>, l, e]]);
        throw new StateError(
          'ERR_ASYNC_LISTENER',
          `${op}: a populate listener returned a promise, which a synchronous call cannot wait for (so it could not veto); use ${asyncForm}, which awaits populate listeners`,
        );
      }
      accepted.push([n as Notifier<unknown>, l, e]);
    }
}
