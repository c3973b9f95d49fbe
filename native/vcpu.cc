#include "vcpu.h"

#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "common.h"
#include "uapi/kvm_gmem.h"

namespace gmem {
using namespace gmem_uapi;

// The signal that kicks a vCPU thread out of KVM_RUN. A real-time signal nobody in
// Node uses; its handler does nothing, and it is installed without SA_RESTART so the
// ioctl returns EINTR.
static int KickSignal() { return SIGRTMIN + 3; }
static void OnKick(int) {}

// One vCPU's run loop. KVM_RUN blocks for as long as the guest runs, so it gets a
// thread of its own (never the libuv pool: a spinning guest would starve fs and dns).
class VcpuRunner : public Napi::ObjectWrap<VcpuRunner> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "VcpuRunner",
                       {InstanceMethod("run", &VcpuRunner::Run), InstanceMethod("runSync", &VcpuRunner::RunSync),
                        InstanceMethod("kick", &VcpuRunner::Kick), InstanceMethod("close", &VcpuRunner::Close)});
  }

  // new VcpuRunner(vcpuFd, kvmRunAddress, onExit(errno))
  explicit VcpuRunner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VcpuRunner>(info) {
    uint64_t address;
    if (!ArgI32(info, 0, &fd_) || !ArgU64(info, 1, &address)) return;
    if (!info[2].IsFunction()) {
      Napi::TypeError::New(info.Env(), "VcpuRunner expects an exit callback").ThrowAsJavaScriptException();
      return;
    }
    run_ = reinterpret_cast<kvm_run_head*>(static_cast<uintptr_t>(address));
    onExit_ = Napi::Persistent(info[2].As<Napi::Function>());
    env_ = info.Env();
    napi_add_env_cleanup_hook(env_, CleanupHook, this);
    hooked_ = true;
  }

  ~VcpuRunner() override { Shutdown(); }

 private:
  enum class Phase { Idle, Requested, Running };

  static void CleanupHook(void* self) {
    auto* runner = static_cast<VcpuRunner*>(self);
    runner->hooked_ = false;
    runner->Shutdown();
  }

  void StartThread(Napi::Env env) {
    tsfn_ = Napi::ThreadSafeFunction::New(env, onExit_.Value(), "vcpu-run", 0, 1);
    tsfn_.Unref(env);
    thread_ = std::thread([this] { Loop(); });
    started_ = true;
  }

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return phase_ == Phase::Requested || closing_; });
      if (closing_) return;
      phase_ = Phase::Running;
      lock.unlock();
      int err = ioctl(fd_, KVM_RUN, 0) < 0 ? errno : 0;
      lock.lock();
      phase_ = Phase::Idle;
      run_->immediate_exit = 0;
      // Deliver on the JS thread; the callback decodes kvm_run there.
      tsfn_.NonBlockingCall(reinterpret_cast<int*>(static_cast<intptr_t>(err)),
                            [](Napi::Env env, Napi::Function cb, int* e) {
                              cb.Call({Napi::Number::New(env, static_cast<int>(reinterpret_cast<intptr_t>(e)))});
                            });
    }
  }

  // run(): start one KVM_RUN on the vCPU thread; the exit callback gets its errno.
  Napi::Value Run(const Napi::CallbackInfo& info) {
    if (closed_) return ThrowErrno(info.Env(), EBADF, "ioctl", "KVM_RUN");
    if (!started_) StartThread(info.Env());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (phase_ != Phase::Idle) {
        Napi::Error::New(info.Env(), "vCPU is already running").ThrowAsJavaScriptException();
        return Napi::Value();
      }
      phase_ = Phase::Requested;
    }
    cv_.notify_one();
    return info.Env().Undefined();
  }

  // ref(bool): keep the event loop alive while a run is outstanding.
  // runSync() -> errno: KVM_RUN on the calling thread, for tight scripted loops.
  Napi::Value RunSync(const Napi::CallbackInfo& info) {
    if (closed_) return ThrowErrno(info.Env(), EBADF, "ioctl", "KVM_RUN");
    int err = ioctl(fd_, KVM_RUN, 0) < 0 ? errno : 0;
    return Napi::Number::New(info.Env(), err);
  }

  // kick() -> boolean: make a running (or about to run) KVM_RUN return EINTR.
  Napi::Value Kick(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), KickLocked());
  }

  bool KickLocked() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_ || phase_ == Phase::Idle) return false;
    // immediate_exit covers the window before the thread enters KVM_RUN; the signal
    // covers a guest that is already running.
    run_->immediate_exit = 1;
    pthread_kill(thread_.native_handle(), KickSignal());
    return true;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  void Shutdown() {
    if (closed_) return;
    closed_ = true;
    if (started_) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        closing_ = true;
        if (phase_ == Phase::Running) {
          run_->immediate_exit = 1;
          pthread_kill(thread_.native_handle(), KickSignal());
        }
      }
      cv_.notify_one();
      thread_.join();
      tsfn_.Release();
    }
    if (hooked_) {
      napi_remove_env_cleanup_hook(env_, CleanupHook, this);
      hooked_ = false;
    }
  }

 public:
  // Ref/unref the thread-safe function so a pending run keeps the process alive and
  // an idle vCPU does not.
  void SetRef(Napi::Env env, bool ref) {
    if (!started_ || closed_) return;
    if (ref)
      tsfn_.Ref(env);
    else
      tsfn_.Unref(env);
  }

 private:
  int32_t fd_ = -1;
  kvm_run_head* run_ = nullptr;
  napi_env env_ = nullptr;
  Napi::FunctionReference onExit_;
  Napi::ThreadSafeFunction tsfn_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  Phase phase_ = Phase::Idle;
  bool closing_ = false;
  bool started_ = false;
  bool closed_ = false;
  bool hooked_ = false;
};

static bool ArgBytes(const Napi::CallbackInfo& info, size_t i, size_t size, uint8_t** out) {
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().ByteLength() < size) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a typed array of at least " +
                                         std::to_string(size) + " bytes")
        .ThrowAsJavaScriptException();
    return false;
  }
  Napi::TypedArray array = info[i].As<Napi::TypedArray>();
  *out = static_cast<uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  return true;
}

// Register blocks travel as raw kernel structs; lib/vcpu.ts names the fields.
template <unsigned long Request, size_t Size>
static Napi::Value StructIoctl(const Napi::CallbackInfo& info, const char* name) {
  int32_t fd;
  uint8_t* bytes;
  if (!ArgI32(info, 0, &fd) || !ArgBytes(info, 1, Size, &bytes)) return Napi::Value();
  if (ioctl(fd, Request, bytes) != 0) return ThrowErrno(info.Env(), errno, "ioctl", name);
  return info.Env().Undefined();
}

static Napi::Value GetRegs(const Napi::CallbackInfo& i) { return StructIoctl<KVM_GET_REGS, sizeof(kvm_regs)>(i, "KVM_GET_REGS"); }
static Napi::Value SetRegs(const Napi::CallbackInfo& i) { return StructIoctl<KVM_SET_REGS, sizeof(kvm_regs)>(i, "KVM_SET_REGS"); }
static Napi::Value GetSregs(const Napi::CallbackInfo& i) { return StructIoctl<KVM_GET_SREGS, sizeof(kvm_sregs)>(i, "KVM_GET_SREGS"); }
static Napi::Value SetSregs(const Napi::CallbackInfo& i) { return StructIoctl<KVM_SET_SREGS, sizeof(kvm_sregs)>(i, "KVM_SET_SREGS"); }
static Napi::Value GetFpu(const Napi::CallbackInfo& i) { return StructIoctl<KVM_GET_FPU, sizeof(kvm_fpu)>(i, "KVM_GET_FPU"); }
static Napi::Value SetFpu(const Napi::CallbackInfo& i) { return StructIoctl<KVM_SET_FPU, sizeof(kvm_fpu)>(i, "KVM_SET_FPU"); }

// preFaultMemory(vcpuFd, gpa, size): loops while the kernel makes partial progress.
static Napi::Value PreFaultMemory(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint64_t gpa, size;
  if (!ArgI32(info, 0, &fd) || !ArgU64(info, 1, &gpa) || !ArgU64(info, 2, &size)) return Napi::Value();
  kvm_pre_fault_memory range;
  memset(&range, 0, sizeof range);
  range.gpa = gpa;
  range.size = size;
  while (range.size > 0) {
    if (ioctl(fd, KVM_PRE_FAULT_MEMORY, &range) != 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ThrowErrno(info.Env(), errno, "ioctl", "KVM_PRE_FAULT_MEMORY");
    }
  }
  return info.Env().Undefined();
}

static Napi::Value SetRunnerRef(const Napi::CallbackInfo& info) {
  if (!info[0].IsObject()) return info.Env().Undefined();
  VcpuRunner* runner = VcpuRunner::Unwrap(info[0].As<Napi::Object>());
  if (runner) runner->SetRef(info.Env(), info[1].ToBoolean().Value());
  return info.Env().Undefined();
}

void InitVcpu(Napi::Env env, Napi::Object exports) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = OnKick;
  sigemptyset(&action.sa_mask);
  sigaction(KickSignal(), &action, nullptr);

  exports.Set("VcpuRunner", VcpuRunner::Define(env));
  exports.Set("setRunnerRef", Napi::Function::New(env, SetRunnerRef, "setRunnerRef"));
  exports.Set("getRegs", Napi::Function::New(env, GetRegs, "getRegs"));
  exports.Set("setRegs", Napi::Function::New(env, SetRegs, "setRegs"));
  exports.Set("getSregs", Napi::Function::New(env, GetSregs, "getSregs"));
  exports.Set("setSregs", Napi::Function::New(env, SetSregs, "setSregs"));
  exports.Set("getFpu", Napi::Function::New(env, GetFpu, "getFpu"));
  exports.Set("setFpu", Napi::Function::New(env, SetFpu, "setFpu"));
  exports.Set("preFaultMemory", Napi::Function::New(env, PreFaultMemory, "preFaultMemory"));
}

}  // namespace gmem
