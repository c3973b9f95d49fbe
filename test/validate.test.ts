// Unit tests of argument validation (pure TypeScript, no kernel).
import { describe, expect, test } from 'vitest';
import { fileNumber, hex, pageAligned, pageLength, u64, uint, oneOf, bool } from '../lib/core/validate';
import { ArgumentRangeError, ArgumentTypeError } from '../lib/core/errors';

describe('u64', () => {
  test('accepts numbers and bigints up to 2^64-1', () => {
    expect(u64(0, 'op', 'x')).toBe(0n);
    expect(u64(4096, 'op', 'x')).toBe(4096n);
    expect(u64((1n << 64n) - 1n, 'op', 'x')).toBe((1n << 64n) - 1n);
  });
  test.each([
    ['negative number', -1, 'ERR_OUT_OF_RANGE', /negative/],
    ['negative bigint', -1n, 'ERR_OUT_OF_RANGE', /outside 0..2\^64-1/],
    ['NaN', NaN, 'ERR_OUT_OF_RANGE', /not an integer/],
    ['fraction', 1.5, 'ERR_OUT_OF_RANGE', /not an integer/],
    ['Infinity', Infinity, 'ERR_OUT_OF_RANGE', /not an integer/],
    ['2^64', 1n << 64n, 'ERR_OUT_OF_RANGE', /outside/],
    ['unsafe number', 2 ** 60, 'ERR_OUT_OF_RANGE', /2\^53-1/],
  ])('rejects %s with a RangeError', (_, value, code, message) => {
    let error: unknown;
    try {
      u64(value, 'gmem.op', 'offset');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(RangeError);
    expect(error).toBeInstanceOf(ArgumentRangeError);
    expect((error as ArgumentRangeError).code).toBe(code);
    expect((error as Error).message).toMatch(/^gmem\.op: offset /);
    expect((error as Error).message).toMatch(message);
  });
  test.each([['string', '4096'], ['null', null], ['object', {}], ['undefined', undefined], ['boolean', true]])(
    'rejects a %s with a TypeError',
    (_, value) => {
      let error: unknown;
      try {
        u64(value, 'op', 'size');
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(TypeError);
      expect(error).toBeInstanceOf(ArgumentTypeError);
      expect((error as ArgumentTypeError).code).toBe('ERR_INVALID_ARG_TYPE');
      expect((error as Error).message).toMatch(/op: size must be a number or bigint/);
    },
  );
});

describe('file numbers and alignment', () => {
  test('fileNumber refuses values past 2^53-1 given as bigint', () => {
    expect(() => fileNumber(1n << 60n, 'op', 'offset')).toThrow(/exceeds 2\^53-1 bytes/);
    expect(fileNumber(1n << 40n, 'op', 'offset')).toBe(2 ** 40);
  });
  test('pageAligned names the value in hex and the page size', () => {
    expect(() => pageAligned(0x1001, 'guest_memfd.allocate', 'offset')).toThrow(
      'guest_memfd.allocate: offset 0x1001 is not page-aligned (4096)',
    );
    expect(() => pageAligned(0x2000n, 'op', 'x')).not.toThrow();
  });
  test('pageLength refuses zero and unaligned sizes', () => {
    expect(() => pageLength(0, 'op', 'size')).toThrow(/greater than 0/);
    expect(() => pageLength(100, 'op', 'size')).toThrow(/not page-aligned/);
    expect(pageLength(8192n, 'op', 'size')).toBe(8192);
  });
  test('hex renders numbers and bigints', () => {
    expect(hex(4096)).toBe('0x1000');
    expect(hex(1n << 32n)).toBe('0x100000000');
  });
});

describe('small values', () => {
  test('uint enforces its bounds', () => {
    expect(uint(5, 'op', 'slot', 10)).toBe(5);
    expect(() => uint(11, 'op', 'slot', 10)).toThrow(/outside 0..10/);
    expect(() => uint(-1, 'op', 'slot', 10)).toThrow(RangeError);
    expect(() => uint('1', 'op', 'slot', 10)).toThrow(TypeError);
  });
  test('oneOf lists the allowed values', () => {
    expect(() => oneOf('x', ['a', 'b'] as const, 'op', 'type')).toThrow("op: type must be one of 'a', 'b', got 'x'");
    expect(() => oneOf(1, ['a'] as const, 'op', 'type')).toThrow(TypeError);
  });
  test('bool falls back on undefined and refuses non-booleans', () => {
    expect(bool(undefined, true, 'op', 'x')).toBe(true);
    expect(() => bool(1, true, 'op', 'x')).toThrow(TypeError);
  });
});
