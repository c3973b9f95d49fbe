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
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))));
  return exports;
}

NODE_API_MODULE(guest_memfd, Init)
