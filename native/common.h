// Shared plumbing for every native object: per-environment ownership registry,
// argument readers and the KvmError factory handed over from TypeScript.
#ifndef GUEST_MEMFD_COMMON_H
#define GUEST_MEMFD_COMMON_H

#include <napi.h>

#include <cerrno>
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
  bool contains(int fd) const { return fd >= 0 && static_cast<size_t>(fd) < owned_.size() && owned_[fd]; }
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

// Calls `call` again while it fails with EINTR: a signal landed while the kernel
// waited (KVM_CREATE_VM takes every lock of the address space and gives up with
// EINTR whenever a signal is pending; a sampling profiler's SIGPROF is enough). Only
// for calls that are safe to repeat. Bounded, so a signal storm cannot hang the
// caller: after kEintrRetries attempts the EINTR is reported.
constexpr int kEintrRetries = 10000;
template <typename F>
inline auto RetryEintr(F&& call) -> decltype(call()) {
  auto r = call();
  for (int i = 1; i < kEintrRetries && r < 0 && errno == EINTR; i++) r = call();
  return r;
}

struct AddonState;

// One mapping handed to JavaScript as an external ArrayBuffer. Unmapping from
// JavaScript (or closing the file) replaces the memory with anonymous zero pages at
// the same address instead of releasing it: native code outside this addon (the libuv
// threadpool in crypto, zlib, fs) may still be using a buffer over it, and Node keeps
// such a buffer reachable until its job is done. The address range goes back to the
// kernel when V8 frees the buffer's backing store, when nothing can reach it.
struct Mapping {
  void* address;
  size_t length;
  uint32_t id;
  bool live;  // maps its file (or slot memory) for JavaScript; false once unmapped
  AddonState* state;
};

// Everything one environment (main thread or worker) owns. The env cleanup hook
// closes and unmaps whatever the TypeScript owners did not, so a worker that exits
// without closing leaks nothing; it is a safety net, not the mechanism. The state is
// freed once the environment is gone and the last buffer finalizer has run.
struct AddonState {
  Napi::FunctionReference errorFactory;
  // A function that does nothing: calling it tells whether JS can still run here.
  Napi::FunctionReference noop;
  // Objects that run threads over mappings (vCPU runners): stopped before any
  // mapping is released, whatever order the environment tears down in.
  std::unordered_map<void*, void (*)(void*)> stoppers;
  FdSet fds;
  std::unordered_map<uint32_t, Mapping*> mappings;
  uint32_t nextMappingId = 1;
  size_t liveCount = 0;
  size_t refs = 1;  // the environment, plus one per mapping not yet finalized
  bool envGone = false;
  napi_env env = nullptr;
};

// Replaces a mapping's file pages with anonymous memory at the same address.
bool Retire(Mapping* m);

// Returns the address range to the kernel and forgets the record (its buffer is gone).
void Release(Mapping* m);

// Drops one reference; frees the state at zero.
void Unref(AddonState* state);

AddonState& State(Napi::Env env);

// Throws a KvmError built by the TypeScript factory (code, errno, syscall, ioctl).
// Returns an empty value so callers can `return ThrowErrno(...)`.
Napi::Value ThrowErrno(Napi::Env env, int err, const char* syscall, const char* ioctl);

// The same for batch calls: the error's `applied` property counts the items the
// kernel accepted before this failure.
Napi::Value ThrowErrnoApplied(Napi::Env env, int err, const char* syscall, const char* ioctl, size_t applied);

// Registers an fd the addon just received from the kernel so it has an owner before
// anything else can fail. Never throws: if it cannot be recorded, the fd is closed and
// false comes back with errno ENOMEM (report it as the creating call's failure).
bool AdoptFd(Napi::Env env, int fd) noexcept;

// Argument readers. TypeScript validates values before calling; these only check
// JavaScript types so a wrong call from JS cannot crash the process.
bool ArgU64(const Napi::CallbackInfo& info, size_t i, uint64_t* out);
bool ArgI32(const Napi::CallbackInfo& info, size_t i, int32_t* out);
bool ArgU32(const Napi::CallbackInfo& info, size_t i, uint32_t* out);
// A typed array of `type` with at least `minElements` elements.
bool ArgTypedArray(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type, size_t minElements,
                   Napi::TypedArray* out);

// KVM_GET_SUPPORTED_CPUID / KVM_GET_CPUID2 on `fd`: grows the table while the kernel
// says E2BIG. Returns the entries as a Uint32Array of 10 words each (the kernel's
// struct kvm_cpuid_entry2), or throws.
Napi::Value CpuidTable(Napi::Env env, int fd, unsigned long request, const char* name);

// KVM_GET_MSR_INDEX_LIST / KVM_GET_MSR_FEATURE_INDEX_LIST on the system fd: asks for
// the count (the kernel answers E2BIG with it), then the list. Returns a Uint32Array.
Napi::Value MsrIndexList(Napi::Env env, int fd, unsigned long request, const char* name);

// msrIo(fd, indices: Uint32Array, data: BigUint64Array) for KVM_GET_MSRS and
// KVM_SET_MSRS (vCPU fd, or the system fd for feature MSRs): one struct kvm_msrs of
// indices.length entries. Returns the number of entries the kernel processed (it
// stops at the first it cannot handle); a GET fills `data` for those.
Napi::Value MsrIo(const Napi::CallbackInfo& info, unsigned long request, const char* name);

// Hot entry points are plain N-API callbacks: no node-addon-api CallbackInfo (it
// copies a six-slot argument vector and wraps every value). These readers take the
// value straight and throw the same TypeError as the checked ones when it is not a
// plain number (or a bigint, for the 64-bit one).
bool RawI32(napi_env env, napi_value v, size_t index, int32_t* out);
// ThrowErrno for plain N-API callbacks: leaves the KvmError pending, throws nothing in C++.
void RawThrowErrno(napi_env env, int err, const char* syscall, const char* ioctlName);
bool RawU64(napi_env env, napi_value v, size_t index, uint64_t* out);

// Registers a plain N-API callback as `name` on `exports`.
void ExportRaw(Napi::Env env, Napi::Object exports, const char* name, napi_callback fn);

}  // namespace gmem

#endif
