#include "kvm.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>

#include "common.h"
#include "uapi/kvm_gmem.h"

namespace gmem {
using namespace gmem_uapi;

static Napi::Value KvmOpen(const Napi::CallbackInfo& info) {
  if (!info[0].IsString()) {
    Napi::TypeError::New(info.Env(), "kvmOpen expects a path string").ThrowAsJavaScriptException();
    return Napi::Value();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0 || !AdoptFd(info.Env(), fd)) return ThrowErrno(info.Env(), errno, "open", nullptr);
  return Napi::Number::New(info.Env(), fd);
}

// ioctl(fd, KVM_*, int) for the argument-less system/VM ioctls that return a number.
static Napi::Value IntIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  int32_t fd;
  uint64_t arg = 0;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  if (info.Length() > 1 && !ArgU64(info, 1, &arg)) return Napi::Value();
  int r = ioctl(fd, request, static_cast<unsigned long>(arg));
  if (r < 0) return ThrowErrno(info.Env(), errno, "ioctl", name);
  return Napi::Number::New(info.Env(), r);
}

static Napi::Value GetApiVersion(const Napi::CallbackInfo& info) {
  return IntIoctl(info, KVM_GET_API_VERSION, "KVM_GET_API_VERSION");
}

// checkExtension(fd, cap) -> value: the hottest query, a plain N-API callback.
static napi_value CheckExtension(napi_env env, napi_callback_info cb) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, cb, &argc, argv, nullptr, nullptr);
  int32_t fd;
  uint64_t cap;
  if (!RawI32(env, argv[0], 0, &fd) || !RawU64(env, argv[1], 1, &cap)) return nullptr;
  int r = ioctl(fd, KVM_CHECK_EXTENSION, static_cast<unsigned long>(cap));
  if (r < 0) {
    RawThrowErrno(env, errno, "ioctl", "KVM_CHECK_EXTENSION");
    return nullptr;
  }
  napi_value result;
  napi_create_int32(env, r, &result);
  return result;
}

static Napi::Value GetVcpuMmapSize(const Napi::CallbackInfo& info) {
  return IntIoctl(info, KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE");
}

static Napi::Value CreateVm(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint32_t type;
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &type)) return Napi::Value();
  int vm = RetryEintr([&] { return ioctl(fd, KVM_CREATE_VM, static_cast<unsigned long>(type)); });
  if (vm < 0 || !AdoptFd(info.Env(), vm)) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_CREATE_VM");
  return Napi::Number::New(info.Env(), vm);
}

// getSupportedCpuid(kvmFd) -> Uint32Array (10 words per entry)
static Napi::Value GetSupportedCpuid(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  return CpuidTable(info.Env(), fd, KVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID");
}

// getMsrIndexList(kvmFd) -> Uint32Array: the MSRs KVM_GET/SET_MSRS handle on a vCPU.
static Napi::Value GetMsrIndexList(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  return MsrIndexList(info.Env(), fd, KVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST");
}

// getMsrFeatureIndexList(kvmFd) -> Uint32Array: the feature MSRs KVM_GET_MSRS reads on the system fd.
static Napi::Value GetMsrFeatureIndexList(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  return MsrIndexList(info.Env(), fd, KVM_GET_MSR_FEATURE_INDEX_LIST, "KVM_GET_MSR_FEATURE_INDEX_LIST");
}

// getMsrFeatures(kvmFd, indices, data) -> count: KVM_GET_MSRS on the system fd.
static Napi::Value GetMsrFeatures(const Napi::CallbackInfo& info) { return MsrIo(info, KVM_GET_MSRS, "KVM_GET_MSRS"); }

void InitKvm(Napi::Env env, Napi::Object exports) {
  exports.Set("getMsrIndexList", Napi::Function::New(env, GetMsrIndexList, "getMsrIndexList"));
  exports.Set("getMsrFeatureIndexList", Napi::Function::New(env, GetMsrFeatureIndexList, "getMsrFeatureIndexList"));
  exports.Set("getMsrFeatures", Napi::Function::New(env, GetMsrFeatures, "getMsrFeatures"));
  exports.Set("getSupportedCpuid", Napi::Function::New(env, GetSupportedCpuid, "getSupportedCpuid"));
  exports.Set("kvmOpen", Napi::Function::New(env, KvmOpen, "kvmOpen"));
  exports.Set("getApiVersion", Napi::Function::New(env, GetApiVersion, "getApiVersion"));
  ExportRaw(env, exports, "checkExtension", CheckExtension);
  exports.Set("getVcpuMmapSize", Napi::Function::New(env, GetVcpuMmapSize, "getVcpuMmapSize"));
  exports.Set("createVm", Napi::Function::New(env, CreateVm, "createVm"));
}

}  // namespace gmem
