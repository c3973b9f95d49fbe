// Shared plumbing for every native object: per-environment ownership registry,
// argument readers and the KvmError factory handed over from TypeScript.
#ifndef GUEST_MEMFD_COMMON_H
#define GUEST_MEMFD_COMMON_H

#include <napi.h>

#include <cstdint>
#include <unordered_map>
#include <unordered_set>

namespace gmem {

struct Mapping {
  void* address;
  size_t length;
};

// Everything one environment (main thread or worker) owns. The env cleanup hook
// closes and unmaps whatever the TypeScript owners did not, so a worker that exits
// without closing leaks nothing; it is a safety net, not the mechanism.
struct AddonState {
  Napi::FunctionReference errorFactory;
  // Objects that run threads over mappings (vCPU runners): stopped before any
  // mapping is released, whatever order the environment tears down in.
  std::unordered_map<void*, void (*)(void*)> stoppers;
  std::unordered_set<int> fds;
  std::unordered_map<uint32_t, Mapping> mappings;
  uint32_t nextMappingId = 1;
};

AddonState& State(Napi::Env env);

// Throws a KvmError built by the TypeScript factory (code, errno, syscall, ioctl).
// Returns an empty value so callers can `return ThrowErrno(...)`.
Napi::Value ThrowErrno(Napi::Env env, int err, const char* syscall, const char* ioctl);

// The same for batch calls: the error's `applied` property counts the items the
// kernel accepted before this failure.
Napi::Value ThrowErrnoApplied(Napi::Env env, int err, const char* syscall, const char* ioctl, size_t applied);

// Registers an fd the addon just received from the kernel so it has an owner before
// anything else can fail.
void AdoptFd(Napi::Env env, int fd);

// Argument readers. TypeScript validates values before calling; these only check
// JavaScript types so a wrong call from JS cannot crash the process.
bool ArgU64(const Napi::CallbackInfo& info, size_t i, uint64_t* out);
bool ArgI32(const Napi::CallbackInfo& info, size_t i, int32_t* out);
bool ArgU32(const Napi::CallbackInfo& info, size_t i, uint32_t* out);

}  // namespace gmem

#endif
