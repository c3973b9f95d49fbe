/**
 * The garbage-collection safety net for fds: an owner object that is collected
 * without `close()` has its fd closed by a finalizer. It is a net, not the
 * mechanism: finalizers run late or not at all, so close what you open.
 * @internal
 */
import { native } from './native';

const forgotten = new FinalizationRegistry<number>((fd) => {
  // The owner is gone; the addon only closes fds it still owns.
  native.close(fd);
});

/** Ties `fd` to `owner`'s lifetime. @internal */
export function track(owner: object, fd: number): void {
  forgotten.register(owner, fd, owner);
}

/** The owner closed its fd itself. @internal */
export function untrack(owner: object): void {
  forgotten.unregister(owner);
}
