#include "errors.h"

#include "common.h"

namespace gmem {

Napi::Value ThrowErrno(Napi::Env env, int err, const char* syscall, const char* ioctl) {
  AddonState& state = State(env);
  Napi::Value error;
  if (!state.errorFactory.IsEmpty()) {
    error = state.errorFactory.Call({Napi::Number::New(env, err), Napi::String::New(env, syscall),
                                     ioctl ? Napi::String::New(env, ioctl) : env.Undefined()});
  }
  if (error.IsEmpty() || !error.IsObject()) {
    Napi::Error::New(env, std::string(syscall) + " failed with errno " + std::to_string(err))
        .ThrowAsJavaScriptException();
    return Napi::Value();
  }
  Napi::Error(env, error).ThrowAsJavaScriptException();
  return Napi::Value();
}

Napi::Value ThrowErrnoApplied(Napi::Env env, int err, const char* syscall, const char* ioctl, size_t applied) {
  ThrowErrno(env, err, syscall, ioctl);
  Napi::Error pending = env.GetAndClearPendingException();
  pending.Set("applied", Napi::Number::New(env, static_cast<double>(applied)));
  pending.ThrowAsJavaScriptException();
  return Napi::Value();
}

static Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) {
    Napi::TypeError::New(info.Env(), "setErrorFactory expects a function").ThrowAsJavaScriptException();
    return Napi::Value();
  }
  State(info.Env()).errorFactory = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

void InitErrors(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorFactory", Napi::Function::New(env, SetErrorFactory, "setErrorFactory"));
}

}  // namespace gmem
