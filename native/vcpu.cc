#include "vcpu.h"

#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <ctime>

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
//
// Hand-off protocol, tuned for exit-heavy guests: run() posts a request and then
// waits up to `spinNs` on the calling thread for the exit; a quick exit (port I/O,
// MMIO) is returned directly, without waking the event loop through libuv. A longer
// run is handed to a thread-safe function and resolves later, so the event loop is
// never blocked for more than the spin window. The vCPU thread likewise spins
// briefly for the next request before sleeping, which saves a futex wake-up per exit.
class VcpuRunner : public Napi::ObjectWrap<VcpuRunner> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "VcpuRunner",
                       {InstanceMethod("run", &VcpuRunner::Run), InstanceMethod("runSync", &VcpuRunner::RunSync),
                        InstanceMethod("kick", &VcpuRunner::Kick), InstanceMethod("close", &VcpuRunner::Close),
                        InstanceMethod("setSpin", &VcpuRunner::SetSpin)});
  }

  // new VcpuRunner(vcpuFd, onExit(errno))
  explicit VcpuRunner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VcpuRunner>(info) {
    if (!ArgI32(info, 0, &fd_)) return;
    if (!info[1].IsFunction()) {
      Napi::TypeError::New(info.Env(), "VcpuRunner expects an exit callback").ThrowAsJavaScriptException();
      return;
    }
    // The runner maps the head of kvm_run for itself: the thread and kick() touch it
    // until the thread is joined, whatever happens to JavaScript's view of it.
    void* head = mmap(nullptr, kHeadSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (head == MAP_FAILED) {
      ThrowErrno(info.Env(), errno, "mmap", nullptr);
      return;
    }
    run_ = static_cast<kvm_run_head*>(head);
    onExit_ = Napi::Persistent(info[1].As<Napi::Function>());
    env_ = info.Env();
    // The addon's cleanup stops this runner before it unmaps kvm_run.
    State(info.Env()).stoppers[this] = &StopThunk;
    registered_ = true;
  }

  ~VcpuRunner() override { Shutdown(); }

 private:
  enum : int { kIdle = 0, kPending = 1, kPendingAsync = 2, kDone = 3 };
  static constexpr size_t kHeadSize = 4096;

  static uint64_t NowNs() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return static_cast<uint64_t>(t.tv_sec) * 1000000000ull + static_cast<uint64_t>(t.tv_nsec);
  }

  static void CpuRelax() { __builtin_ia32_pause(); }

  static void CleanupHook(void* self) {
    auto* runner = static_cast<VcpuRunner*>(self);
    runner->hooked_ = false;
    runner->Shutdown();
  }

  static void StopThunk(void* self) {
    auto* runner = static_cast<VcpuRunner*>(self);
    runner->registered_ = false;  // the registry already dropped it
    runner->Shutdown();
  }

  // Runs on the JS thread for a run whose caller stopped waiting.
  static void DeliverAsync(Napi::Env env, Napi::Function cb, VcpuRunner* self) {
    int err = self->result_;
    self->state_.store(kIdle, std::memory_order_release);
    if (!self->closed_) self->tsfn_.Unref(env);
    // An exception must not unwind through libuv: report it as uncaught instead.
    try {
      cb.Call({Napi::Number::New(env, err)});
    } catch (const Napi::Error& error) {
      napi_fatal_exception(env, error.Value());
    }
  }

  void StartThread(Napi::Env env) {
    tsfn_ = Napi::ThreadSafeFunction::New(env, onExit_.Value(), "vcpu-run", 0, 1);
    tsfn_.Unref(env);
    // Cleanup hooks run last-registered first: registered after the thread-safe
    // function's own, this one stops the thread while that function still exists.
    napi_add_env_cleanup_hook(env, CleanupHook, this);
    hooked_ = true;
    try {
      thread_ = std::thread([this] {
        // Named so tools (and tests) can tell vCPU threads apart: /proc/self/task/*/comm.
        pthread_setname_np(pthread_self(), "gmem-vcpu");
        Loop();
      });
    } catch (...) {
      // No thread: release the function now (Shutdown only does it for a started one).
      tsfn_.Release();
      throw;
    }
    started_ = true;
  }

  bool RequestSeen() const {
    return requestSeq_.load(std::memory_order_acquire) != handledSeq_ || closing_.load(std::memory_order_acquire);
  }

  void Loop() {
    for (;;) {
      uint64_t deadline = NowNs() + threadSpinNs_;
      while (!RequestSeen() && NowNs() < deadline) CpuRelax();
      if (!RequestSeen()) {
        std::unique_lock<std::mutex> lock(mu_);
        sleeping_.store(true, std::memory_order_seq_cst);
        cv_.wait(lock, [this] { return RequestSeen(); });
        sleeping_.store(false, std::memory_order_relaxed);
      }
      if (closing_.load(std::memory_order_acquire)) return;
      handledSeq_ = requestSeq_.load(std::memory_order_acquire);
      {
        std::lock_guard<std::mutex> lock(kickMu_);
        inRun_ = true;
      }
      // The kernel may leave a stale exit_reason after a failed KVM_RUN; clear it so
      // an old KVM_EXIT_MEMORY_FAULT is never mistaken for a new one.
      run_->exit_reason = 0;
      int err = ioctl(fd_, KVM_RUN, 0) < 0 ? errno : 0;
      {
        std::lock_guard<std::mutex> lock(kickMu_);
        inRun_ = false;
        inFlight_ = false;  // a kick from now on has no run to stop
        run_->immediate_exit = 0;
      }
      result_ = err;
      int expected = kPending;
      if (!state_.compare_exchange_strong(expected, kDone, std::memory_order_acq_rel)) {
        // The caller stopped waiting: deliver on the JS thread.
        tsfn_.NonBlockingCall(this, [](Napi::Env env, Napi::Function cb, VcpuRunner* self) { DeliverAsync(env, cb, self); });
      }
    }
  }

  // run() -> errno when the exit arrived within the spin window, else undefined
  // (the exit callback gets the errno later).
  Napi::Value Run(const Napi::CallbackInfo& info) {
    if (closed_) return ThrowErrno(info.Env(), EBADF, "ioctl", "KVM_RUN");
    if (!started_) StartThread(info.Env());
    if (state_.load(std::memory_order_acquire) != kIdle) {
      Napi::Error::New(info.Env(), "vCPU is already running").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    {
      std::lock_guard<std::mutex> lock(kickMu_);
      inFlight_ = true;
    }
    state_.store(kPending, std::memory_order_seq_cst);
    requestSeq_.fetch_add(1, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst)) {
      { std::lock_guard<std::mutex> lock(mu_); }
      cv_.notify_one();
    }
    uint64_t deadline = NowNs() + callerSpinNs_;
    while (state_.load(std::memory_order_acquire) != kDone && NowNs() < deadline) CpuRelax();
    int expected = kPending;
    if (state_.compare_exchange_strong(expected, kPendingAsync, std::memory_order_acq_rel)) {
      tsfn_.Ref(info.Env());
      return info.Env().Undefined();
    }
    // kDone: the exit is here already.
    int err = result_;
    state_.store(kIdle, std::memory_order_release);
    return Napi::Number::New(info.Env(), err);
  }

  // runSync() -> errno: KVM_RUN on the calling thread, for tight scripted loops.
  Napi::Value RunSync(const Napi::CallbackInfo& info) {
    if (closed_) return ThrowErrno(info.Env(), EBADF, "ioctl", "KVM_RUN");
    run_->exit_reason = 0;
    int err = ioctl(fd_, KVM_RUN, 0) < 0 ? errno : 0;
    return Napi::Number::New(info.Env(), err);
  }

  // setSpin(callerNs, threadNs): tune the hand-off windows (0 disables spinning).
  Napi::Value SetSpin(const Napi::CallbackInfo& info) {
    uint64_t caller, thread;
    if (!ArgU64(info, 0, &caller) || !ArgU64(info, 1, &thread)) return Napi::Value();
    callerSpinNs_ = caller;
    threadSpinNs_ = thread;
    return info.Env().Undefined();
  }

  // kick() -> boolean: make a pending or running KVM_RUN return EINTR.
  Napi::Value Kick(const Napi::CallbackInfo& info) {
    if (!started_ || closed_) return Napi::Boolean::New(info.Env(), false);
    std::lock_guard<std::mutex> lock(kickMu_);
    // Only a run that has not finished: after KVM_RUN returns, a kick would linger in
    // immediate_exit and cut the next run short.
    if (!inFlight_) return Napi::Boolean::New(info.Env(), false);
    // immediate_exit covers a run that has not entered the guest yet; the signal
    // covers a guest that is already running.
    run_->immediate_exit = 1;
    if (inRun_) pthread_kill(thread_.native_handle(), KickSignal());
    return Napi::Boolean::New(info.Env(), true);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  void Shutdown() {
    if (closed_) return;
    closed_ = true;
    if (started_) {
      closing_.store(true, std::memory_order_seq_cst);
      {
        std::lock_guard<std::mutex> lock(kickMu_);
        run_->immediate_exit = 1;
        if (inRun_) pthread_kill(thread_.native_handle(), KickSignal());
      }
      { std::lock_guard<std::mutex> lock(mu_); }
      cv_.notify_one();
      thread_.join();
      tsfn_.Release();
    }
    if (run_ != nullptr) {
      munmap(run_, kHeadSize);
      run_ = nullptr;
    }
    if (registered_) {
      State(Napi::Env(env_)).stoppers.erase(this);
      registered_ = false;
    }
    if (hooked_) {
      napi_remove_env_cleanup_hook(env_, CleanupHook, this);
      hooked_ = false;
    }
  }

  int32_t fd_ = -1;
  kvm_run_head* run_ = nullptr;
  napi_env env_ = nullptr;
  Napi::FunctionReference onExit_;
  Napi::ThreadSafeFunction tsfn_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::mutex kickMu_;
  bool inRun_ = false;
  bool inFlight_ = false;
  std::atomic<int> state_{kIdle};
  std::atomic<uint32_t> requestSeq_{0};
  uint32_t handledSeq_ = 0;
  std::atomic<bool> sleeping_{false};
  std::atomic<bool> closing_{false};
  int result_ = 0;
  uint64_t callerSpinNs_ = 50000;
  uint64_t threadSpinNs_ = 50000;
  bool started_ = false;
  bool closed_ = false;
  bool registered_ = false;
  bool hooked_ = false;
};

// Register blocks travel as raw kernel structs; lib/vcpu.ts names the fields.
template <unsigned long Request, size_t Size>
static Napi::Value StructIoctl(const Napi::CallbackInfo& info, const char* name) {
  int32_t fd;
  Napi::TypedArray bytes;
  if (!ArgI32(info, 0, &fd) || !ArgTypedArray(info, 1, napi_uint8_array, Size, &bytes)) return Napi::Value();
  if (ioctl(fd, Request, bytes.As<Napi::Uint8Array>().Data()) != 0) return ThrowErrno(info.Env(), errno, "ioctl", name);
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

void InitVcpu(Napi::Env env, Napi::Object exports) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = OnKick;
  sigemptyset(&action.sa_mask);
  sigaction(KickSignal(), &action, nullptr);

  exports.Set("VcpuRunner", VcpuRunner::Define(env));
  exports.Set("getRegs", Napi::Function::New(env, GetRegs, "getRegs"));
  exports.Set("setRegs", Napi::Function::New(env, SetRegs, "setRegs"));
  exports.Set("getSregs", Napi::Function::New(env, GetSregs, "getSregs"));
  exports.Set("setSregs", Napi::Function::New(env, SetSregs, "setSregs"));
  exports.Set("getFpu", Napi::Function::New(env, GetFpu, "getFpu"));
  exports.Set("setFpu", Napi::Function::New(env, SetFpu, "setFpu"));
  exports.Set("preFaultMemory", Napi::Function::New(env, PreFaultMemory, "preFaultMemory"));
}

}  // namespace gmem
