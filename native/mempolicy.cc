#include "mempolicy.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "common.h"
#include "uapi/kvm_gmem.h"

namespace gmem {
using namespace gmem_uapi;

// The kernel reads `maxnode - 1` bits (mm/mempolicy.c get_nodes() drops one): pass
// one more than the mask holds.
static unsigned long MaxNode(const Napi::BigUint64Array& mask) { return mask.ElementLength() * 64 + 1; }

// mbind(address, length, mode, nodemask: BigUint64Array, flags)
static Napi::Value Mbind(const Napi::CallbackInfo& info) {
  uint64_t address, length;
  int32_t mode;
  uint32_t flags;
  Napi::TypedArray array;
  if (!ArgU64(info, 0, &address) || !ArgU64(info, 1, &length) || !ArgI32(info, 2, &mode) ||
      !ArgTypedArray(info, 3, napi_biguint64_array, 1, &array) || !ArgU32(info, 4, &flags))
    return Napi::Value();
  Napi::BigUint64Array mask = array.As<Napi::BigUint64Array>();
  bool empty = true;
  for (size_t i = 0; i < mask.ElementLength(); i++)
    if (mask[i] != 0) empty = false;
  // MPOL_DEFAULT wants no mask; MPOL_PREFERRED with none means "the local node".
  long r = syscall(SYS_mbind, static_cast<uintptr_t>(address), static_cast<unsigned long>(length), mode,
                   empty ? nullptr : mask.Data(), empty ? 0ul : MaxNode(mask), flags);
  if (r != 0) return ThrowErrno(info.Env(), errno, "mbind", nullptr);
  return info.Env().Undefined();
}

// addressPolicy(address, outMask: BigUint64Array) -> mode: the policy that governs
// the page at `address` (for a file mapping with a shared policy, the file's).
static Napi::Value AddressPolicy(const Napi::CallbackInfo& info) {
  uint64_t address;
  Napi::TypedArray array;
  if (!ArgU64(info, 0, &address) || !ArgTypedArray(info, 1, napi_biguint64_array, 1, &array)) return Napi::Value();
  Napi::BigUint64Array mask = array.As<Napi::BigUint64Array>();
  int mode = -1;
  long r = syscall(SYS_get_mempolicy, &mode, mask.Data(), MaxNode(mask), static_cast<uintptr_t>(address),
                   GMEM_MPOL_F_ADDR);
  if (r != 0) return ThrowErrno(info.Env(), errno, "get_mempolicy", nullptr);
  return Napi::Number::New(info.Env(), mode);
}

// filePolicy(fd, offset, outMask: BigUint64Array) -> mode: the policy a fresh
// mapping of the page at `offset` sees. Different from the policy of an existing
// mapping when the kernel keeps a policy set by mbind in that mapping only (a file
// whose vm_ops lack set_policy), so this tells whether the file itself has it. The
// page is mapped read-only and never touched: nothing is allocated.
static Napi::Value FilePolicy(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint64_t offset;
  Napi::TypedArray array;
  if (!ArgI32(info, 0, &fd) || !ArgU64(info, 1, &offset) || !ArgTypedArray(info, 2, napi_biguint64_array, 1, &array))
    return Napi::Value();
  Napi::BigUint64Array mask = array.As<Napi::BigUint64Array>();
  long page = sysconf(_SC_PAGESIZE);
  void* p = mmap(nullptr, static_cast<size_t>(page), PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return ThrowErrno(info.Env(), errno, "mmap", nullptr);
  int mode = -1;
  long r = syscall(SYS_get_mempolicy, &mode, mask.Data(), MaxNode(mask), p, GMEM_MPOL_F_ADDR);
  int err = errno;
  munmap(p, static_cast<size_t>(page));
  if (r != 0) return ThrowErrno(info.Env(), err, "get_mempolicy", nullptr);
  return Napi::Number::New(info.Env(), mode);
}

// pageNodes(address, pages, outStatus: Int32Array): move_pages(2) of this process
// with no target nodes, which only reports where each page is: a node number, or a
// negative errno (-ENOENT: no page mapped there yet, -EFAULT: nothing mapped).
static Napi::Value PageNodes(const Napi::CallbackInfo& info) {
  uint64_t address;
  uint32_t pages;
  Napi::TypedArray array;
  if (!ArgU64(info, 0, &address) || !ArgU32(info, 1, &pages) || !ArgTypedArray(info, 2, napi_int32_array, pages, &array))
    return Napi::Value();
  Napi::Int32Array status = array.As<Napi::Int32Array>();
  long page = sysconf(_SC_PAGESIZE);
  std::vector<void*> addresses(pages);
  for (uint32_t i = 0; i < pages; i++)
    addresses[i] = reinterpret_cast<void*>(static_cast<uintptr_t>(address) + static_cast<uintptr_t>(i) * page);
  long r = syscall(SYS_move_pages, 0, static_cast<unsigned long>(pages), addresses.data(), nullptr, status.Data(), 0);
  if (r < 0) return ThrowErrno(info.Env(), errno, "move_pages", nullptr);
  return info.Env().Undefined();
}

void InitMempolicy(Napi::Env env, Napi::Object exports) {
  exports.Set("mbind", Napi::Function::New(env, Mbind, "mbind"));
  exports.Set("addressPolicy", Napi::Function::New(env, AddressPolicy, "addressPolicy"));
  exports.Set("filePolicy", Napi::Function::New(env, FilePolicy, "filePolicy"));
  exports.Set("pageNodes", Napi::Function::New(env, PageNodes, "pageNodes"));
}

}  // namespace gmem
