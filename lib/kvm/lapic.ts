/**
 * The local APIC's register page as KVM_GET_LAPIC / KVM_SET_LAPIC carry it (struct
 * kvm_lapic_state: 1024 bytes, each 32-bit register at its xAPIC MMIO offset), with
 * typed access to the registers a VMM sets up: ID, TPR, SVR and the LVT entries.
 */
import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';
import { hex, uint } from '../core/validate';
import { guardReceivers } from '../core/receiver';

/** Size of struct kvm_lapic_state (KVM_APIC_REG_SIZE). */
export const LAPIC_STATE_SIZE = 1024;

/** Byte offsets of the local APIC registers (Intel SDM vol. 3, table 11-1). */
export const LapicRegister = {
  /** Local APIC ID (xAPIC: bits 31:24). */
  Id: 0x20,
  /** Version (bits 7:0), max LVT entry (bits 23:16). */
  Version: 0x30,
  /** Task priority register. */
  Tpr: 0x80,
  /** Arbitration priority. */
  Apr: 0x90,
  /** Processor priority. */
  Ppr: 0xa0,
  /** End of interrupt (write-only for the guest). */
  Eoi: 0xb0,
  /** Logical destination. */
  Ldr: 0xd0,
  /** Destination format. */
  Dfr: 0xe0,
  /** Spurious interrupt vector register: vector (7:0), APIC software enable (bit 8). */
  Svr: 0xf0,
  /** In-service register, 8 registers of 32 bits at 0x100..0x170. */
  Isr: 0x100,
  /** Trigger mode register, 0x180..0x1f0. */
  Tmr: 0x180,
  /** Interrupt request register, 0x200..0x270. */
  Irr: 0x200,
  /** Error status. */
  Esr: 0x280,
  /** LVT corrected machine check interrupt. */
  LvtCmci: 0x2f0,
  /** Interrupt command, low half. */
  IcrLow: 0x300,
  /** Interrupt command, high half (destination). */
  IcrHigh: 0x310,
  /** LVT timer. */
  LvtTimer: 0x320,
  /** LVT thermal sensor. */
  LvtThermal: 0x330,
  /** LVT performance monitoring counters. */
  LvtPerf: 0x340,
  /** LVT LINT0 (where the 8259 PIC's ExtINT arrives). */
  LvtLint0: 0x350,
  /** LVT LINT1 (usually NMI). */
  LvtLint1: 0x360,
  /** LVT error. */
  LvtError: 0x370,
  /** Timer initial count. */
  TimerInitialCount: 0x380,
  /** Timer current count. */
  TimerCurrentCount: 0x390,
  /** Timer divide configuration. */
  TimerDivide: 0x3e0,
} as const;

/** The local vector table entries, by name. */
export type LvtName = 'timer' | 'thermal' | 'perf' | 'lint0' | 'lint1' | 'error' | 'cmci';

const LVT_OFFSETS: Record<LvtName, number> = {
  timer: LapicRegister.LvtTimer,
  thermal: LapicRegister.LvtThermal,
  perf: LapicRegister.LvtPerf,
  lint0: LapicRegister.LvtLint0,
  lint1: LapicRegister.LvtLint1,
  error: LapicRegister.LvtError,
  cmci: LapicRegister.LvtCmci,
};

/** LVT delivery modes (bits 10:8). */
export type LvtDeliveryMode = 'fixed' | 'smi' | 'nmi' | 'init' | 'extint' | 'reserved';
const DELIVERY_MODES: readonly LvtDeliveryMode[] = ['fixed', 'reserved', 'smi', 'reserved', 'nmi', 'init', 'reserved', 'extint'];

/** LVT timer modes (bits 18:17 of the timer entry). */
export type LvtTimerMode = 'one-shot' | 'periodic' | 'tsc-deadline' | 'reserved';
const TIMER_MODES: readonly LvtTimerMode[] = ['one-shot', 'periodic', 'tsc-deadline', 'reserved'];

/** One LVT entry, decoded. */
export interface LvtEntry {
  /** Bits 7:0: the vector delivered (for fixed delivery). */
  readonly vector: number;
  /** Bits 10:8: how the interrupt is delivered. */
  readonly deliveryMode: LvtDeliveryMode;
  /** Bit 12: an interrupt is pending delivery (read-only). */
  readonly pending: boolean;
  /** Bit 13 (LINT0/1): input pin polarity, true for active low. */
  readonly activeLow: boolean;
  /** Bit 14 (LINT0/1): remote IRR of a level-triggered interrupt (read-only). */
  readonly remoteIrr: boolean;
  /** Bit 15 (LINT0/1): level triggered (else edge). */
  readonly levelTriggered: boolean;
  /** Bit 16: masked. */
  readonly masked: boolean;
  /** Bits 18:17, timer entry only. */
  readonly timerMode?: LvtTimerMode;
}

/** What `setLvt` may change (the read-only bits are the APIC's). */
export type LvtPatch = Partial<Pick<LvtEntry, 'vector' | 'deliveryMode' | 'activeLow' | 'levelTriggered' | 'masked'>> & {
  /** Timer entry only. */
  timerMode?: Exclude<LvtTimerMode, 'reserved'>;
};

const SVR_ENABLE = 1 << 8;

/**
 * A local APIC state (struct kvm_lapic_state), as `vcpu.getLapic()` returns it and
 * `vcpu.setLapic()` takes it: the raw 1024 bytes (`bytes`) and typed accessors over
 * them. Accessors write into `bytes`; nothing reaches the vCPU until `setLapic`.
 *
 * @example
 * const lapic = vcpu.getLapic();                     // KVM_GET_LAPIC
 * lapic.enabled = true;                              // SVR bit 8
 * lapic.setLvt('lint0', { deliveryMode: 'extint', masked: false });
 * vcpu.setLapic(lapic);                              // KVM_SET_LAPIC
 */
export class LapicState {
  static {
    guardReceivers(this, (o) => #bits in o, 'lapic', 'vcpu.getLapic()');
  }
  /** The register page, little-endian 32-bit registers at their xAPIC offsets. */
  readonly bytes: Buffer;

  /** A copy of `bytes` (1024 of them), or an all-zero page. */
  constructor(bytes?: Uint8Array) {
    if (bytes === undefined) {
      this.bytes = Buffer.alloc(LAPIC_STATE_SIZE);
      return;
    }
    if (!(bytes instanceof Uint8Array))
      throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', 'LapicState: bytes must be a Uint8Array of 1024 bytes');
    if (bytes.length !== LAPIC_STATE_SIZE)
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `LapicState: bytes must be 1024 bytes (struct kvm_lapic_state), got ${bytes.length}`);
    this.bytes = Buffer.from(bytes);
  }

  /** The 32-bit register at `offset` (a {@link LapicRegister} value: 16-byte aligned, below 0x400). */
  register(offset: number): number {
    return this.bytes.readUInt32LE(checkOffset('lapic.register', offset));
  }

  /** Sets the 32-bit register at `offset`. */
  setRegister(offset: number, value: number): void {
    const op = 'lapic.setRegister';
    this.bytes.writeUInt32LE(uint(value, op, 'value', 0xffffffff), checkOffset(op, offset));
  }

  /** APIC ID (xAPIC layout: bits 31:24 of the ID register). */
  get id(): number {
    return this.register(LapicRegister.Id) >>> 24;
  }
  set id(value: number) {
    const v = uint(value, 'lapic.id', 'value', 0xff);
    this.setRegister(LapicRegister.Id, ((this.register(LapicRegister.Id) & 0x00ffffff) | (v << 24)) >>> 0);
  }

  /** APIC version (bits 7:0 of the version register; 0x14 on KVM's xAPIC). */
  get version(): number {
    return this.register(LapicRegister.Version) & 0xff;
  }

  /** Task priority (bits 7:0 of the TPR). */
  get tpr(): number {
    return this.register(LapicRegister.Tpr) & 0xff;
  }
  set tpr(value: number) {
    this.setRegister(LapicRegister.Tpr, uint(value, 'lapic.tpr', 'value', 0xff));
  }

  /** The spurious interrupt vector register, raw. */
  get svr(): number {
    return this.register(LapicRegister.Svr);
  }
  set svr(value: number) {
    this.setRegister(LapicRegister.Svr, uint(value, 'lapic.svr', 'value', 0xffffffff));
  }

  /** SVR bit 8: the APIC is software-enabled (fixed interrupts are accepted). */
  get enabled(): boolean {
    return (this.svr & SVR_ENABLE) !== 0;
  }
  set enabled(on: boolean) {
    if (typeof on !== 'boolean') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', 'lapic.enabled must be a boolean');
    this.svr = on ? (this.svr | SVR_ENABLE) >>> 0 : (this.svr & ~SVR_ENABLE) >>> 0;
  }

  /** SVR bits 7:0: the spurious vector. */
  get spuriousVector(): number {
    return this.svr & 0xff;
  }
  set spuriousVector(vector: number) {
    const v = uint(vector, 'lapic.spuriousVector', 'value', 0xff);
    this.svr = ((this.svr & ~0xff) | v) >>> 0;
  }

  /** One LVT entry, decoded. */
  lvt(name: LvtName): LvtEntry {
    const raw = this.register(lvtOffset('lapic.lvt', name));
    const entry: LvtEntry = {
      vector: raw & 0xff,
      deliveryMode: DELIVERY_MODES[(raw >>> 8) & 7]!,
      pending: ((raw >>> 12) & 1) === 1,
      activeLow: ((raw >>> 13) & 1) === 1,
      remoteIrr: ((raw >>> 14) & 1) === 1,
      levelTriggered: ((raw >>> 15) & 1) === 1,
      masked: ((raw >>> 16) & 1) === 1,
    };
    return name === 'timer' ? { ...entry, timerMode: TIMER_MODES[(raw >>> 17) & 3]! } : entry;
  }

  /** Changes fields of one LVT entry; the others keep their values. */
  setLvt(name: LvtName, patch: LvtPatch): void {
    const op = 'lapic.setLvt';
    const offset = lvtOffset(op, name);
    if (patch === null || typeof patch !== 'object') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: patch must be an object`);
    let raw = this.register(offset);
    const bit = (n: number, on: unknown, field: string) => {
      if (typeof on !== 'boolean') throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: patch.${field} must be a boolean`);
      raw = on ? raw | (1 << n) : raw & ~(1 << n);
    };
    for (const [k, v] of Object.entries(patch)) {
      switch (k) {
        case 'vector':
          raw = (raw & ~0xff) | uint(v, op, 'patch.vector', 0xff);
          break;
        case 'deliveryMode': {
          const code = DELIVERY_MODES.indexOf(v as LvtDeliveryMode);
          if (typeof v !== 'string' || code < 0 || v === 'reserved')
            throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: patch.deliveryMode must be one of 'fixed', 'smi', 'nmi', 'init', 'extint', got ${String(v)}`);
          raw = (raw & ~(7 << 8)) | (code << 8);
          break;
        }
        case 'activeLow':
          bit(13, v, k);
          break;
        case 'levelTriggered':
          bit(15, v, k);
          break;
        case 'masked':
          bit(16, v, k);
          break;
        case 'timerMode': {
          const code = TIMER_MODES.indexOf(v as LvtTimerMode);
          if (name !== 'timer') throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: patch.timerMode applies to the timer entry only, not '${name}'`);
          if (typeof v !== 'string' || code < 0 || v === 'reserved')
            throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: patch.timerMode must be 'one-shot', 'periodic' or 'tsc-deadline', got ${String(v)}`);
          raw = (raw & ~(3 << 17)) | (code << 17);
          break;
        }
        default:
          throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: patch.${k} is not a writable LVT field (vector, deliveryMode, activeLow, levelTriggered, masked, timerMode)`);
      }
    }
    this.setRegister(offset, raw >>> 0);
  }

  /** Vectors whose IRR bit is set: requested, not yet delivered. */
  requestedVectors(): number[] {
    return this.#bits(LapicRegister.Irr);
  }

  /** Vectors whose ISR bit is set: delivered, not yet acknowledged by an EOI. */
  inServiceVectors(): number[] {
    return this.#bits(LapicRegister.Isr);
  }

  #bits(base: number): number[] {
    const out: number[] = [];
    for (let word = 0; word < 8; word++) {
      const v = this.bytes.readUInt32LE(base + word * 16);
      for (let b = 0; b < 32; b++) if ((v >>> b) & 1) out.push(word * 32 + b);
    }
    return out;
  }
}

function checkOffset(op: string, offset: number): number {
  const o = uint(offset, op, 'offset', LAPIC_STATE_SIZE - 4);
  if (o % 16 !== 0) throw new ArgumentRangeError('ERR_UNALIGNED', `${op}: offset ${hex(o)} is not a register offset (registers are 16-byte aligned)`);
  return o;
}

function lvtOffset(op: string, name: unknown): number {
  if (typeof name !== 'string' || !(name in LVT_OFFSETS))
    throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: name must be one of ${Object.keys(LVT_OFFSETS).map((n) => `'${n}'`).join(', ')}, got ${String(name)}`);
  return LVT_OFFSETS[name as LvtName];
}
