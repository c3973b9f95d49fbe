#include "memfd.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "common.h"
#include "uapi/kvm_gmem.h"

#ifndef __NR_memfd_secret
#define __NR_memfd_secret 447
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#endif

namespace gmem {
using namespace gmem_uapi;

// memfdCreate(name, flags) -> fd. MFD_CLOEXEC is always added.
static Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  uint32_t flags;
  if (!info[0].IsString() || !ArgU32(info, 1, &flags)) {
    if (!info.Env().IsExceptionPending())
      Napi::TypeError::New(info.Env(), "memfdCreate expects (name, flags)").ThrowAsJavaScriptException();
    return Napi::Value();
  }
  std::string name = info[0].As<Napi::String>().Utf8Value();
  int fd = static_cast<int>(syscall(SYS_memfd_create, name.c_str(), flags | MFD_CLOEXEC));
  if (fd < 0 || !AdoptFd(info.Env(), fd)) return ThrowErrno(info.Env(), errno, "memfd_create", nullptr);
  return Napi::Number::New(info.Env(), fd);
}

// memfdSecret() -> fd (O_CLOEXEC).
static Napi::Value MemfdSecret(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(syscall(__NR_memfd_secret, O_CLOEXEC));
  if (fd < 0 || !AdoptFd(info.Env(), fd)) return ThrowErrno(info.Env(), errno, "memfd_secret", nullptr);
  return Napi::Number::New(info.Env(), fd);
}

static Napi::Value AddSeals(const Napi::CallbackInfo& info) {
  int32_t fd, seals;
  if (!ArgI32(info, 0, &fd) || !ArgI32(info, 1, &seals)) return Napi::Value();
  if (fcntl(fd, F_ADD_SEALS, seals) != 0) return ThrowErrno(info.Env(), errno, "fcntl", "F_ADD_SEALS");
  return info.Env().Undefined();
}

static Napi::Value GetSeals(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return ThrowErrno(info.Env(), errno, "fcntl", "F_GET_SEALS");
  return Napi::Number::New(info.Env(), seals);
}

void InitMemfd(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("memfdSecret", Napi::Function::New(env, MemfdSecret, "memfdSecret"));
  exports.Set("addSeals", Napi::Function::New(env, AddSeals, "addSeals"));
  exports.Set("getSeals", Napi::Function::New(env, GetSeals, "getSeals"));
}

}  // namespace gmem
