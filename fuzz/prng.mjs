// A small seeded PRNG (sfc32, seeded through splitmix32): the same seed gives the
// same call sequence on every run and every machine.

function splitmix32(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

export class Prng {
  #a; #b; #c; #d;
  constructor(seed) {
    const sm = splitmix32(seed);
    this.#a = sm(); this.#b = sm(); this.#c = sm(); this.#d = sm();
    for (let i = 0; i < 12; i++) this.u32();
  }
  /** A uniform 32-bit unsigned integer. */
  u32() {
    const t = (((this.#a + this.#b) >>> 0) + this.#d) >>> 0;
    this.#d = (this.#d + 1) >>> 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) >>> 0;
    this.#c = ((this.#c << 21) | (this.#c >>> 11)) >>> 0;
    this.#c = (this.#c + t) >>> 0;
    return t;
  }
  /** An integer in [0, n). */
  int(n) { return n <= 1 ? 0 : this.u32() % n; }
  /** An integer in [lo, hi]. */
  range(lo, hi) { return lo + this.int(hi - lo + 1); }
  /** True with probability p. */
  chance(p) { return this.u32() < p * 0x100000000; }
  pick(list) { return list[this.int(list.length)]; }
  /** An item of `list` of [weight, value] pairs, by weight. */
  weighted(list) {
    let total = 0;
    for (const [w] of list) total += w;
    let r = this.int(total);
    for (const [w, v] of list) if ((r -= w) < 0) return v;
    return list[list.length - 1][1];
  }
  bytes(n) {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}
