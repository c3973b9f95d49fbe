#include "vm.h"

#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "common.h"
#include "uapi/kvm_gmem.h"

namespace gmem {
using namespace gmem_uapi;

// setUserMemoryRegion2(vmFd, slot, flags, guestPhysAddr, memorySize, userspaceAddr,
//                      guestMemfdOffset, guestMemfd)
static Napi::Value SetUserMemoryRegion2(const Napi::CallbackInfo& info) {
  int32_t fd, gmemFd;
  uint32_t slot, flags;
  uint64_t gpa, size, uaddr, offset;
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &slot) || !ArgU32(info, 2, &flags) ||
      !ArgU64(info, 3, &gpa) || !ArgU64(info, 4, &size) || !ArgU64(info, 5, &uaddr) ||
      !ArgU64(info, 6, &offset) || !ArgI32(info, 7, &gmemFd))
    return Napi::Value();
  kvm_userspace_memory_region2 region;
  memset(&region, 0, sizeof region);
  region.slot = slot;
  region.flags = flags;
  region.guest_phys_addr = gpa;
  region.memory_size = size;
  region.userspace_addr = uaddr;
  region.guest_memfd_offset = offset;
  region.guest_memfd = static_cast<uint32_t>(gmemFd);
  if (ioctl(fd, KVM_SET_USER_MEMORY_REGION2, &region) != 0)
    return ThrowErrno(info.Env(), errno, "ioctl", "KVM_SET_USER_MEMORY_REGION2");
  return info.Env().Undefined();
}

// setUserMemoryRegion(vmFd, slot, flags, guestPhysAddr, memorySize, userspaceAddr)
static Napi::Value SetUserMemoryRegion(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint32_t slot, flags;
  uint64_t gpa, size, uaddr;
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &slot) || !ArgU32(info, 2, &flags) ||
      !ArgU64(info, 3, &gpa) || !ArgU64(info, 4, &size) || !ArgU64(info, 5, &uaddr))
    return Napi::Value();
  kvm_userspace_memory_region region = {slot, flags, gpa, size, uaddr};
  if (ioctl(fd, KVM_SET_USER_MEMORY_REGION, &region) != 0)
    return ThrowErrno(info.Env(), errno, "ioctl", "KVM_SET_USER_MEMORY_REGION");
  return info.Env().Undefined();
}

// setMemoryAttributes(vmFd, address, size, attributes)
static Napi::Value SetMemoryAttributes(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint64_t address, size, attributes;
  if (!ArgI32(info, 0, &fd) || !ArgU64(info, 1, &address) || !ArgU64(info, 2, &size) ||
      !ArgU64(info, 3, &attributes))
    return Napi::Value();
  kvm_memory_attributes attrs = {address, size, attributes, 0};
  if (RetryEintr([&] { return ioctl(fd, KVM_SET_MEMORY_ATTRIBUTES, &attrs); }) != 0)
    return ThrowErrno(info.Env(), errno, "ioctl", "KVM_SET_MEMORY_ATTRIBUTES");
  return info.Env().Undefined();
}

// setMemoryAttributesMany(vmFd, triples: BigUint64Array [address, size, attributes]*)
// -> number of ranges applied. Stops at the first failure and reports how far it
// got through the error's `applied` property, so the caller can say which
// sub-ranges took effect.
static Napi::Value SetMemoryAttributesMany(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  Napi::TypedArray array;
  if (!ArgTypedArray(info, 1, napi_biguint64_array, 0, &array)) return Napi::Value();
  Napi::BigUint64Array triples = array.As<Napi::BigUint64Array>();
  size_t n = triples.ElementLength() / 3;
  for (size_t i = 0; i < n; i++) {
    kvm_memory_attributes attrs = {triples[3 * i], triples[3 * i + 1], triples[3 * i + 2], 0};
    if (RetryEintr([&] { return ioctl(fd, KVM_SET_MEMORY_ATTRIBUTES, &attrs); }) != 0)
      return ThrowErrnoApplied(info.Env(), errno, "ioctl", "KVM_SET_MEMORY_ATTRIBUTES", i);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

// getDirtyLog(vmFd, slot, bitmap: BigUint64Array) fills one bit per page.
static Napi::Value GetDirtyLog(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint32_t slot;
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &slot)) return Napi::Value();
  Napi::TypedArray array;
  if (!ArgTypedArray(info, 2, napi_biguint64_array, 1, &array)) return Napi::Value();
  Napi::BigUint64Array bitmap = array.As<Napi::BigUint64Array>();
  kvm_dirty_log log;
  memset(&log, 0, sizeof log);
  log.slot = slot;
  log.dirty_bitmap = reinterpret_cast<uint64_t>(bitmap.Data());
  if (ioctl(fd, KVM_GET_DIRTY_LOG, &log) != 0)
    return ThrowErrno(info.Env(), errno, "ioctl", "KVM_GET_DIRTY_LOG");
  return info.Env().Undefined();
}

static Napi::Value CreateVcpu(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint32_t id;
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &id)) return Napi::Value();
  int vcpu = ioctl(fd, KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (vcpu < 0 || !AdoptFd(info.Env(), vcpu)) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_CREATE_VCPU");
  return Napi::Number::New(info.Env(), vcpu);
}

// enableCap(fd, cap, flags, arg0, arg1, arg2, arg3): on a VM or vCPU fd.
static Napi::Value EnableCap(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint32_t cap, flags;
  uint64_t args[4];
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &cap) || !ArgU32(info, 2, &flags)) return Napi::Value();
  for (int i = 0; i < 4; i++)
    if (!ArgU64(info, 3 + i, &args[i])) return Napi::Value();
  kvm_enable_cap ec;
  memset(&ec, 0, sizeof ec);
  ec.cap = cap;
  ec.flags = flags;
  memcpy(ec.args, args, sizeof args);
  if (ioctl(fd, KVM_ENABLE_CAP, &ec) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_ENABLE_CAP");
  return info.Env().Undefined();
}

static Napi::Value CreateIrqchip(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  if (ioctl(fd, KVM_CREATE_IRQCHIP, 0) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_CREATE_IRQCHIP");
  return info.Env().Undefined();
}

// createPit2(vmFd, flags)
static Napi::Value CreatePit2(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint32_t flags;
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &flags)) return Napi::Value();
  kvm_pit_config config;
  memset(&config, 0, sizeof config);
  config.flags = flags;
  if (ioctl(fd, KVM_CREATE_PIT2, &config) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_CREATE_PIT2");
  return info.Env().Undefined();
}

// irqLine(vmFd, irq, level, withStatus) -> status (KVM_IRQ_LINE_STATUS) or undefined
// (KVM_IRQ_LINE).
static Napi::Value IrqLine(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint32_t irq, level;
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &irq) || !ArgU32(info, 2, &level)) return Napi::Value();
  bool withStatus = info[3].ToBoolean().Value();
  kvm_irq_level line;
  memset(&line, 0, sizeof line);
  line.irq = irq;
  line.level = level;
  if (withStatus) {
    if (ioctl(fd, KVM_IRQ_LINE_STATUS, &line) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_IRQ_LINE_STATUS");
    return Napi::Number::New(info.Env(), line.status);
  }
  if (ioctl(fd, KVM_IRQ_LINE, &line) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_IRQ_LINE");
  return info.Env().Undefined();
}

// setTssAddr(vmFd, addr): the argument is the address itself, not a pointer.
static Napi::Value SetTssAddr(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint64_t addr;
  if (!ArgI32(info, 0, &fd) || !ArgU64(info, 1, &addr)) return Napi::Value();
  if (ioctl(fd, KVM_SET_TSS_ADDR, static_cast<unsigned long>(addr)) != 0)
    return ThrowErrno(info.Env(), errno, "ioctl", "KVM_SET_TSS_ADDR");
  return info.Env().Undefined();
}

// setIdentityMapAddr(vmFd, addr): the argument is a pointer to a __u64.
static Napi::Value SetIdentityMapAddr(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint64_t addr;
  if (!ArgI32(info, 0, &fd) || !ArgU64(info, 1, &addr)) return Napi::Value();
  if (ioctl(fd, KVM_SET_IDENTITY_MAP_ADDR, &addr) != 0)
    return ThrowErrno(info.Env(), errno, "ioctl", "KVM_SET_IDENTITY_MAP_ADDR");
  return info.Env().Undefined();
}

// irqfd(vmFd, eventFd, gsi, flags, resampleFd)
static Napi::Value Irqfd(const Napi::CallbackInfo& info) {
  int32_t fd, eventFd, resampleFd;
  uint32_t gsi, flags;
  if (!ArgI32(info, 0, &fd) || !ArgI32(info, 1, &eventFd) || !ArgU32(info, 2, &gsi) || !ArgU32(info, 3, &flags) ||
      !ArgI32(info, 4, &resampleFd))
    return Napi::Value();
  kvm_irqfd args;
  memset(&args, 0, sizeof args);
  args.fd = static_cast<uint32_t>(eventFd);
  args.gsi = gsi;
  args.flags = flags;
  args.resamplefd = static_cast<uint32_t>(resampleFd);
  if (ioctl(fd, KVM_IRQFD, &args) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_IRQFD");
  return info.Env().Undefined();
}

// ioeventfd(vmFd, datamatch, addr, len, eventFd, flags)
static Napi::Value Ioeventfd(const Napi::CallbackInfo& info) {
  int32_t fd, eventFd;
  uint64_t datamatch, addr;
  uint32_t len, flags;
  if (!ArgI32(info, 0, &fd) || !ArgU64(info, 1, &datamatch) || !ArgU64(info, 2, &addr) || !ArgU32(info, 3, &len) ||
      !ArgI32(info, 4, &eventFd) || !ArgU32(info, 5, &flags))
    return Napi::Value();
  kvm_ioeventfd args;
  memset(&args, 0, sizeof args);
  args.datamatch = datamatch;
  args.addr = addr;
  args.len = len;
  args.fd = eventFd;
  args.flags = flags;
  if (ioctl(fd, KVM_IOEVENTFD, &args) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_IOEVENTFD");
  return info.Env().Undefined();
}

void InitVm(Napi::Env env, Napi::Object exports) {
  exports.Set("createIrqchip", Napi::Function::New(env, CreateIrqchip, "createIrqchip"));
  exports.Set("createPit2", Napi::Function::New(env, CreatePit2, "createPit2"));
  exports.Set("irqLine", Napi::Function::New(env, IrqLine, "irqLine"));
  exports.Set("setTssAddr", Napi::Function::New(env, SetTssAddr, "setTssAddr"));
  exports.Set("setIdentityMapAddr", Napi::Function::New(env, SetIdentityMapAddr, "setIdentityMapAddr"));
  exports.Set("irqfd", Napi::Function::New(env, Irqfd, "irqfd"));
  exports.Set("ioeventfd", Napi::Function::New(env, Ioeventfd, "ioeventfd"));
  exports.Set("setUserMemoryRegion2", Napi::Function::New(env, SetUserMemoryRegion2, "setUserMemoryRegion2"));
  exports.Set("setUserMemoryRegion", Napi::Function::New(env, SetUserMemoryRegion, "setUserMemoryRegion"));
  exports.Set("setMemoryAttributes", Napi::Function::New(env, SetMemoryAttributes, "setMemoryAttributes"));
  exports.Set("setMemoryAttributesMany",
              Napi::Function::New(env, SetMemoryAttributesMany, "setMemoryAttributesMany"));
  exports.Set("getDirtyLog", Napi::Function::New(env, GetDirtyLog, "getDirtyLog"));
  exports.Set("createVcpu", Napi::Function::New(env, CreateVcpu, "createVcpu"));
  exports.Set("enableCap", Napi::Function::New(env, EnableCap, "enableCap"));
}

}  // namespace gmem
