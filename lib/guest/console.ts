/**
 * A guest's console: what it writes to an I/O port (the serial port 0x3f8 by
 * default), collected while it runs.
 */
import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import { uint } from '../core/validate';
import type { VcpuExit } from '../kvm/exits';
import type { RunOptions, Vcpu } from '../kvm/vcpu';
import { DEFAULT_PORT } from './programs';

/** Options of {@link captureOutput}. */
export interface CaptureOptions extends RunOptions {
  /** The port the guest writes to (default 0x3f8, COM1). */
  port?: number;
  /** Stop collecting (and running) after this many bytes (default 1 MiB). */
  maxBytes?: number;
  /** Run with `runSync()` on the calling thread instead of the vCPU thread (no `signal` then). */
  sync?: boolean;
}

/** What {@link captureOutput} collected. */
export interface CapturedOutput {
  /** Every byte the guest wrote to the port, in order. */
  readonly bytes: Buffer;
  /** The bytes as UTF-8. */
  readonly text: string;
  /** The exit that ended the run: the guest halting, an exit nothing handled, or the I/O past `maxBytes`. */
  readonly exit: VcpuExit;
  /** True when the guest wrote more than `maxBytes` (the run was stopped there). */
  readonly truncated: boolean;
}

/**
 * Runs the vCPU until the guest halts (or does something else than write to
 * `port`), collecting what it writes to `port` (`out`, `outs`: every byte of every
 * access). Memory faults and hypercalls get `runUntil`'s default handling; the time
 * limit and the signal bound the whole run.
 *
 * @example
 * loadRealMode(vcpu, guest.hello('hi\n'));
 * const { text, exit } = await captureOutput(vcpu, { timeoutMs: 5000 });  // 'hi\n', 'hlt'
 */
export async function captureOutput(vcpu: Vcpu, options: CaptureOptions = {}): Promise<CapturedOutput> {
  const op = 'captureOutput';
  if (options === null || typeof options !== 'object')
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options must be an object`);
  const port = uint(options.port === undefined ? DEFAULT_PORT : options.port, op, 'options.port', 0xffff);
  const maxBytes = uint(options.maxBytes === undefined ? 1 << 20 : options.maxBytes, op, 'options.maxBytes', 2 ** 31);
  if (maxBytes === 0) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: options.maxBytes must be at least 1`);
  const chunks: Buffer[] = [];
  let total = 0;
  let truncated = false;
  const exit = await vcpu.runUntil({
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.signal !== undefined ? { signal: options.signal } : {}),
    ...(options.sync !== undefined ? { sync: options.sync } : {}),
    io(e) {
      if (e.port !== port || e.direction !== 'out') return 'stop';
      const take = Math.min(e.data.length, maxBytes - total);
      chunks.push(Buffer.from(e.data.subarray(0, take)));
      total += take;
      if (take < e.data.length) {
        truncated = true;
        return 'stop';
      }
      return undefined;
    },
  });
  const bytes = Buffer.concat(chunks);
  return { bytes, text: bytes.toString('utf8'), exit, truncated };
}
