/**
 * NUMA placement of guest memory: the host's nodes (from sysfs) and the checking and
 * encoding of memory policies for mbind(2). The calls themselves are
 * `view.setMemoryPolicy`, `view.getMemoryPolicy` and `view.pageNodes`.
 */
import { readFileSync } from 'node:fs';
import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import { options as readOptions } from '../core/validate';

/** Memory policy modes (include/uapi/linux/mempolicy.h MPOL_*). */
export const MemoryPolicyMode = {
  /** MPOL_DEFAULT: no policy of its own (the task's, usually "the local node"). */
  default: 0,
  /** MPOL_PREFERRED: allocate on the node given, else anywhere. */
  preferred: 1,
  /** MPOL_BIND: allocate only on the nodes given. */
  bind: 2,
  /** MPOL_INTERLEAVE: spread pages over the nodes given, page by page. */
  interleave: 3,
} as const;

/** A name of {@link MemoryPolicyMode}. */
export type MemoryPolicyModeName = keyof typeof MemoryPolicyMode;

/** A NUMA memory policy for a range of guest memory. */
export interface MemoryPolicy {
  /** How pages are placed. */
  mode: MemoryPolicyModeName;
  /**
   * The nodes: none for `'default'`, exactly one for `'preferred'`, one or more for
   * `'bind'` and `'interleave'`. Each must be a node with memory ({@link numaNodes}).
   */
  nodes?: readonly number[];
}

/** Parses a sysfs node list such as `0-1,3`. */
function parseList(text: string): number[] {
  const out: number[] = [];
  for (const part of text.trim().split(',')) {
    if (!part) continue;
    const [a, b] = part.split('-').map(Number);
    if (!Number.isInteger(a)) continue;
    for (let n = a!; n <= (Number.isInteger(b) ? b! : a!); n++) out.push(n);
  }
  return out;
}

/**
 * The NUMA nodes of this host that have memory (`/sys/devices/system/node/has_memory`),
 * ascending. A kernel without NUMA support has none listed there: that is one node, 0.
 *
 * @example
 * if (numaNodes().length > 1) view.setMemoryPolicy({ mode: 'bind', nodes: [1] });
 */
export function numaNodes(): number[] {
  for (const file of ['has_memory', 'online']) {
    try {
      const nodes = parseList(readFileSync(`/sys/devices/system/node/${file}`, 'utf8'));
      if (nodes.length) return nodes;
    } catch {
      // not there: try the next, then assume one node
    }
  }
  return [0];
}

/** The checked policy: its MPOL_* number and node mask. @internal */
export interface EncodedPolicy {
  readonly mode: MemoryPolicyModeName;
  readonly number: number;
  readonly nodes: readonly number[];
  readonly mask: BigUint64Array;
}

/** Checks a policy against the rules of its mode and this host's nodes. @internal */
export function checkPolicy(op: string, policy: unknown): EncodedPolicy {
  if (policy === undefined) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: policy { mode, nodes } is required`);
  const p = readOptions<MemoryPolicy>(policy, op, 'policy');
  const modes = Object.keys(MemoryPolicyMode) as MemoryPolicyModeName[];
  if (typeof p.mode !== 'string' || !modes.includes(p.mode))
    throw new (typeof p.mode === 'string' ? ArgumentRangeError : ArgumentTypeError)(
      typeof p.mode === 'string' ? 'ERR_INVALID_ARG_VALUE' : 'ERR_INVALID_ARG_TYPE',
      `${op}: policy.mode must be one of ${modes.map((m) => `'${m}'`).join(', ')}, got ${String(p.mode)}`,
    );
  const mode = p.mode;
  const given = p.nodes ?? [];
  if (!Array.isArray(given)) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: policy.nodes must be an array of node numbers`);
  const host = numaNodes();
  const seen = new Set<number>();
  given.forEach((n: unknown, i) => {
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0)
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: policy.nodes[${i}] must be a non-negative integer, got ${String(n)}`);
    if (!host.includes(n))
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: policy.nodes[${i}]: node ${n} has no memory on this host (nodes with memory: ${host.join(', ')})`);
    if (seen.has(n)) throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: policy.nodes[${i}] repeats node ${n}`);
    seen.add(n);
  });
  if (mode === 'default' && given.length > 0)
    throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: policy 'default' takes no nodes, got ${given.length}`);
  if (mode === 'preferred' && given.length !== 1)
    throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: policy 'preferred' takes exactly one node, got ${given.length}`);
  if ((mode === 'bind' || mode === 'interleave') && given.length === 0)
    throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: policy '${mode}' needs at least one node`);
  const nodes = [...given].sort((a, b) => a - b) as number[];
  return { mode, number: MemoryPolicyMode[mode], nodes, mask: nodeMask(nodes) };
}

/** A node mask with room for every node of this host (at least 64 bits). @internal */
export function nodeMask(nodes: readonly number[] = []): BigUint64Array {
  const highest = Math.max(63, ...numaNodes(), ...nodes);
  const mask = new BigUint64Array(Math.ceil((highest + 1) / 64));
  for (const n of nodes) mask[n >> 6] = mask[n >> 6]! | (1n << BigInt(n & 63));
  return mask;
}

/** The nodes set in a mask. @internal */
export function maskNodes(mask: BigUint64Array): number[] {
  const out: number[] = [];
  mask.forEach((word, w) => {
    for (let b = 0; b < 64; b++) if ((word >> BigInt(b)) & 1n) out.push(w * 64 + b);
  });
  return out;
}

/** The name of an MPOL_* number (modes this library does not name come back as `'mode N'`). @internal */
export function modeName(n: number): MemoryPolicyModeName | `mode ${number}` {
  const name = (Object.keys(MemoryPolicyMode) as MemoryPolicyModeName[]).find((k) => MemoryPolicyMode[k] === n);
  return name ?? `mode ${n}`;
}
