#include "common.h"

#include <sys/mman.h>
#include <unistd.h>

namespace gmem {

static void CleanupState(void* data) {
  auto* state = static_cast<AddonState*>(data);
  while (!state->stoppers.empty()) {
    auto entry = *state->stoppers.begin();
    state->stoppers.erase(state->stoppers.begin());
    entry.second(entry.first);
  }
  for (auto& entry : state->mappings) munmap(entry.second.address, entry.second.length);
  state->mappings.clear();
  state->fds.drain([](int fd) { close(fd); });
}

AddonState& State(Napi::Env env) {
  AddonState* state = env.GetInstanceData<AddonState>();
  if (state == nullptr) {
    // Deliberately never freed: ArrayBuffer finalizers of views may run after the
    // env cleanup hook and must still find the registry (empty by then).
    state = new AddonState();
    napi_set_instance_data(env, state, nullptr, nullptr);
    napi_add_env_cleanup_hook(env, CleanupState, state);
  }
  return *state;
}

void AdoptFd(Napi::Env env, int fd) { State(env).fds.insert(fd); }

bool ArgU64(const Napi::CallbackInfo& info, size_t i, uint64_t* out) {
  Napi::Value v = info[i];
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d > 18446744073709551615.0) goto bad;
    *out = static_cast<uint64_t>(d);
    return true;
  }
  if (v.IsBigInt()) {
    bool lossless = false;
    *out = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (lossless) return true;
  }
bad:
  Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be an unsigned 64-bit number or bigint")
      .ThrowAsJavaScriptException();
  return false;
}

bool ArgI32(const Napi::CallbackInfo& info, size_t i, int32_t* out) {
  if (!info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = info[i].As<Napi::Number>().Int32Value();
  return true;
}

bool ArgU32(const Napi::CallbackInfo& info, size_t i, uint32_t* out) {
  if (!info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = info[i].As<Napi::Number>().Uint32Value();
  return true;
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
