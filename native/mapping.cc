#include "mapping.h"

#include <sys/mman.h>

#include <cerrno>

#include "common.h"

namespace gmem {

// V8 freed the buffer's backing store: nothing can reach the memory any more.
static void FinalizeMapping(napi_env /*env*/, void* /*data*/, void* hint) { Release(static_cast<Mapping*>(hint)); }

// Wraps a fresh mapping into [ArrayBuffer, id, address]. On failure the mapping is
// released here, so no path leaves it without an owner.
static Napi::Value Adopt(Napi::Env env, void* address, size_t length) {
  AddonState& state = State(env);
  uint32_t id = state.nextMappingId++;
  if (state.nextMappingId == 0) state.nextMappingId = 1;
  auto* m = new Mapping{address, length, id, true, &state};
  napi_value ab;
  napi_status status = napi_create_external_arraybuffer(env, address, length, FinalizeMapping, m, &ab);
  if (status != napi_ok) {
    munmap(address, length);
    delete m;
    Napi::Error::New(env, "cannot create an external ArrayBuffer for the mapping").ThrowAsJavaScriptException();
    return Napi::Value();
  }
  state.mappings[id] = m;
  state.liveCount++;
  state.refs++;
  Napi::Array result = Napi::Array::New(env, 3);
  result.Set(0u, Napi::Value(env, ab));
  result.Set(1u, Napi::Number::New(env, id));
  result.Set(2u, Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(address))));
  return result;
}

// mapFile(fd, offset, length, writable) -> [ArrayBuffer, id, address]
static Napi::Value MapFile(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint64_t offset, length;
  if (!ArgI32(info, 0, &fd) || !ArgU64(info, 1, &offset) || !ArgU64(info, 2, &length)) return Napi::Value();
  int prot = PROT_READ | (info[3].ToBoolean().Value() ? PROT_WRITE : 0);
  void* address = mmap(nullptr, length, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (address == MAP_FAILED) return ThrowErrno(info.Env(), errno, "mmap", nullptr);
  return Adopt(info.Env(), address, length);
}

// mapAnonymous(length) -> [ArrayBuffer, id, address]: private anonymous memory for
// slots whose shared backing is plain process memory.
static Napi::Value MapAnonymous(const Napi::CallbackInfo& info) {
  uint64_t length;
  if (!ArgU64(info, 0, &length)) return Napi::Value();
  void* address = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (address == MAP_FAILED) return ThrowErrno(info.Env(), errno, "mmap", nullptr);
  return Adopt(info.Env(), address, length);
}

// unmap(id) -> boolean: the memory under the buffer becomes anonymous zero pages
// (the file is no longer referenced, nothing through the buffer reaches it); the
// range is released with the buffer. False if already unmapped.
static Napi::Value Unmap(const Napi::CallbackInfo& info) {
  uint32_t id;
  if (!ArgU32(info, 0, &id)) return Napi::Value();
  AddonState& state = State(info.Env());
  auto it = state.mappings.find(id);
  if (it == state.mappings.end() || !it->second->live) return Napi::Boolean::New(info.Env(), false);
  if (!Retire(it->second)) return ThrowErrno(info.Env(), errno, "mmap", nullptr);
  return Napi::Boolean::New(info.Env(), true);
}

// madvise(address, length, advice)
static Napi::Value Madvise(const Napi::CallbackInfo& info) {
  uint64_t address, length;
  int32_t advice;
  if (!ArgU64(info, 0, &address) || !ArgU64(info, 1, &length) || !ArgI32(info, 2, &advice)) return Napi::Value();
  if (madvise(reinterpret_cast<void*>(static_cast<uintptr_t>(address)), length, advice) != 0)
    return ThrowErrno(info.Env(), errno, "madvise", nullptr);
  return info.Env().Undefined();
}

// mappingCount() -> mappings that still map their file or anonymous memory for
// JavaScript (unmapped ones waiting for their buffer's collection are not counted).
static Napi::Value MappingCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(State(info.Env()).liveCount));
}

// reservedMappingCount() -> unmapped ranges kept until their buffers are collected.
static Napi::Value ReservedMappingCount(const Napi::CallbackInfo& info) {
  size_t n = 0;
  for (auto& entry : State(info.Env()).mappings)
    if (!entry.second->live) n++;
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

void InitMapping(Napi::Env env, Napi::Object exports) {
  exports.Set("mapFile", Napi::Function::New(env, MapFile, "mapFile"));
  exports.Set("mapAnonymous", Napi::Function::New(env, MapAnonymous, "mapAnonymous"));
  exports.Set("unmap", Napi::Function::New(env, Unmap, "unmap"));
  exports.Set("madvise", Napi::Function::New(env, Madvise, "madvise"));
  exports.Set("mappingCount", Napi::Function::New(env, MappingCount, "mappingCount"));
  exports.Set("reservedMappingCount", Napi::Function::New(env, ReservedMappingCount, "reservedMappingCount"));
}

}  // namespace gmem
