#include "userfaultfd.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "common.h"
#include "uapi/kvm_gmem.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

namespace gmem {
using namespace gmem_uapi;

// uffdRegisterErrno(address, length, mode) -> errno of UFFDIO_REGISTER (0: the
// range registered, and was unregistered again). The userfaultfd lives only inside
// this call (close-on-exec, closed before returning), so it needs no owner object.
// A failure before the registration (no userfaultfd, the API handshake) throws.
static Napi::Value UffdRegisterErrno(const Napi::CallbackInfo& info) {
  uint64_t address, length, mode;
  if (!ArgU64(info, 0, &address) || !ArgU64(info, 1, &length) || !ArgU64(info, 2, &mode)) return Napi::Value();
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  // Without vm.unprivileged_userfaultfd, unprivileged users may still handle
  // faults of user mode only, which is all a registration needs.
  if (uffd < 0 && errno == EPERM) uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  if (uffd < 0) return ThrowErrno(info.Env(), errno, "userfaultfd", nullptr);
  uffdio_api api = {UFFD_API, 0, 0};
  if (ioctl(uffd, UFFDIO_API_IOCTL, &api) != 0) {
    int err = errno;
    close(uffd);
    return ThrowErrno(info.Env(), err, "ioctl", "UFFDIO_API");
  }
  uffdio_register reg = {{address, length}, mode, 0};
  int err = ioctl(uffd, UFFDIO_REGISTER_IOCTL, &reg) == 0 ? 0 : errno;
  if (err == 0) {
    uffdio_range range = {address, length};
    ioctl(uffd, UFFDIO_UNREGISTER_IOCTL, &range);
  }
  close(uffd);
  return Napi::Number::New(info.Env(), err);
}

void InitUserfaultfd(Napi::Env env, Napi::Object exports) {
  exports.Set("uffdRegisterErrno", Napi::Function::New(env, UffdRegisterErrno, "uffdRegisterErrno"));
  exports.Set("uffdModeMissing", Napi::Number::New(env, static_cast<double>(UFFDIO_REGISTER_MODE_MISSING)));
  exports.Set("uffdModeMinor", Napi::Number::New(env, static_cast<double>(UFFDIO_REGISTER_MODE_MINOR)));
}

}  // namespace gmem
