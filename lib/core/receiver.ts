/**
 * Receiver checks. Every method and accessor of the library's public classes refuses
 * a `this` its class did not construct (an object forged with
 * `Object.create(Vm.prototype)`, a method borrowed onto another object, a detached
 * `const { punchHole } = file`), with an `ERR_INVALID_THIS` TypeError naming the
 * call, before it touches a private field, a kernel fd or the addon.
 *
 * One mechanism for every class: `guardReceivers` wraps the prototype's own methods
 * and accessors once, at class definition, with a brand test the class supplies
 * (`#field in o`, which only objects its constructor initialised pass).
 * @internal
 */
import { ArgumentTypeError } from './errors';

/** What `this` was, for the message (never throws: `this` may be a hostile Proxy). */
function describeReceiver(value: unknown): string {
  if (value === undefined) return 'undefined (a method detached from its object)';
  if (value === null) return 'null';
  if (typeof value !== 'object' && typeof value !== 'function') return `a ${typeof value}`;
  try {
    const proto: unknown = Object.getPrototypeOf(value);
    const ctor: unknown =
      proto && typeof proto === 'object' ? Object.getOwnPropertyDescriptor(proto, 'constructor')?.value : undefined;
    const name = typeof ctor === 'function' ? ctor.name : '';
    return name ? `an object of class ${name} it did not construct` : 'an object it did not construct';
  } catch {
    return 'an object it did not construct';
  }
}

/** The error for a method called on the wrong receiver. @internal */
export function invalidThis(op: string, className: string, madeBy: string, value: unknown): ArgumentTypeError {
  return new ArgumentTypeError(
    'ERR_INVALID_THIS',
    `${op}: must be called on ${/^[AEIOU]/.test(className) ? 'an' : 'a'} ${className} (from ${madeBy}), was called on ${describeReceiver(value)}`,
  );
}

const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor as unknown;

/**
 * Wraps every own method and accessor of `cls.prototype` with the brand test
 * `isInstance`. `noun` prefixes operation names (`'vm'` → `vm.checkExtension`),
 * `madeBy` says where real instances come from. Async methods reject instead of
 * throwing, as their other argument errors do. Call it once per class, from a static
 * block inside the class body, so `isInstance` can test a private field. Methods
 * named in `selfChecked` are left as they are: they must begin with the same test
 * (`if (!(#fd in this)) throw invalidThis(...)`).
 * @internal
 */
export function guardReceivers(
  cls: { readonly prototype: unknown; readonly name: string },
  isInstance: (value: object) => boolean,
  noun: string,
  madeBy: string,
  selfChecked: readonly string[] = [],
): void {
  const proto = cls.prototype as object;
  const className = cls.name;
  const test = (value: unknown): boolean =>
    (typeof value === 'object' || typeof value === 'function') && value !== null && isInstance(value);
  for (const key of Reflect.ownKeys(proto)) {
    // selfChecked: hot methods that make the same test inline (a wrapper costs ~15 ns a call).
    if (key === 'constructor' || (typeof key === 'string' && selfChecked.includes(key))) continue;
    const d = Object.getOwnPropertyDescriptor(proto, key)!;
    const name = typeof key === 'symbol' ? `[${key.description ?? ''}]` : key;
    const op = `${noun}.${name}`;
    if (typeof d.value === 'function') {
      const fn = d.value as (...args: unknown[]) => unknown;
      const isAsync = Object.getPrototypeOf(fn)?.constructor === AsyncFunction;
      const guarded = isAsync
        ? function (this: unknown): unknown {
            if (!test(this)) return Promise.reject(invalidThis(op, className, madeBy, this));
            // eslint-disable-next-line prefer-rest-params
            return Reflect.apply(fn, this, arguments);
          }
        : function (this: unknown): unknown {
            if (!test(this)) throw invalidThis(op, className, madeBy, this);
            // eslint-disable-next-line prefer-rest-params
            return Reflect.apply(fn, this, arguments);
          };
      Object.defineProperty(guarded, 'name', { value: fn.name });
      Object.defineProperty(guarded, 'length', { value: fn.length });
      d.value = guarded;
    } else {
      const { get, set } = d;
      if (get) {
        d.get = function (this: unknown): unknown {
          if (!test(this)) throw invalidThis(op, className, madeBy, this);
          return get.call(this);
        };
      }
      if (set) {
        d.set = function (this: unknown, value: unknown): void {
          if (!test(this)) throw invalidThis(op, className, madeBy, this);
          set.call(this, value);
        };
      }
      if (!get && !set) continue;
    }
    Object.defineProperty(proto, key, d);
  }
}
