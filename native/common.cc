#include "common.h"

#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "errors.h"
#include "uapi/kvm_gmem.h"

namespace gmem {

void Unref(AddonState* state) {
  if (--state->refs == 0) delete state;
}

// Replaces a mapping's file pages with anonymous memory at the same address: the
// file reference is dropped, the addresses stay valid. MAP_FIXED is safe here: the
// range is ours until the buffer's finalizer releases it.
bool Retire(Mapping* m) {
  if (!m->live) return true;
  void* r = mmap(m->address, m->length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return false;
  m->live = false;
  m->state->liveCount--;
  return true;
}

void Release(Mapping* m) {
  if (m->live) m->state->liveCount--;
  munmap(m->address, m->length);
  AddonState* state = m->state;
  state->mappings.erase(m->id);
  delete m;
  Unref(state);
}

static void CleanupState(void* data) {
  auto* state = static_cast<AddonState*>(data);
  while (!state->stoppers.empty()) {
    auto entry = *state->stoppers.begin();
    state->stoppers.erase(state->stoppers.begin());
    entry.second(entry.first);
  }
  // Node's own cleanup has already finalized the buffers of this environment (and
  // waited for the threadpool work it started): whatever is left nothing can reach.
  std::vector<Mapping*> all;
  for (auto& entry : state->mappings) all.push_back(entry.second);
  for (Mapping* m : all) Release(m);
  state->fds.drain([](int fd) { close(fd); });
  state->errorFactory.Reset();
  state->noop.Reset();
  state->envGone = true;
  // Anything asking for the state from here on gets a fresh one, not a dying one.
  napi_set_instance_data(state->env, nullptr, nullptr, nullptr);
  Unref(state);
}

AddonState& State(Napi::Env env) {
  AddonState* state = env.GetInstanceData<AddonState>();
  if (state == nullptr) {
    state = new AddonState();
    state->env = env;
    napi_set_instance_data(env, state, nullptr, nullptr);
    napi_add_env_cleanup_hook(env, CleanupState, state);
  }
  return *state;
}

bool AdoptFd(Napi::Env env, int fd) noexcept {
  try {
    State(env).fds.insert(fd);
    return true;
  } catch (...) {
    // The table could not grow: nobody would own the fd, so it goes now.
    close(fd);
    errno = ENOMEM;
    return false;
  }
}

Napi::Value CpuidTable(Napi::Env env, int fd, unsigned long request, const char* name) {
  using namespace gmem_uapi;
  for (uint32_t n = 64; n <= 4096; n *= 2) {
    std::vector<uint8_t> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2), 0);
    auto* table = reinterpret_cast<kvm_cpuid2*>(buf.data());
    table->nent = n;
    if (ioctl(fd, request, table) != 0) {
      if (errno == E2BIG) continue;
      return ThrowErrno(env, errno, "ioctl", name);
    }
    uint32_t count = std::min(table->nent, n);
    Napi::Uint32Array out = Napi::Uint32Array::New(env, static_cast<size_t>(count) * 10);
    // An empty table (a vCPU before KVM_SET_CPUID2) gives an array without storage:
    // Data() is null, and memcpy's pointers must not be, even for 0 bytes.
    if (count) memcpy(out.Data(), buf.data() + sizeof(kvm_cpuid2), static_cast<size_t>(count) * sizeof(kvm_cpuid_entry2));
    return out;
  }
  return ThrowErrno(env, E2BIG, "ioctl", name);
}

Napi::Value MsrIndexList(Napi::Env env, int fd, unsigned long request, const char* name) {
  using namespace gmem_uapi;
  // The list can grow between the two calls only if the kernel changes under us;
  // retry a few times rather than trust one answer.
  uint32_t n = 0;
  for (int attempt = 0; attempt < 4; attempt++) {
    std::vector<uint8_t> buf(sizeof(kvm_msr_list) + static_cast<size_t>(n) * sizeof(uint32_t), 0);
    auto* list = reinterpret_cast<kvm_msr_list*>(buf.data());
    list->nmsrs = n;
    if (ioctl(fd, request, list) != 0) {
      if (errno == E2BIG && list->nmsrs > n) {
        n = list->nmsrs;
        continue;
      }
      return ThrowErrno(env, errno, "ioctl", name);
    }
    uint32_t count = std::min(list->nmsrs, n);
    Napi::Uint32Array out = Napi::Uint32Array::New(env, count);
    if (count) memcpy(out.Data(), buf.data() + sizeof(kvm_msr_list), static_cast<size_t>(count) * sizeof(uint32_t));
    return out;
  }
  return ThrowErrno(env, E2BIG, "ioctl", name);
}

Napi::Value MsrIo(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  using namespace gmem_uapi;
  int32_t fd;
  Napi::TypedArray indicesArg, dataArg;
  if (!ArgI32(info, 0, &fd) || !ArgTypedArray(info, 1, napi_uint32_array, 0, &indicesArg)) return Napi::Value();
  size_t n = indicesArg.ElementLength();
  if (!ArgTypedArray(info, 2, napi_biguint64_array, n, &dataArg)) return Napi::Value();
  if (n >= KVM_MAX_IO_MSRS) return ThrowErrno(info.Env(), E2BIG, "ioctl", name);
  Napi::Uint32Array indices = indicesArg.As<Napi::Uint32Array>();
  Napi::BigUint64Array data = dataArg.As<Napi::BigUint64Array>();
  std::vector<uint8_t> buf(sizeof(kvm_msrs) + n * sizeof(kvm_msr_entry), 0);
  auto* msrs = reinterpret_cast<kvm_msrs*>(buf.data());
  auto* entries = reinterpret_cast<kvm_msr_entry*>(buf.data() + sizeof(kvm_msrs));
  msrs->nmsrs = static_cast<uint32_t>(n);
  for (size_t i = 0; i < n; i++) {
    entries[i].index = indices[i];
    entries[i].data = data[i];
  }
  int r = ioctl(fd, request, msrs);
  if (r < 0) return ThrowErrno(info.Env(), errno, "ioctl", name);
  size_t done = std::min(static_cast<size_t>(r), n);
  if (request == KVM_GET_MSRS)
    for (size_t i = 0; i < done; i++) data[i] = entries[i].data;
  return Napi::Number::New(info.Env(), static_cast<double>(done));
}

// The readers ask for the value directly (a wrong type is a cheap status, not an
// exception) and only look closer when that fails: they sit on every hot path.
bool ArgU64(const Napi::CallbackInfo& info, size_t i, uint64_t* out) { return RawU64(info.Env(), info[i], i, out); }

bool ArgI32(const Napi::CallbackInfo& info, size_t i, int32_t* out) { return RawI32(info.Env(), info[i], i, out); }

bool ArgU32(const Napi::CallbackInfo& info, size_t i, uint32_t* out) {
  if (napi_get_value_uint32(info.Env(), info[i], out) == napi_ok) return true;
  Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number").ThrowAsJavaScriptException();
  return false;
}

void RawThrowErrno(napi_env env, int err, const char* syscall, const char* ioctlName) {
  // ThrowErrno builds the KvmError through node-addon-api, which throws it as a C++
  // exception: nothing may escape a plain N-API callback, so it is caught here.
  try {
    ThrowErrno(Napi::Env(env), err, syscall, ioctlName);
  } catch (const Napi::Error& e) {
    e.ThrowAsJavaScriptException();
  } catch (...) {
    napi_throw_error(env, nullptr, syscall);
  }
}

bool RawI32(napi_env env, napi_value v, size_t index, int32_t* out) {
  if (napi_get_value_int32(env, v, out) == napi_ok) return true;
  napi_throw_type_error(env, nullptr, ("argument " + std::to_string(index) + " must be a number").c_str());
  return false;
}

bool RawU64(napi_env env, napi_value v, size_t index, uint64_t* out) {
  double d;
  if (napi_get_value_double(env, v, &d) == napi_ok) {
    if (d >= 0 && d < 18446744073709551616.0) {
      *out = static_cast<uint64_t>(d);
      return true;
    }
  } else {
    bool lossless = false;
    uint64_t u;
    if (napi_get_value_bigint_uint64(env, v, &u, &lossless) == napi_ok && lossless) {
      *out = u;
      return true;
    }
  }
  napi_throw_type_error(env, nullptr, ("argument " + std::to_string(index) + " must be an unsigned 64-bit number or bigint").c_str());
  return false;
}

void ExportRaw(Napi::Env env, Napi::Object exports, const char* name, napi_callback fn) {
  napi_value f;
  if (napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, nullptr, &f) == napi_ok) exports.Set(name, Napi::Value(env, f));
}

bool ArgTypedArray(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type, size_t minElements,
                   Napi::TypedArray* out) {
  static const char* const names[] = {"Int8Array",    "Uint8Array",    "Uint8ClampedArray", "Int16Array",
                                      "Uint16Array",  "Int32Array",    "Uint32Array",       "Float32Array",
                                      "Float64Array", "BigInt64Array", "BigUint64Array"};
  if (info[i].IsTypedArray()) {
    Napi::TypedArray array = info[i].As<Napi::TypedArray>();
    if (array.TypedArrayType() == type && array.ElementLength() >= minElements) {
      *out = array;
      return true;
    }
  }
  Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a " + names[type] + " of at least " +
                                       std::to_string(minElements) + " elements")
      .ThrowAsJavaScriptException();
  return false;
}

}  // namespace gmem
