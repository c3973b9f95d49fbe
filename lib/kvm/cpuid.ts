/**
 * CPUID tables (struct kvm_cpuid_entry2): what KVM can offer a guest
 * (KVM_GET_SUPPORTED_CPUID) and what one vCPU shows (KVM_GET_CPUID2 / KVM_SET_CPUID2).
 * Entries are plain objects; {@link withCpuidLeaf} edits one leaf of a table.
 */
import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import { hex, uint } from '../core/validate';

/** One CPUID leaf (struct kvm_cpuid_entry2): the function (EAX in), index (ECX in) and the four output registers. */
export interface CpuidEntry {
  /** `function`: the leaf (EAX on input). */
  readonly function: number;
  /** `index`: the sub-leaf (ECX on input); only significant with {@link CpuidFlag.SignificantIndex}. */
  readonly index: number;
  /** `flags`: KVM_CPUID_FLAG_* bits. */
  readonly flags: number;
  /** EAX on output. */
  readonly eax: number;
  /** EBX on output. */
  readonly ebx: number;
  /** ECX on output. */
  readonly ecx: number;
  /** EDX on output. */
  readonly edx: number;
}

/** `KVM_CPUID_FLAG_*` bits of {@link CpuidEntry.flags}. */
export const CpuidFlag = {
  /** KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf has sub-leaves selected by `index`. */
  SignificantIndex: 1,
} as const;

/** Words per entry in the kernel's layout (function, index, flags, eax, ebx, ecx, edx, padding[3]). */
const WORDS = 10;
/** KVM_MAX_CPUID_ENTRIES. */
const MAX_ENTRIES = 256;
const LONG_MODE_LEAF = 0x80000001;
/** CPUID 0x80000001 EDX bit 29: LM, long mode. */
const EDX_LM = 1 << 29;

/** Decodes the kernel's table. @internal */
export function decodeCpuid(words: Uint32Array): CpuidEntry[] {
  const out: CpuidEntry[] = [];
  for (let i = 0; i + WORDS <= words.length; i += WORDS)
    out.push({
      function: words[i]!,
      index: words[i + 1]!,
      flags: words[i + 2]!,
      eax: words[i + 3]!,
      ebx: words[i + 4]!,
      ecx: words[i + 5]!,
      edx: words[i + 6]!,
    });
  return out;
}

/** Checks and encodes a table for KVM_SET_CPUID2. @internal */
export function encodeCpuid(op: string, entries: unknown): Uint32Array {
  if (!Array.isArray(entries))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: entries must be an array of CPUID entries`);
  if (entries.length > MAX_ENTRIES)
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${entries.length} entries exceed KVM_MAX_CPUID_ENTRIES (${MAX_ENTRIES})`);
  const words = new Uint32Array(entries.length * WORDS);
  const seen = new Set<string>();
  entries.forEach((e: unknown, i) => {
    if (e === null || typeof e !== 'object')
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: entries[${i}] must be a CPUID entry object`);
    const entry = e as Record<string, unknown>;
    const field = (name: keyof CpuidEntry, fallback?: number) =>
      uint(entry[name] === undefined ? fallback : entry[name], op, `entries[${i}].${name}`, 0xffffffff);
    const fn = field('function');
    const flags = field('flags', 0);
    const index = field('index', 0);
    const key = flags & CpuidFlag.SignificantIndex ? `${fn}/${index}` : `${fn}`;
    if (seen.has(key))
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: entries[${i}] repeats leaf ${hex(fn)}${flags & CpuidFlag.SignificantIndex ? ` index ${index}` : ''}`);
    seen.add(key);
    words.set([fn, index, flags, field('eax', 0), field('ebx', 0), field('ecx', 0), field('edx', 0)], i * WORDS);
  });
  return words;
}

/**
 * The entry of leaf `fn` (and sub-leaf `index` where the leaf has sub-leaves), as
 * the CPU would answer CPUID with EAX = fn, ECX = index.
 */
export function findCpuid(entries: readonly CpuidEntry[], fn: number, index = 0): CpuidEntry | undefined {
  return entries.find((e) => e.function === fn && (!(e.flags & CpuidFlag.SignificantIndex) || e.index === index));
}

/**
 * A copy of `entries` with leaf `fn` (sub-leaf `index`) changed by `patch`, or added
 * when absent (with KVM_CPUID_FLAG_SIGNIFCANT_INDEX if `index` is given and not 0).
 *
 * @example
 * // Hide the hypervisor bit (CPUID.1:ECX[31]) from the guest.
 * const leaf1 = findCpuid(table, 1)!;
 * vcpu.setCpuid(withCpuidLeaf(table, 1, 0, { ecx: (leaf1.ecx & ~(1 << 31)) >>> 0 }));
 */
export function withCpuidLeaf(
  entries: readonly CpuidEntry[],
  fn: number,
  index: number,
  patch: Partial<Pick<CpuidEntry, 'eax' | 'ebx' | 'ecx' | 'edx' | 'flags'>>,
): CpuidEntry[] {
  const op = 'withCpuidLeaf';
  if (!Array.isArray(entries)) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: entries must be an array of CPUID entries`);
  const f = uint(fn, op, 'fn', 0xffffffff);
  const idx = uint(index, op, 'index', 0xffffffff);
  if (patch === null || typeof patch !== 'object') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: patch must be an object`);
  const checked: Record<string, number> = {};
  for (const [k, v] of Object.entries(patch)) {
    if (!['eax', 'ebx', 'ecx', 'edx', 'flags'].includes(k))
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: patch.${k} is not a CPUID output (eax, ebx, ecx, edx, flags)`);
    checked[k] = uint(v, op, `patch.${k}`, 0xffffffff);
  }
  const target = findCpuid(entries, f, idx);
  if (target) return entries.map((e) => (e === target ? { ...e, ...checked } : { ...e }));
  const added: CpuidEntry = {
    function: f,
    index: idx,
    flags: idx !== 0 ? CpuidFlag.SignificantIndex : 0,
    eax: 0,
    ebx: 0,
    ecx: 0,
    edx: 0,
    ...checked,
  };
  return [...entries.map((e) => ({ ...e })), added];
}

/** True when the table offers long mode (CPUID 0x80000001 EDX bit 29, LM). */
export function cpuidHasLongMode(entries: readonly CpuidEntry[]): boolean {
  const leaf = findCpuid(entries, LONG_MODE_LEAF);
  return leaf !== undefined && (leaf.edx & EDX_LM) !== 0;
}

/**
 * The supported table made right for vCPU `id`: its APIC id in CPUID.1:EBX[31:24]
 * and the x2APIC id of leaves 0xB and 0x1F, as a VMM gives each vCPU its own. @internal
 */
export function cpuidForVcpu(supported: readonly CpuidEntry[], id: number): CpuidEntry[] {
  return supported.map((e) => {
    if (e.function === 1) return { ...e, ebx: ((e.ebx & 0x00ffffff) | ((id & 0xff) << 24)) >>> 0 };
    if (e.function === 0xb || e.function === 0x1f) return { ...e, edx: id >>> 0 };
    return { ...e };
  });
}
