// Shared plumbing for every native object: per-environment ownership registry,
// argument readers and the KvmError factory handed over from TypeScript.
#ifndef GUEST_MEMFD_COMMON_H
#define GUEST_MEMFD_COMMON_H

#include <napi.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace gmem {

// The fds this environment owns, as a bitmap indexed by fd: fds are small dense
// integers, and create/close sits on hot paths where a hash set would allocate.
class FdSet {
 public:
  void insert(int fd) {
    if (fd < 0) return;
    if (static_cast<size_t>(fd) >= owned_.size()) owned_.resize(static_cast<size_t>(fd) * 2 + 64, 0);
    if (!owned_[fd]) {
      owned_[fd] = 1;
      count_++;
    }
  }
  bool erase(int fd) {
    if (fd < 0 || static_cast<size_t>(fd) >= owned_.size() || !owned_[fd]) return false;
    owned_[fd] = 0;
    count_--;
    return true;
  }
  size_t size() const { return count_; }
  template <typename F>
  void drain(F&& close_fd) {
    for (size_t fd = 0; fd < owned_.size(); fd++)
      if (owned_[fd]) {
        owned_[fd] = 0;
        close_fd(static_cast<int>(fd));
      }
    count_ = 0;
  }

 private:
  std::vector<uint8_t> owned_;
  size_t count_ = 0;
};

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
  FdSet fds;
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
// A typed array of `type` with at least `minElements` elements.
bool ArgTypedArray(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type, size_t minElements,
                   Napi::TypedArray* out);

}  // namespace gmem

#endif
