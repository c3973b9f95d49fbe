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
static napi_value CreateGuestMemfd(napi_env env, napi_callback_info cb) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, cb, &argc, argv, nullptr, nullptr);
  int32_t vm;
  uint64_t size, flags;
  if (!RawI32(env, argv[0], 0, &vm) || !RawU64(env, argv[1], 1, &size) || !RawU64(env, argv[2], 2, &flags)) return nullptr;
  kvm_create_guest_memfd args;
  memset(&args, 0, sizeof args);
  args.size = size;
  args.flags = flags;
  int fd = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &args);
  if (fd < 0) {
    RawThrowErrno(env, errno, "ioctl", "KVM_CREATE_GUEST_MEMFD");
    return nullptr;
  }
  // kvm_gmem_create() uses get_unused_fd_flags(0): without this a spawned child
  // would inherit guest memory.
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
    int err = errno;
    close(fd);
    RawThrowErrno(env, err, "fcntl", nullptr);
    return nullptr;
  }
  if (!AdoptFd(Napi::Env(env), fd)) {
    RawThrowErrno(env, errno, "ioctl", "KVM_CREATE_GUEST_MEMFD");
    return nullptr;
  }
  napi_value result;
  napi_create_int32(env, fd, &result);
  return result;
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
    if (RetryEintr([&] { return fallocate(fd, mode, static_cast<off_t>(pairs[2 * i]), static_cast<off_t>(pairs[2 * i + 1])); }) != 0)
      return ThrowErrnoApplied(info.Env(), errno, "fallocate", nullptr, i);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

void InitGuestMemfd(Napi::Env env, Napi::Object exports) {
  ExportRaw(env, exports, "createGuestMemfd", CreateGuestMemfd);
  exports.Set("fallocateMany", Napi::Function::New(env, FallocateMany, "fallocateMany"));
}

}  // namespace gmem
