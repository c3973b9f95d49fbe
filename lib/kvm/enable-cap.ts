/**
 * KVM_ENABLE_CAP, shared by the VM and vCPU fds: the same argument rules and the
 * same error reporting for both.
 * @internal
 */
import { capName } from '../core/caps';
import { ArgumentRangeError, explain } from '../core/errors';
import { native } from '../native';
import { u64, uint } from '../core/validate';

/** Issues KVM_ENABLE_CAP on `fd` after checking every argument. @internal */
export function enableCapOn(
  fd: number,
  op: string,
  cap: number,
  args: ReadonlyArray<number | bigint>,
  flags: number,
  reasons: Partial<Record<string, string>> = {},
): void {
  const c = uint(cap, op, 'cap', 0xffffffff);
  const f = uint(flags, op, 'flags', 0xffffffff);
  if (!Array.isArray(args) || args.length > 4)
    throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: args must be an array of at most 4 numbers or bigints`);
  const a = [0, 1, 2, 3].map((i) => u64(i < args.length ? args[i] : 0, op, `args[${i}]`));
  try {
    native.enableCap(fd, c, f, a[0]!, a[1]!, a[2]!, a[3]!);
  } catch (e) {
    throw explain(e, `${op}(${capName(c)})`, reasons);
  }
}
