/**
 * The garbage-collection safety net for fds: an owner object that is collected
 * without `close()` has its fd closed by a finalizer. It is a net, not the
 * mechanism: finalizers run late or not at all, so close what you open.
 *
 * Each owner gets a small cell holding its fd; closing empties the cell instead of
 * unregistering (cheaper on create/close hot paths), so a late finalizer can never
 * close an fd number that has since been reused. Objects a parent keeps strongly
 * until they close (a VM's guest_memfd files) do not register at all: their cells
 * hang off the parent's, whose finalizer closes them too.
 * @internal
 */
import { native } from '../native';

/** An owner's fd, or -1 once the owner closed it. @internal */
export interface FdCell {
  fd: number;
  /** Cells of children that live and die with this owner. */
  children?: Set<FdCell>;
  /** The parent cell, for a child. */
  parent?: FdCell;
}

function closeCell(cell: FdCell): void {
  if (cell.children) for (const child of cell.children) closeCell(child);
  if (cell.fd >= 0) native.close(cell.fd);
  cell.fd = -1;
}

const forgotten = new FinalizationRegistry<FdCell>(closeCell);

/**
 * Ties `fd` to `owner`'s lifetime; with a parent cell, to the parent's instead (the
 * parent must hold the owner strongly until it closes). @internal
 */
export function track(owner: object, fd: number, parent?: FdCell): FdCell {
  if (parent) {
    const cell: FdCell = { fd, parent };
    (parent.children ??= new Set()).add(cell);
    return cell;
  }
  const cell: FdCell = { fd };
  forgotten.register(owner, cell);
  return cell;
}

/** The owner closed its fd itself. @internal */
export function closed(cell: FdCell): void {
  cell.fd = -1;
  cell.parent?.children?.delete(cell);
}
