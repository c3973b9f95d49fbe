#include "guest_memfd.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common.h"
#include "uapi/kvm_gmem.h"

namespace gmem {
using namespace gmem_uapi;

// createGuestMemfd(vmFd, size, flags) -> fd
static Napi::Value CreateGuestMemfd(const Napi::CallbackInfo& info) {
  int32_t vm;
  uint64_t size, flags;
  if (!ArgI32(info, 0, &vm) || !ArgU64(info, 1, &size) || !ArgU64(info, 2, &flags)) return Napi::Value();
  kvm_create_guest_memfd args;
  memset(&args, 0, sizeof args);
  args.size = size;
  args.flags = flags;
  int fd = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &args);
  if (fd < 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_CREATE_GUEST_MEMFD");
  // kvm_gmem_create() uses get_unused_fd_flags(0): without this a spawned child
  // would inherit guest memory.
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(info.Env(), err, "fcntl", nullptr);
  }
  AdoptFd(info.Env(), fd);
  return Napi::Number::New(info.Env(), fd);
}

// fallocateMany(fd, mode, pairs: BigUint64Array [offset, length]*) -> count.
// One native crossing for a batch of punches or allocations.
static Napi::Value FallocateMany(const Napi::CallbackInfo& info) {
  int32_t fd, mode;
  if (!ArgI32(info, 0, &fd) || !ArgI32(info, 1, &mode)) return Napi::Value();
  Napi::TypedArray array;
  if (!ArgTypedArray(info, 2, napi_biguint64_array, 0, &array)) return Napi::Value();
  Napi::BigUint64Array pairs = array.As<Napi::BigUint64Array>();
  size_t n = pairs.ElementLength() / 2;
  for (size_t i = 0; i < n; i++) {
    if (fallocate(fd, mode, static_cast<off_t>(pairs[2 * i]), static_cast<off_t>(pairs[2 * i + 1])) != 0)
      return ThrowErrnoApplied(info.Env(), errno, "fallocate", nullptr, i);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

void InitGuestMemfd(Napi::Env env, Napi::Object exports) {
  exports.Set("createGuestMemfd", Napi::Function::New(env, CreateGuestMemfd, "createGuestMemfd"));
  exports.Set("fallocateMany", Napi::Function::New(env, FallocateMany, "fallocateMany"));
}

}  // namespace gmem
