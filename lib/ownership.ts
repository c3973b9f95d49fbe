/**
 * The garbage-collection safety net for fds: an owner object that is collected
 * without `close()` has its fd closed by a finalizer. It is a net, not the
 * mechanism: finalizers run late or not at all, so close what you open.
 *
 * Each owner gets a small cell holding its fd; `close()` empties the cell instead of
 * unregistering (cheaper on the create/close hot path), so a late finalizer can never
 * close an fd number that has since been reused.
 * @internal
 */
import { native } from './native';

/** An owner's fd, or -1 once the owner closed it. @internal */
export interface FdCell {
  fd: number;
}

const forgotten = new FinalizationRegistry<FdCell>((cell) => {
  if (cell.fd >= 0) native.close(cell.fd);
});

/** Ties `fd` to `owner`'s lifetime; returns the cell to empty on close. @internal */
export function track(owner: object, fd: number): FdCell {
  const cell = { fd };
  forgotten.register(owner, cell);
  return cell;
}
