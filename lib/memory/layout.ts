/**
 * Declarative guest memory layouts: a plain JSON spec of memory files and slots,
 * validated by a schema (errors point at the bad field), built on a VM in one call,
 * described as a memory map, and torn down in one call.
 */
import { z } from 'zod';
import { ArgumentTypeError } from '../core/errors';
import type { GuestMemfd } from './guest-memfd';
import { Memfd, Seal, type SealName } from './memfd';
import type { MemoryFile } from './memory-file';
import type { MemorySlot, MemorySlotOptions } from './memory-slot';
import { renderTable } from '../tools/table';
import { hex } from '../core/validate';
import type { Vm } from '../kvm/vm';
import { guardReceivers } from '../core/receiver';

// Every unit is binary: K, KB and KiB all mean 1024 (the kernel's own spelling of
// huge page sizes, "2MB", means 2 MiB too).
const units: Record<string, bigint> = {
  '': 1n,
  ...Object.fromEntries(
    (['k', 'm', 'g', 't'] as const).flatMap((u, i) => {
      const v = 1n << BigInt(10 * (i + 1));
      return [[u, v], [`${u}b`, v], [`${u}ib`, v]] as const;
    }),
  ),
};

/** A byte count or address: a non-negative integer, or a string like `"0x100000"`, `"2MiB"`, `"2MB"`, `"4 KiB"` (units are binary). */
const quantity = z
  .union([
    z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    z.string().regex(/^\s*(0x[0-9a-fA-F]+|\d+)\s*([kKmMgGtT](i?[bB])?)?\s*$/, 'expected a number like 4096, "0x1000", "2MiB" or "2MB"'),
  ])
  .transform((v) => {
    if (typeof v === 'number') return BigInt(v);
    const m = /^\s*(0x[0-9a-fA-F]+|\d+)\s*([a-zA-Z]*)\s*$/.exec(v)!;
    return BigInt(m[1]!) * units[m[2]!.toLowerCase()]!;
  });

const memfdSpec = z
  .object({
    type: z.literal('memfd'),
    size: quantity,
    allowSealing: z.boolean().optional(),
    seals: z.array(z.enum(Object.keys(Seal) as [SealName, ...SealName[]])).optional(),
    hugetlb: z.enum(['2MB', '1GB']).optional(),
    secret: z.boolean().optional(),
  })
  .strict();

const guestMemfdSpec = z
  .object({
    type: z.literal('guest_memfd'),
    size: quantity,
    mmap: z.boolean().optional(),
    initShared: z.boolean().optional(),
  })
  .strict();

const fileRef = z.object({ file: z.string().min(1), offset: quantity.optional() }).strict();

const slotSpec = z
  .object({
    name: z.string().min(1).optional(),
    slot: z.number().int().nonnegative().optional(),
    addressSpace: z.number().int().nonnegative().optional(),
    guestPhysAddr: quantity,
    size: quantity,
    userspace: z.union([z.literal('anonymous'), fileRef]).optional(),
    private: fileRef.optional(),
    readonly: z.boolean().optional(),
    logDirtyPages: z.boolean().optional(),
  })
  .strict();

/** The schema of a layout spec (zod). */
export const LayoutSchema = z
  .object({
    $schema: z.string().optional(),
    description: z.string().optional(),
    vm: z.object({ type: z.enum(['default', 'sw-protected', 'sev', 'sev-es', 'sev-snp', 'tdx']).optional() }).strict().optional(),
    files: z.record(z.string().min(1), z.discriminatedUnion('type', [memfdSpec, guestMemfdSpec])).default({}),
    slots: z.array(slotSpec).min(1),
  })
  .strict()
  .superRefine((spec, ctx) => {
    const named = new Map<string, number>();
    spec.slots.forEach((slot, i) => {
      if (slot.name !== undefined) {
        const first = named.get(slot.name);
        if (first !== undefined)
          ctx.addIssue({ code: 'custom', path: ['slots', i, 'name'], message: `'${slot.name}' is already the name of slots[${first}]; slot names must be unique` });
        else named.set(slot.name, i);
      }
      for (const key of ['userspace', 'private'] as const) {
        const ref = slot[key];
        if (!ref || ref === 'anonymous') continue;
        const file = spec.files[ref.file];
        if (!file)
          ctx.addIssue({ code: 'custom', path: ['slots', i, key, 'file'], message: `no file named '${ref.file}' in "files"` });
        else if (key === 'private' && file.type !== 'guest_memfd')
          ctx.addIssue({ code: 'custom', path: ['slots', i, key, 'file'], message: `'${ref.file}' is a ${file.type}; private memory must be a guest_memfd` });
      }
    });
  });

/** A layout spec as written in JSON. */
export type LayoutSpec = z.input<typeof LayoutSchema>;

/** A layout spec that failed validation. `issues` point at the bad fields. */
export class LayoutError extends ArgumentTypeError {
  /** One line per problem: `slots[1].guestPhysAddr: expected ...`. */
  readonly issues: readonly string[];
  /** Builds the error from one line per problem. */
  constructor(issues: string[]) {
    super('ERR_INVALID_LAYOUT', `invalid memory layout:\n  ${issues.join('\n  ')}`);
    this.name = 'LayoutError';
    this.issues = issues;
  }
}

function pathOf(path: ReadonlyArray<PropertyKey>): string {
  return path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), '') || '(root)';
}

/** Validates a spec and returns it normalized (quantities as bigint). Throws {@link LayoutError}. */
export function parseLayout(spec: unknown): z.output<typeof LayoutSchema> {
  const result = LayoutSchema.safeParse(spec);
  if (!result.success) throw new LayoutError(result.error.issues.map((i) => `${pathOf(i.path)}: ${i.message}`));
  return result.data;
}

/** One row of a memory map. */
export interface MemoryMapEntry {
  /** Name given in the spec, or `slots[i]`. */
  readonly name: string;
  /** Slot id within its address space (the low 16 bits of the kernel's slot field). */
  readonly slot: number;
  /** Address space id (the high 16 bits of the kernel's slot field). */
  readonly addressSpace: number;
  /** First guest physical address of the slot. */
  readonly guestPhysAddr: bigint;
  /** Size of the slot in bytes. */
  readonly size: bigint;
  /** The slot's KVM_MEM_* flags by name (`'log-dirty-pages'`, `'readonly'`, `'guest-memfd'`). */
  readonly flags: readonly string[];
  /** Shared backing: `anonymous` or a named file and offset. */
  readonly userspace: { readonly kind: string; readonly file?: string; readonly offset: number };
  /** Private backing, if any. */
  readonly private?: { readonly file: string; readonly offset: number };
}

/** A memory map: entries in GPA order and a text rendering. */
export interface MemoryMap {
  /** One entry per slot, by address space then GPA. */
  readonly entries: readonly MemoryMapEntry[];
  /** The entries rendered as a table ({@link renderMemoryMap}). */
  readonly text: string;
}

function human(size: bigint): string {
  for (const [unit, v] of [['GiB', 1n << 30n], ['MiB', 1n << 20n], ['KiB', 1n << 10n]] as const)
    if (size >= v && size % v === 0n) return `${size / v} ${unit}`;
  return `${size} B`;
}

/** Renders a memory map as a table. */
export function renderMemoryMap(entries: readonly MemoryMapEntry[]): string {
  const rows = entries.map((e) => [
    `${hex(e.guestPhysAddr).padStart(12)}-${hex(e.guestPhysAddr + e.size)}`,
    human(e.size),
    String(e.slot),
    e.name,
    e.flags.join(',') || '-',
    e.userspace.file ? `${e.userspace.kind} ${e.userspace.file} @${hex(e.userspace.offset)}` : e.userspace.kind,
    e.private ? `guest_memfd ${e.private.file} @${hex(e.private.offset)}` : '-',
  ]);
  return renderTable(['GPA range', 'size', 'slot', 'name', 'flags', 'shared backing', 'private backing'], rows);
}

/**
 * A layout built on a VM: its files and slots by name.
 */
export class MemoryLayout {
  static {
    guardReceivers(this, (o) => #made in o, 'layout', 'createMemoryLayout()');
  }
  /** Brand: set by the constructor only. */
  readonly #made = true;
  /** The VM the layout lives in. */
  readonly vm: Vm;
  /** Files by name. */
  readonly files: Readonly<Record<string, MemoryFile>>;
  /** Slots by name (the spec's `name`, or `slots[i]`). */
  readonly slots: Readonly<Record<string, MemorySlot>>;

  /** @internal */
  static create(vm: Vm, files: Record<string, MemoryFile>, slots: Record<string, MemorySlot>): MemoryLayout {
    return new MemoryLayout(vm, files, slots);
  }

  /** Made by the library only. */
  private constructor(vm: Vm, files: Record<string, MemoryFile>, slots: Record<string, MemorySlot>) {
    this.vm = vm;
    this.files = files;
    this.slots = slots;
  }

  /** The memory map: GPA ranges, slot ids, backing file and offset, flags. */
  describe(): MemoryMap {
    const fileName = new Map<MemoryFile, string>(Object.entries(this.files).map(([n, f]) => [f, n]));
    const entries = Object.entries(this.slots)
      // A slot removed since (or replaced under its id) is no longer part of the map.
      .filter(([, s]) => !s.removed && this.vm.slotTable.get(s.addressSpace, s.id) === s)
      .map(([name, s]): MemoryMapEntry => {
        const d = s.describe();
        const u = s.userspace;
        return {
          name,
          slot: d.slot,
          addressSpace: d.addressSpace,
          guestPhysAddr: d.guestPhysAddr,
          size: d.size,
          flags: d.flags,
          userspace: u.file ? { kind: u.kind, file: fileName.get(u.file) ?? u.file.description, offset: u.offset } : { kind: u.kind, offset: 0 },
          ...(s.guestMemfd
            ? { private: { file: fileName.get(s.guestMemfd.file) ?? s.guestMemfd.file.description, offset: s.guestMemfd.offset } }
            : {}),
        };
      })
      .sort((a, b) => a.addressSpace - b.addressSpace || (a.guestPhysAddr < b.guestPhysAddr ? -1 : 1));
    return { entries, text: renderMemoryMap(entries) };
  }

  /** Removes the slots, then closes the files. Idempotent. */
  async close(): Promise<void> {
    for (const s of Object.values(this.slots)) if (!s.removed && !this.vm.closed) await this.vm.removeMemorySlot(s);
    for (const f of Object.values(this.files)) if (f.bindings.size === 0) f.close();
  }

  /** Same as `close()`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Builds a layout on `vm`: creates the files (applying seals), then adds the slots in
 * order. If any step fails, everything built so far is torn down and the error
 * names the spec entry that failed.
 *
 * @example
 * const layout = await createMemoryLayout(vm, {
 *   files: { ram: { type: 'memfd', size: '2MiB' }, priv: { type: 'guest_memfd', size: '2MiB' } },
 *   slots: [{ guestPhysAddr: 0, size: '2MiB', userspace: { file: 'ram' }, private: { file: 'priv' } }],
 * });
 * console.log(layout.describe().text);
 */
export async function createMemoryLayout(vm: Vm, spec: LayoutSpec | unknown): Promise<MemoryLayout> {
  const s = parseLayout(spec);
  const files: Record<string, MemoryFile> = {};
  const slots: Record<string, MemorySlot> = {};
  const fail = async (where: string, e: unknown): Promise<never> => {
    await MemoryLayout.create(vm, files, slots).close().catch(() => {});
    if (e instanceof Error) e.message = `${where}: ${e.message}`;
    throw e;
  };
  for (const [name, f] of Object.entries(s.files)) {
    try {
      if (f.type === 'memfd') {
        const m = Memfd.create(name, {
          size: f.size,
          allowSealing: f.allowSealing ?? (f.seals?.length ?? 0) > 0,
          ...(f.hugetlb ? { hugetlb: f.hugetlb } : {}),
          ...(f.secret ? { secret: true } : {}),
        });
        files[name] = m;
        if (f.seals?.length) m.seal(f.seals);
      } else {
        files[name] = vm.createGuestMemfd({ size: f.size, mmap: f.mmap ?? false, initShared: f.initShared ?? false });
      }
    } catch (e) {
      await fail(`files.${name}`, e);
    }
  }
  for (const [i, slot] of s.slots.entries()) {
    const name = slot.name ?? `slots[${i}]`;
    const options: MemorySlotOptions = { guestPhysAddr: slot.guestPhysAddr, size: slot.size };
    if (slot.slot !== undefined) options.slot = slot.slot;
    if (slot.addressSpace !== undefined) options.addressSpace = slot.addressSpace;
    if (slot.readonly !== undefined) options.readonly = slot.readonly;
    if (slot.logDirtyPages !== undefined) options.logDirtyPages = slot.logDirtyPages;
    if (slot.userspace === 'anonymous') options.userspace = 'anonymous';
    else if (slot.userspace) {
      options.userspace = files[slot.userspace.file]!;
      if (slot.userspace.offset !== undefined) options.userspaceOffset = slot.userspace.offset;
    }
    if (slot.private)
      options.guestMemfd = {
        file: files[slot.private.file] as GuestMemfd,
        ...(slot.private.offset !== undefined ? { offset: slot.private.offset } : {}),
      };
    try {
      slots[name] = vm.addMemorySlot(options);
    } catch (e) {
      await fail(`slots[${i}]${slot.name ? ` (${slot.name})` : ''}`, e);
    }
  }
  return MemoryLayout.create(vm, files, slots);
}
