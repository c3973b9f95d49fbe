/**
 * A VM's eventfd bindings (KVM_IRQFD, KVM_IOEVENTFD): argument checks, the
 * kernel's clash and deassign rules applied before the ioctl, and the record of
 * what is bound, so an eventfd knows it is in use and a VM can drop its bindings
 * when it closes.
 * @internal
 */
import { ArgumentRangeError, ArgumentTypeError, StateError } from '../core/errors';
import { bool, hex, options as readOptions, u64, uint } from '../core/validate';
import { EventFd, type EventFdRegistration } from './eventfd';

/**
 * GSIs the in-kernel irqchip's default routing connects: the PIC's 16 inputs and the
 * IOAPIC's 24 pins (arch/x86/kvm/irq_comm.c, KVM_IOAPIC_NUM_PINS). A GSI outside it
 * has no route: an interrupt raised there goes nowhere.
 */
export const IRQCHIP_GSI_COUNT = 24;

/** Options of `vm.irqfd`. */
export interface IrqfdOptions {
  /** KVM_IRQFD_FLAG_DEASSIGN: remove the binding of this eventfd to this GSI. */
  deassign?: boolean;
  /**
   * KVM_IRQFD_FLAG_RESAMPLE: level-triggered. Writing the eventfd asserts the GSI
   * until the guest acknowledges the interrupt (EOI); then the GSI is de-asserted and
   * this second eventfd is signalled, so the VMM can check its device and raise the
   * line again. Needs KVM_CAP_IRQFD_RESAMPLE.
   */
  resample?: EventFd;
}

/** An irqfd: writing `eventfd` raises `gsi`. */
export interface IrqfdBinding {
  /** The eventfd that raises the interrupt. */
  readonly eventfd: EventFd;
  /** The GSI it raises. */
  readonly gsi: number;
  /** The resample eventfd of a level-triggered irqfd. */
  readonly resample: EventFd | undefined;
}

/** Options of `vm.ioeventfd`. */
export interface IoeventfdOptions {
  /** The guest physical address (MMIO) or port (`pio: true`) written. */
  addr: number | bigint;
  /** Width of the write matched: 1, 2, 4 or 8 bytes; 0 for any width (MMIO and PIO, needs KVM_CAP_IOEVENTFD_NO_LENGTH). */
  len: 0 | 1 | 2 | 4 | 8;
  /** Only a write of this value signals (KVM_IOEVENTFD_FLAG_DATAMATCH); default: any value. */
  datamatch?: number | bigint;
  /** The address is an I/O port (KVM_IOEVENTFD_FLAG_PIO); default MMIO. */
  pio?: boolean;
  /** The eventfd signalled. */
  eventfd: EventFd;
  /** KVM_IOEVENTFD_FLAG_DEASSIGN: remove the binding that matches every other field. */
  deassign?: boolean;
}

/** An ioeventfd: a guest write to `addr` signals `eventfd` instead of exiting. */
export interface IoeventfdBinding {
  /** MMIO GPA or port. */
  readonly addr: bigint;
  /** Write width matched (0: any). */
  readonly len: number;
  /** The value matched, or undefined for any. */
  readonly datamatch: bigint | undefined;
  /** True for port I/O. */
  readonly pio: boolean;
  /** The eventfd signalled. */
  readonly eventfd: EventFd;
}

/** The checked arguments of an irqfd call. @internal */
export interface IrqfdRequest extends IrqfdBinding {
  readonly deassign: boolean;
}

/** The checked arguments of an ioeventfd call. @internal */
export interface IoeventfdRequest extends IoeventfdBinding {
  readonly deassign: boolean;
}

function openEventFd(op: string, value: unknown, arg: string): EventFd {
  if (!(value instanceof EventFd)) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: ${arg} must be an EventFd`);
  if (value.closed) throw new StateError('ERR_CLOSED', `${op}: ${arg} is closed`);
  return value;
}

/** Checks `vm.irqfd` arguments. @internal */
export function checkIrqfd(op: string, eventfd: unknown, gsi: unknown, options: unknown): IrqfdRequest {
  const efd = openEventFd(op, eventfd, 'eventfd');
  const g = uint(gsi, op, 'gsi', 0xffffffff);
  if (g >= IRQCHIP_GSI_COUNT)
    throw new ArgumentRangeError(
      'ERR_OUT_OF_RANGE',
      `${op}: gsi ${g} has no route: the in-kernel irqchip's default routing covers GSIs 0..${IRQCHIP_GSI_COUNT - 1} (PIC 0..15, IOAPIC 0..23)`,
    );
  const o = readOptions<IrqfdOptions>(options, op);
  const deassign = bool(o.deassign, false, op, 'options.deassign');
  let resample: EventFd | undefined;
  if (o.resample !== undefined) {
    if (deassign)
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: options.resample goes with an assignment; a deassign finds the irqfd by eventfd and GSI`);
    resample = openEventFd(op, o.resample, 'options.resample');
    if (resample === efd) throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: options.resample must be another eventfd than the one raising the interrupt`);
  }
  return { eventfd: efd, gsi: g, resample, deassign };
}

const IOEVENTFD_LENGTHS = [0, 1, 2, 4, 8];

/** Checks `vm.ioeventfd` arguments. @internal */
export function checkIoeventfd(op: string, options: unknown): IoeventfdRequest {
  if (options === undefined) throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options { addr, len, eventfd, ... } are required`);
  const o = readOptions<IoeventfdOptions>(options, op);
  const eventfd = openEventFd(op, o.eventfd, 'options.eventfd');
  const addr = u64(o.addr, op, 'options.addr');
  if (typeof o.len !== 'number' || !IOEVENTFD_LENGTHS.includes(o.len))
    throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: options.len must be 0, 1, 2, 4 or 8, got ${String(o.len)}`);
  const len = o.len;
  const pio = bool(o.pio, false, op, 'options.pio');
  const deassign = bool(o.deassign, false, op, 'options.deassign');
  let datamatch: bigint | undefined;
  if (o.datamatch !== undefined) {
    datamatch = u64(o.datamatch, op, 'options.datamatch');
    if (len === 0)
      throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: options.datamatch needs a width: with len 0 any write matches, whatever its value`);
    if (len < 8 && datamatch >> BigInt(len * 8) !== 0n)
      throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: options.datamatch ${hex(datamatch)} does not fit in len ${len} byte${len > 1 ? 's' : ''}; no write could match it`);
  }
  if (addr + BigInt(len) > 1n << 64n) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: options.addr ${hex(addr)} + len ${len} wraps past 2^64`);
  if (pio && addr + BigInt(Math.max(len, 1)) > 0x10000n)
    throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: port ${hex(addr)} + len ${len} is past 0xffff, the last I/O port`);
  return { addr, len, datamatch, pio, eventfd, deassign };
}

/** `PIO 0x50, 1 byte, value 0x7` style, for messages. @internal */
export function describeIoeventfd(b: IoeventfdBinding): string {
  const width = b.len === 0 ? 'any width' : `${b.len} byte${b.len > 1 ? 's' : ''}`;
  return `${b.pio ? 'PIO' : 'MMIO'} ${hex(b.addr)}, ${width}, ${b.datamatch === undefined ? 'any value' : `value ${hex(b.datamatch)}`}`;
}

/** What one VM has bound. @internal */
export class EventFdBindings {
  readonly #irqfds = new Map<EventFd, { binding: IrqfdBinding; registrations: EventFdRegistration[] }>();
  readonly #ioeventfds = new Map<IoeventfdBinding, EventFdRegistration>();

  constructor(readonly vm: object) {}

  get irqfds(): IrqfdBinding[] {
    return [...this.#irqfds.values()].map((e) => e.binding);
  }

  get ioeventfds(): IoeventfdBinding[] {
    return [...this.#ioeventfds.keys()];
  }

  /** The kernel's irqfd rules (EBUSY, a deassign that matches nothing), checked first. */
  checkIrqfd(op: string, r: IrqfdRequest): void {
    const existing = this.#irqfds.get(r.eventfd);
    if (r.deassign) {
      if (!existing || existing.binding.gsi !== r.gsi)
        throw new StateError(
          'ERR_NOT_REGISTERED',
          `${op}: this eventfd is not an irqfd of GSI ${r.gsi} in this VM${existing ? ` (it raises GSI ${existing.binding.gsi})` : ''}; the kernel would ignore the deassign`,
        );
      return;
    }
    if (existing)
      throw new StateError('ERR_IN_USE', `${op}: this eventfd already raises GSI ${existing.binding.gsi} in this VM; an eventfd is one irqfd per VM (deassign it first)`);
  }

  addIrqfd(r: IrqfdRequest): void {
    const binding: IrqfdBinding = { eventfd: r.eventfd, gsi: r.gsi, resample: r.resample };
    const registrations: EventFdRegistration[] = [{ kind: 'irqfd', description: `GSI ${r.gsi}`, vm: this.vm }];
    r.eventfd.attach(registrations[0]!);
    if (r.resample) {
      registrations.push({ kind: 'irqfd-resample', description: `GSI ${r.gsi}`, vm: this.vm });
      r.resample.attach(registrations[1]!);
    }
    this.#irqfds.set(r.eventfd, { binding, registrations });
  }

  removeIrqfd(eventfd: EventFd): void {
    const entry = this.#irqfds.get(eventfd);
    if (!entry) return;
    this.#irqfds.delete(eventfd);
    entry.binding.eventfd.detach(entry.registrations[0]!);
    if (entry.binding.resample) entry.binding.resample.detach(entry.registrations[1]!);
  }

  #matching(r: IoeventfdRequest): IoeventfdBinding | undefined {
    for (const b of this.#ioeventfds.keys())
      if (b.pio === r.pio && b.addr === r.addr && b.len === r.len && b.eventfd === r.eventfd && b.datamatch === r.datamatch) return b;
    return undefined;
  }

  /** The kernel's ioeventfd rules (EEXIST for a clash, ENOENT for a deassign that matches nothing), checked first. */
  checkIoeventfd(op: string, r: IoeventfdRequest): void {
    if (r.deassign) {
      if (!this.#matching(r))
        throw new StateError('ERR_NOT_REGISTERED', `${op}: no ioeventfd of this eventfd at ${describeIoeventfd(r)} in this VM (a deassign must repeat every field of the assignment)`);
      return;
    }
    // virt/kvm/eventfd.c ioeventfd_check_collision: the same bus and address, and
    // either side matching any length, or the same length with either side
    // matching any value or both the same value.
    for (const b of this.#ioeventfds.keys()) {
      if (b.pio !== r.pio || b.addr !== r.addr) continue;
      if (b.len === 0 || r.len === 0 || (b.len === r.len && (b.datamatch === undefined || r.datamatch === undefined || b.datamatch === r.datamatch)))
        throw new StateError('ERR_IOEVENTFD_CLASH', `${op}: ${describeIoeventfd(r)} clashes with the ioeventfd at ${describeIoeventfd(b)}; a write must select one eventfd`);
    }
  }

  addIoeventfd(r: IoeventfdRequest): void {
    const binding: IoeventfdBinding = { addr: r.addr, len: r.len, datamatch: r.datamatch, pio: r.pio, eventfd: r.eventfd };
    const registration: EventFdRegistration = { kind: 'ioeventfd', description: describeIoeventfd(binding), vm: this.vm };
    this.#ioeventfds.set(binding, registration);
    r.eventfd.attach(registration);
  }

  removeIoeventfd(r: IoeventfdRequest): void {
    const b = this.#matching(r);
    if (!b) return;
    const registration = this.#ioeventfds.get(b)!;
    this.#ioeventfds.delete(b);
    b.eventfd.detach(registration);
  }

  /** The VM is gone, and the kernel dropped every binding with it. */
  clear(): void {
    for (const efd of [...this.#irqfds.keys()]) this.removeIrqfd(efd);
    for (const [b, registration] of [...this.#ioeventfds]) {
      this.#ioeventfds.delete(b);
      b.eventfd.detach(registration);
    }
  }
}
