// Registers every native object's functions; nothing else lives here.
#include <napi.h>
#include <unistd.h>

#include "errors.h"
#include "eventfd.h"
#include "file.h"
#include "guest_memfd.h"
#include "kvm.h"
#include "mapping.h"
#include "memfd.h"
#include "mempolicy.h"
#include "userfaultfd.h"
#include "vcpu.h"
#include "vm.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>

// Sanitizer builds only (binding.gyp sanitize=1): LeakSanitizer's check now, reports to its
// log; 1 if it found leaks. The test setup calls it after each file, since vitest ends its
// workers with a signal, before the check at exit could run.
static Napi::Value SanitizerLeakCheck(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), __lsan_do_recoverable_leak_check());
}
#endif

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  gmem::InitErrors(env, exports);
  gmem::InitFile(env, exports);
  gmem::InitKvm(env, exports);
  gmem::InitVm(env, exports);
  gmem::InitGuestMemfd(env, exports);
  gmem::InitMemfd(env, exports);
  gmem::InitMapping(env, exports);
  gmem::InitVcpu(env, exports);
  gmem::InitEventfd(env, exports);
  gmem::InitMempolicy(env, exports);
  gmem::InitUserfaultfd(env, exports);
#if defined(__SANITIZE_ADDRESS__)
  exports.Set("sanitizerLeakCheck", Napi::Function::New(env, SanitizerLeakCheck, "sanitizerLeakCheck"));
#endif
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))));
  return exports;
}

NODE_API_MODULE(guest_memfd, Init)
