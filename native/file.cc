#include "file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "common.h"

namespace gmem {

// close(fd): idempotence lives in TypeScript; here an fd the addon does not own is
// refused, so a stale number can never close somebody else's file.
static napi_value Close(napi_env env, napi_callback_info cb) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, cb, &argc, argv, nullptr, nullptr);
  int32_t fd;
  if (!RawI32(env, argv[0], 0, &fd)) return nullptr;
  bool owned = State(Napi::Env(env)).fds.erase(fd);
  if (owned) close(fd);  // Linux releases the fd even when close reports EINTR/EIO.
  napi_value result;
  napi_get_boolean(env, owned, &result);
  return result;
}

// fallocate(fd, mode, offset, length) -> undefined
static napi_value Fallocate(napi_env env, napi_callback_info cb) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, cb, &argc, argv, nullptr, nullptr);
  int32_t fd, mode;
  uint64_t offset, length;
  if (!RawI32(env, argv[0], 0, &fd) || !RawI32(env, argv[1], 1, &mode) || !RawU64(env, argv[2], 2, &offset) ||
      !RawU64(env, argv[3], 3, &length))
    return nullptr;
  // Allocation gives up with EINTR when a signal is pending; what it allocated stays,
  // so calling again goes on from there.
  if (RetryEintr([&] { return fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length)); }) != 0)
    RawThrowErrno(env, errno, "fallocate", nullptr);
  return nullptr;
}

static Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint64_t size;
  if (!ArgI32(info, 0, &fd) || !ArgU64(info, 1, &size)) return Napi::Value();
  if (ftruncate(fd, static_cast<off_t>(size)) != 0)
    return ThrowErrno(info.Env(), errno, "ftruncate", nullptr);
  return info.Env().Undefined();
}

// fstat(fd, out: Float64Array(5)) fills [size, blocks(512B), blksize, mode, ino].
static Napi::Value Fstat(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  Napi::TypedArray array;
  if (!ArgTypedArray(info, 1, napi_float64_array, 5, &array)) return Napi::Value();
  struct stat st;
  if (fstat(fd, &st) != 0) return ThrowErrno(info.Env(), errno, "fstat", nullptr);
  double* out = array.As<Napi::Float64Array>().Data();
  out[0] = static_cast<double>(st.st_size);
  out[1] = static_cast<double>(st.st_blocks);
  out[2] = static_cast<double>(st.st_blksize);
  out[3] = static_cast<double>(st.st_mode);
  out[4] = static_cast<double>(st.st_ino);
  return info.Env().Undefined();
}

static Napi::Value IsCloexec(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) return ThrowErrno(info.Env(), errno, "fcntl", nullptr);
  return Napi::Boolean::New(info.Env(), (flags & FD_CLOEXEC) != 0);
}

static Napi::Value OwnedFdCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(State(info.Env()).fds.size()));
}

// ownsFd(fd) -> boolean: whether the addon holds this fd (tests check the collector closed theirs).
static Napi::Value OwnsFd(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  return Napi::Boolean::New(info.Env(), State(info.Env()).fds.contains(fd));
}

void InitFile(Napi::Env env, Napi::Object exports) {
  ExportRaw(env, exports, "close", Close);
  ExportRaw(env, exports, "fallocate", Fallocate);
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("fstat", Napi::Function::New(env, Fstat, "fstat"));
  exports.Set("isCloexec", Napi::Function::New(env, IsCloexec, "isCloexec"));
  exports.Set("ownedFdCount", Napi::Function::New(env, OwnedFdCount, "ownedFdCount"));
  exports.Set("ownsFd", Napi::Function::New(env, OwnsFd, "ownsFd"));
}

}  // namespace gmem
