import util from 'node:util';

// Arguments: valid ones from the model, hostile ones from these tables. Every value
// has a class that says what the library owes the caller:
//   'reject': the call must throw a library error with an ERR_* code (never succeed,
//             never reach the kernel, never a plain V8 TypeError);
//   'odd':    legal JavaScript that may be out of range for the kernel (huge,
//             unaligned, zero...): any typed error, a kernel error, or success.

export const OWN = Symbol('guest-memfd fuzz: thrown by the fuzzer itself');

/** An error the fuzzer throws from its own listeners and getters. */
export function ownError(message) {
  const e = new Error(`fuzz: ${message}`);
  e[OWN] = true;
  return e;
}

/** A throwing Proxy: every property read fails with the fuzzer's own error. */
function bomb() {
  return new Proxy({}, {
    get(_t, key) {
      if (key === Symbol.toPrimitive || key === 'then') return undefined;
      throw ownError(`getter bomb (${String(key)})`);
    },
  });
}

const REJECT_NUMERIC = [
  ['null', () => null],
  ["'str'", () => 'str'],
  ["'4096'", () => '4096'],
  ['{}', () => ({})],
  ['[]', () => []],
  ['[4096]', () => [4096]],
  ['Symbol()', () => Symbol('s')],
  ['true', () => true],
  ['NaN', () => NaN],
  ['Infinity', () => Infinity],
  ['-Infinity', () => -Infinity],
  ['1.5', () => 1.5],
  ['4096.5', () => 4096.5],
  ['-1', () => -1],
  ['-4096', () => -4096],
  ['-1n', () => -1n],
  ['2n**64n', () => 2n ** 64n],
  ['2**64', () => 2 ** 64],
  ['2**70', () => 2 ** 70],
  ['{valueOf}', () => ({ valueOf: () => 4096 })],
  ['new Number(4096)', () => new Number(4096)],
  ['() => 0', () => () => 0],
];

const ODD_NUMERIC = [
  ['0', () => 0],
  ['-0', () => -0],
  ['1', () => 1],
  ['4095', () => 4095],
  ['4097', () => 4097],
  ['0x7fffffff', () => 0x7fffffff],
  ['2**32', () => 2 ** 32],
  ['2**40', () => 2 ** 40],
  ['2**53-1', () => Number.MAX_SAFE_INTEGER],
  ['2**53', () => 2 ** 53],
  ['2n**63n', () => 2n ** 63n],
  ['2n**64n-1n', () => 2n ** 64n - 1n],
  ['2n**64n-4096n', () => 2n ** 64n - 4096n],
  ['0n', () => 0n],
];

const REJECT_STRING = [
  ['null', () => null],
  ['42', () => 42],
  ['{}', () => ({})],
  ['Symbol()', () => Symbol('s')],
  ["'a\\0b'", () => 'a\0b'],
  ["'x'.repeat(300)", () => 'x'.repeat(300)],
  ['bomb', bomb],
];

const REJECT_OBJECT = [
  ['null', () => null],
  ['42', () => 42],
  ["'str'", () => 'str'],
  ['Symbol()', () => Symbol('s')],
  ['bomb', bomb],
];

/** A hostile numeric value: [description, value, class]. */
export function hostileNumber(rng, { small = false } = {}) {
  if (rng.chance(0.6)) {
    const [d, f] = rng.pick(REJECT_NUMERIC);
    return [d, f(), 'reject'];
  }
  // small: only odd values that cost nothing if the call goes through (for lengths that are really allocated).
  const [d, f] = rng.pick(small ? ODD_NUMERIC.filter(([, g]) => { const x = Number(g()); return x <= 0x1000000 || x >= 2 ** 60; }) : ODD_NUMERIC);
  return [d, f(), 'odd'];
}

export function hostileString(rng) {
  const [d, f] = rng.pick(REJECT_STRING);
  return [d, f(), 'reject'];
}

export function hostileObject(rng, classes = []) {
  if (classes.length && rng.chance(0.4)) {
    const C = rng.pick(classes);
    return [`Object.create(${C.name}.prototype)`, Object.create(C.prototype), 'reject'];
  }
  const [d, f] = rng.pick(REJECT_OBJECT);
  return [d, f(), 'reject'];
}

/** A short description of a value for the call trace (never keeps the value). */
export function fmt(v, depth = 0) {
  if (v === null) return 'null';
  switch (typeof v) {
    case 'undefined': return 'undefined';
    case 'number': return Object.is(v, -0) ? '-0' : Number.isInteger(v) && v >= 4096 ? `0x${v.toString(16)}` : String(v);
    case 'bigint': return `${v >= 4096n ? `0x${v.toString(16)}` : v.toString()}n`;
    case 'string': return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...(${v.length})` : v);
    case 'symbol': return String(v);
    case 'boolean': return String(v);
    case 'function': return labels.get(v) ?? `[function ${v.name || 'anonymous'}]`;
  }
  if (util.types.isProxy(v)) return 'bomb';
  const label = labels.get(v);
  if (label) return label;
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return `<${v.length} bytes>`;
  if (depth > 2) return '{...}';
  if (Array.isArray(v)) return `[${v.slice(0, 8).map((x) => fmt(x, depth + 1)).join(', ')}${v.length > 8 ? ', ...' : ''}]`;
  const proto = Object.getPrototypeOf(v);
  const name = proto && proto !== Object.prototype ? proto.constructor?.name : '';
  if (name) return `<${name}>`;
  return `{ ${Object.keys(v).map((k) => `${k}: ${fmt(v[k], depth + 1)}`).join(', ')} }`;
}

const labels = new WeakMap();
/** Names a live object for the trace (m3, vm1, ...): weakly, so dropping it still frees it. */
export function setLabel(obj, label) {
  labels.set(obj, label);
}
export function labelOf(obj) {
  return labels.get(obj);
}
