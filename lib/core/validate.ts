/**
 * Argument checks shared by every public call. Each failure names the operation,
 * the argument and the rule it broke, and happens before any syscall.
 * @internal
 */
import { ArgumentRangeError, ArgumentTypeError } from './errors';
import { native } from '../native';

/** The host page size (4096 on x86-64). */
export const PAGE_SIZE = native.pageSize;
const PAGE_BIG = BigInt(PAGE_SIZE);
const U64_MAX = (1n << 64n) - 1n;

/** `0x1001` style rendering for messages. @internal */
export function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'number') return String(value);
  if (typeof value === 'string') return `'${value.length > 20 ? value.slice(0, 20) + '…' : value}'`;
  return `a value of type ${typeof value}`;
}

/**
 * An unsigned 64-bit integer given as `number` or `bigint`, returned as `bigint`.
 * Rejects other types, NaN, fractions, negatives and values above 2^64-1.
 * @internal
 */
export function u64(value: unknown, op: string, arg: string): bigint {
  if (typeof value === 'bigint') {
    if (value < 0n || value > U64_MAX)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${arg} ${describe(value)} is outside 0..2^64-1`);
    return value;
  }
  if (typeof value === 'number') {
    if (!Number.isInteger(value))
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${arg} ${describe(value)} is not an integer`);
    if (value < 0)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${arg} ${describe(value)} is negative`);
    if (!Number.isSafeInteger(value))
      throw new ArgumentRangeError(
        'ERR_OUT_OF_RANGE',
        `${op}: ${arg} ${describe(value)} is above 2^53-1; pass a bigint for exact large values`,
      );
    return BigInt(value);
  }
  throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: ${arg} must be a number or bigint, got ${describe(value)}`);
}

/**
 * A byte offset or size within a file, as an exact JavaScript number (files this
 * library handles stay below 2^53 bytes).
 * @internal
 */
export function fileNumber(value: unknown, op: string, arg: string): number {
  // The common case, without a detour through bigint.
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  const big = u64(value, op, arg);
  if (big > BigInt(Number.MAX_SAFE_INTEGER))
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${arg} ${hex(big)} exceeds 2^53-1 bytes`);
  return Number(big);
}

/** Throws unless `value` is a multiple of the page size. @internal */
export function pageAligned(value: number | bigint, op: string, arg: string): void {
  const misaligned = typeof value === 'bigint' ? value % PAGE_BIG !== 0n : value % PAGE_SIZE !== 0;
  if (misaligned)
    throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: ${arg} ${hex(value)} is not page-aligned (${PAGE_SIZE})`);
}

/** A positive, page-aligned file size or length. @internal */
export function pageLength(value: unknown, op: string, arg: string): number {
  const n = fileNumber(value, op, arg);
  if (n === 0) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${arg} must be greater than 0`);
  pageAligned(n, op, arg);
  return n;
}

/** A boolean option; `undefined` gives the default. @internal */
export function bool(value: unknown, fallback: boolean, op: string, arg: string): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean')
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: ${arg} must be a boolean, got ${describe(value)}`);
  return value;
}

/** A plain options object (or undefined). @internal */
export function options<T extends object>(value: unknown, op: string, arg = 'options'): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: ${arg} must be an object, got ${describe(value)}`);
  return value as Partial<T>;
}

/** A small non-negative integer such as a slot or vCPU id. @internal */
export function uint(value: unknown, op: string, arg: string, max: number): number {
  if (typeof value !== 'number' && typeof value !== 'bigint')
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: ${arg} must be a number, got ${describe(value)}`);
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > max)
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${arg} ${describe(value)} is outside 0..${max}`);
  return n;
}

/** One of a fixed set of strings. @internal */
export function oneOf<T extends string>(value: unknown, allowed: readonly T[], op: string, arg: string): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value))
    throw new (typeof value === 'string' ? ArgumentRangeError : ArgumentTypeError)(
      typeof value === 'string' ? 'ERR_INVALID_ARG_VALUE' : 'ERR_INVALID_ARG_TYPE',
      `${op}: ${arg} must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${describe(value)}`,
    );
  return value as T;
}

/**
 * `fallback` when `value` is absent (undefined) — but not when it is null: a null
 * option is a mistake to report, not a request for the default. @internal
 */
export function given<T>(value: T | null | undefined, fallback: T): T | null {
  return value === undefined ? fallback : value;
}
