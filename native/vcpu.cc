#include "vcpu.h"

#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <sched.h>

#include <condition_variable>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"
#include "uapi/kvm_gmem.h"

namespace gmem {
using namespace gmem_uapi;

// The signal that kicks a thread out of KVM_RUN: a real-time signal nobody in Node
// uses, installed without SA_RESTART so the ioctl returns EINTR. The handler also
// sets immediate_exit of the run the thread is in (or about to enter): a signal that
// lands between the last check and the ioctl then still stops it, as the KVM API
// documentation recommends.
static int KickSignal() { return SIGRTMIN + 3; }

// initial-exec: the handler must not trigger a lazy TLS allocation.
static thread_local kvm_run_head* tlsRun __attribute__((tls_model("initial-exec"))) = nullptr;

static void OnKick(int) {
  kvm_run_head* run = tlsRun;
  if (run != nullptr) run->immediate_exit = 1;
}

static uint64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1000000000ull + static_cast<uint64_t>(t.tv_nsec);
}

static void CpuRelax() { __builtin_ia32_pause(); }

// Spinning hand-offs yield the core every kYieldEvery+1 pauses (a few microseconds):
// with a core idle sched_yield returns at once, without one it runs the thread the
// spinner waits for instead of burning its time slice.
static constexpr uint32_t kYieldEvery = 31;

// runSync() blocks its JS thread in KVM_RUN, where nothing in Node can reach it: not
// worker.terminate(), not a timeout. One process-wide watchdog thread watches every
// runner that has used runSync: it kicks a run whose deadline passed, and every
// kTickNs it kicks runs that are still in the same KVM_RUN, so the run loop can see
// that its environment is shutting down (the kick costs one guest re-entry). The hot
// path only touches atomics; the watchdog lives while any such runner does.
struct SyncSlot {
  pthread_t thread{};
  std::atomic<uint64_t> epoch{0};     // odd while inside runSync's KVM_RUN loop
  std::atomic<uint64_t> deadline{0};  // CLOCK_MONOTONIC ns, 0 = none
  uint64_t seenEpoch = 0;             // watchdog's own
  uint64_t seenAt = 0;
};

class Watchdog {
 public:
  static constexpr uint64_t kTickNs = 100000000ull;

  static Watchdog& Get() {
    // Never destroyed: static destructors at exit must not meet a running thread.
    static Watchdog* instance = new Watchdog();
    return *instance;
  }

  void Register(SyncSlot* slot) {
    std::lock_guard<std::mutex> lock(mu_);
    slots_.push_back(slot);
    if (!thread_.joinable()) {
      uint64_t gen = gen_;
      thread_ = std::thread([this, gen] {
        pthread_setname_np(pthread_self(), "gmem-watchdog");
        Loop(gen);
      });
    }
  }

  void Unregister(SyncSlot* slot) {
    std::thread done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = std::find(slots_.begin(), slots_.end(), slot);
      if (it == slots_.end()) return;
      slots_.erase(it);
      if (slots_.empty()) {
        gen_++;
        done = std::move(thread_);
      }
    }
    cv_.notify_all();
    if (done.joinable()) done.join();
  }

  // A run with a deadline started: re-plan the next wake-up.
  void Wake() { cv_.notify_all(); }

 private:
  void Loop(uint64_t gen) {
    std::unique_lock<std::mutex> lock(mu_);
    while (gen_ == gen) {
      uint64_t now = NowNs();
      uint64_t next = now + kTickNs;
      for (SyncSlot* s : slots_) {
        uint64_t e = s->epoch.load(std::memory_order_acquire);
        if ((e & 1) == 0) continue;
        uint64_t d = s->deadline.load(std::memory_order_acquire);
        bool due = d != 0 && now >= d;
        if (e != s->seenEpoch) {
          s->seenEpoch = e;
          s->seenAt = now;
        } else if (now - s->seenAt >= kTickNs) {
          due = true;
          s->seenAt = now;
        }
        // The slot's thread is inside runSync (odd epoch) and cannot leave the
        // process without unregistering, which needs this lock: it is alive.
        if (due) pthread_kill(s->thread, KickSignal());
        if (d != 0 && d > now && d < next) next = d;
      }
      cv_.wait_for(lock, std::chrono::nanoseconds(next - now));
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<SyncSlot*> slots_;
  std::thread thread_;
  uint64_t gen_ = 0;
};

// True while the environment can still run JavaScript. A worker being terminated (or
// a process exiting that stops its workers) makes every call into JS fail first.
static bool CanRunJs(napi_env env) {
  AddonState& state = State(Napi::Env(env));
  if (state.noop.IsEmpty()) return true;
  napi_value undefined, result;
  if (napi_get_undefined(env, &undefined) != napi_ok) return false;
  napi_status status = napi_call_function(env, undefined, state.noop.Value(), 0, nullptr, &result);
  if (status == napi_pending_exception) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(env, &ignored);
    }
  }
  return status == napi_ok;
}

// A runSync that hit its deadline reports this instead of an errno.
constexpr int kTimedOut = 0x10000;

// Everything a vCPU's runner shares with its thread and with queued deliveries.
// Held by shared_ptr: a delivery queued on the thread-safe function keeps it alive
// even if the JavaScript object is collected first.
struct Core : std::enable_shared_from_this<Core> {
  enum : int { kIdle = 0, kPending = 1, kPendingAsync = 2, kDone = 3 };
  static constexpr size_t kHeadSize = 4096;

  int32_t fd = -1;
  kvm_run_head* run = nullptr;
  napi_env env = nullptr;
  napi_ref onExit = nullptr;
  napi_threadsafe_function tsfn = nullptr;
  std::thread thread;
  std::mutex mu;
  std::condition_variable cv;
  std::mutex kickMu;
  bool inRun = false;
  bool inFlight = false;
  std::atomic<int> state{kIdle};
  std::atomic<uint32_t> requestSeq{0};
  uint32_t handledSeq = 0;
  std::atomic<bool> sleeping{false};
  std::atomic<bool> closing{false};
  int result = 0;
  // Hand-off windows; the effective ones adapt (see Run and Loop).
  uint64_t callerSpinNs = 50000;
  uint64_t threadSpinNs = 50000;
  uint64_t callerBudgetNs = 50000;
  uint32_t callerMisses = 0;
  bool started = false;
  bool closed = false;
  bool registered = false;
  bool hooked = false;
  bool watched = false;
  SyncSlot sync;

  bool RequestSeen() const {
    return requestSeq.load(std::memory_order_acquire) != handledSeq || closing.load(std::memory_order_acquire);
  }

  void Loop() {
    tlsRun = run;
    for (;;) {
      // Spin for the next request, yielding often: when no core is idle the JS thread
      // that will make the request may be waiting for this very core.
      uint64_t deadline = NowNs() + threadSpinNs;
      uint32_t spins = 0;
      while (!RequestSeen() && NowNs() < deadline) {
        CpuRelax();
        if ((++spins & kYieldEvery) == 0) sched_yield();
      }
      if (!RequestSeen()) {
        std::unique_lock<std::mutex> lock(mu);
        sleeping.store(true, std::memory_order_seq_cst);
        cv.wait(lock, [this] { return RequestSeen(); });
        sleeping.store(false, std::memory_order_relaxed);
      }
      if (closing.load(std::memory_order_acquire)) break;
      handledSeq = requestSeq.load(std::memory_order_acquire);
      {
        std::lock_guard<std::mutex> lock(kickMu);
        inRun = true;
      }
      // The kernel may leave a stale exit_reason after a failed KVM_RUN; clear it so
      // an old KVM_EXIT_MEMORY_FAULT is never mistaken for a new one.
      run->exit_reason = 0;
      int err = ioctl(fd, KVM_RUN, 0) < 0 ? errno : 0;
      {
        std::lock_guard<std::mutex> lock(kickMu);
        inRun = false;
        inFlight = false;  // a kick from now on has no run to stop
        run->immediate_exit = 0;
      }
      result = err;
      int expected = kPending;
      if (!state.compare_exchange_strong(expected, kDone, std::memory_order_acq_rel)) {
        // The caller stopped waiting: deliver on the JS thread.
        auto* holder = new std::shared_ptr<Core>(shared_from_this());
        if (napi_call_threadsafe_function(tsfn, holder, napi_tsfn_nonblocking) != napi_ok) delete holder;
      }
    }
    tlsRun = nullptr;
  }

  // Runs on the JS thread for a run whose caller stopped waiting. Also called with
  // env == nullptr when the function is torn down with deliveries still queued.
  static void Deliver(napi_env env, napi_value cb, void* /*context*/, void* data) {
    std::shared_ptr<Core> self = std::move(*static_cast<std::shared_ptr<Core>*>(data));
    delete static_cast<std::shared_ptr<Core>*>(data);
    if (env == nullptr || cb == nullptr || self->closed) return;
    int err = self->result;
    self->state.store(kIdle, std::memory_order_release);
    napi_unref_threadsafe_function(env, self->tsfn);
    napi_value undefined, arg, ignored;
    napi_get_undefined(env, &undefined);
    napi_create_int32(env, err, &arg);
    // A throwing callback surfaces as an uncaught exception (Node's policy for
    // thread-safe function callbacks); the library's callback does not throw.
    napi_call_function(env, undefined, cb, 1, &arg, &ignored);
  }

  static void CleanupHook(void* self) {
    auto* core = static_cast<Core*>(self);
    core->hooked = false;
    core->Shutdown();
  }

  static void StopThunk(void* self) {
    auto* core = static_cast<Core*>(self);
    core->registered = false;  // the registry already dropped it
    core->Shutdown();
  }

  void StartThread() {
    napi_value cb, name;
    napi_get_reference_value(env, onExit, &cb);
    napi_create_string_utf8(env, "vcpu-run", NAPI_AUTO_LENGTH, &name);
    napi_status status = napi_create_threadsafe_function(env, cb, nullptr, name, 0, 1, nullptr, nullptr, nullptr, Deliver, &tsfn);
    if (status != napi_ok) throw Napi::Error::New(Napi::Env(env), "cannot create the vCPU's thread-safe function");
    napi_unref_threadsafe_function(env, tsfn);
    // Cleanup hooks run last-registered first: registered after the thread-safe
    // function's own, this one stops the thread while that function still exists.
    napi_add_env_cleanup_hook(env, CleanupHook, this);
    hooked = true;
    try {
      thread = std::thread([this] {
        // Named so tools (and tests) can tell vCPU threads apart: /proc/self/task/*/comm.
        pthread_setname_np(pthread_self(), "gmem-vcpu");
        Loop();
      });
    } catch (...) {
      // No thread: release the function now (Shutdown only does it for a started one).
      napi_release_threadsafe_function(tsfn, napi_tsfn_release);
      tsfn = nullptr;
      throw;
    }
    started = true;
  }

  void Shutdown() {
    if (closed) return;
    closed = true;
    if (started) {
      closing.store(true, std::memory_order_seq_cst);
      {
        std::lock_guard<std::mutex> lock(kickMu);
        run->immediate_exit = 1;
        if (inRun) pthread_kill(thread.native_handle(), KickSignal());
      }
      { std::lock_guard<std::mutex> lock(mu); }
      cv.notify_one();
      thread.join();
      napi_release_threadsafe_function(tsfn, napi_tsfn_release);
      tsfn = nullptr;
    }
    if (watched) {
      Watchdog::Get().Unregister(&sync);
      watched = false;
    }
    if (run != nullptr) {
      munmap(run, kHeadSize);
      run = nullptr;
    }
    if (onExit != nullptr) {
      napi_delete_reference(env, onExit);
      onExit = nullptr;
    }
    if (registered) {
      State(Napi::Env(env)).stoppers.erase(this);
      registered = false;
    }
    if (hooked) {
      napi_remove_env_cleanup_hook(env, CleanupHook, this);
      hooked = false;
    }
  }
};

// One vCPU's run loop. KVM_RUN blocks for as long as the guest runs, so it gets a
// thread of its own (never the libuv pool: a spinning guest would starve fs and dns).
//
// Hand-off protocol, tuned for exit-heavy guests: run() posts a request and then
// waits up to a spin window on the calling thread for the exit; a quick exit (port
// I/O, MMIO) is returned directly, without waking the event loop through libuv. A
// longer run is handed to a thread-safe function and resolves later, so the event
// loop is never blocked for more than the window. The vCPU thread likewise spins
// briefly for the next request before sleeping, which saves a futex wake-up per exit.
// When runs keep outlasting the window (a long-running guest, or no idle core for the
// vCPU thread), the caller's window shrinks so the two threads stop competing.
class VcpuRunner : public Napi::ObjectWrap<VcpuRunner> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "VcpuRunner",
                       {InstanceMethod("run", &VcpuRunner::Run), InstanceMethod("runSync", &VcpuRunner::RunSync),
                        InstanceMethod("kick", &VcpuRunner::Kick), InstanceMethod("close", &VcpuRunner::Close),
                        InstanceMethod("setSpin", &VcpuRunner::SetSpin),
                        InstanceMethod("completePending", &VcpuRunner::CompletePending)});
  }

  // new VcpuRunner(vcpuFd, onExit(errno))
  explicit VcpuRunner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VcpuRunner>(info) {
    core_ = std::make_shared<Core>();
    if (!ArgI32(info, 0, &core_->fd)) return;
    if (!info[1].IsFunction()) {
      Napi::TypeError::New(info.Env(), "VcpuRunner expects an exit callback").ThrowAsJavaScriptException();
      return;
    }
    // The runner maps the head of kvm_run for itself: the thread and kick() touch it
    // until the thread is joined, whatever happens to JavaScript's view of it.
    void* head = mmap(nullptr, Core::kHeadSize, PROT_READ | PROT_WRITE, MAP_SHARED, core_->fd, 0);
    if (head == MAP_FAILED) {
      ThrowErrno(info.Env(), errno, "mmap", nullptr);
      return;
    }
    core_->run = static_cast<kvm_run_head*>(head);
    core_->env = info.Env();
    napi_create_reference(info.Env(), info[1], 1, &core_->onExit);
    AddonState& state = State(info.Env());
    if (state.noop.IsEmpty())
      state.noop = Napi::Persistent(Napi::Function::New(info.Env(), [](const Napi::CallbackInfo& i) { return i.Env().Undefined(); }));
    // The addon's cleanup stops this runner before it unmaps kvm_run.
    state.stoppers[core_.get()] = &Core::StopThunk;
    core_->registered = true;
  }

  ~VcpuRunner() override {
    if (core_) core_->Shutdown();
  }

 private:
  // run() -> errno when the exit arrived within the spin window, else undefined
  // (the exit callback gets the errno later).
  Napi::Value Run(const Napi::CallbackInfo& info) {
    Core& c = *core_;
    if (c.closed) return ThrowErrno(info.Env(), EBADF, "ioctl", "KVM_RUN");
    if (!c.started) c.StartThread();
    if (c.state.load(std::memory_order_acquire) != Core::kIdle) {
      Napi::Error::New(info.Env(), "vCPU is already running").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    {
      std::lock_guard<std::mutex> lock(c.kickMu);
      c.inFlight = true;
    }
    c.state.store(Core::kPending, std::memory_order_seq_cst);
    c.requestSeq.fetch_add(1, std::memory_order_seq_cst);
    if (c.sleeping.load(std::memory_order_seq_cst)) {
      { std::lock_guard<std::mutex> lock(c.mu); }
      c.cv.notify_one();
    }
    uint64_t start = NowNs();
    uint64_t deadline = start + c.callerBudgetNs;
    uint32_t spins = 0;
    while (c.state.load(std::memory_order_acquire) != Core::kDone && NowNs() < deadline) {
      CpuRelax();
      // Give the vCPU thread the core if it shares ours (no idle core).
      if ((++spins & kYieldEvery) == 0) sched_yield();
    }
    int expected = Core::kPending;
    if (c.state.compare_exchange_strong(expected, Core::kPendingAsync, std::memory_order_acq_rel)) {
      // Missed the window: shrink it after repeated misses (down to 0: no spinning);
      // an occasional probe at the full window finds quick exits again.
      if (++c.callerMisses >= 4) c.callerBudgetNs = c.callerBudgetNs / 2;
      if ((c.callerMisses & 255) == 0) c.callerBudgetNs = c.callerSpinNs;
      napi_ref_threadsafe_function(info.Env(), c.tsfn);
      return info.Env().Undefined();
    }
    // kDone: the exit is here already.
    c.callerMisses = 0;
    if (c.callerBudgetNs < c.callerSpinNs) {
      uint64_t took = NowNs() - start;
      c.callerBudgetNs = std::min(c.callerSpinNs, std::max(c.callerBudgetNs * 2, took * 2 + 1000));
    }
    int err = c.result;
    c.state.store(Core::kIdle, std::memory_order_release);
    return Napi::Number::New(info.Env(), err);
  }

  // runSync(timeoutNs) -> errno, or kTimedOut: KVM_RUN on the calling thread, for
  // tight scripted loops. EINTR from the watchdog's kicks re-enters the guest unless
  // the deadline passed or the environment is shutting down.
  Napi::Value RunSync(const Napi::CallbackInfo& info) {
    Core& c = *core_;
    if (c.closed) return ThrowErrno(info.Env(), EBADF, "ioctl", "KVM_RUN");
    uint64_t timeout = 0;
    if (info.Length() > 0 && !info[0].IsUndefined() && !ArgU64(info, 0, &timeout)) return Napi::Value();
    if (!c.watched) {
      c.sync.thread = pthread_self();
      Watchdog::Get().Register(&c.sync);
      c.watched = true;
    }
    uint64_t deadline = timeout ? NowNs() + timeout : 0;
    c.sync.deadline.store(deadline, std::memory_order_release);
    tlsRun = c.run;
    c.sync.epoch.fetch_add(1, std::memory_order_acq_rel);
    if (deadline) Watchdog::Get().Wake();
    int err;
    for (;;) {
      c.run->exit_reason = 0;
      err = ioctl(c.fd, KVM_RUN, 0) < 0 ? errno : 0;
      if (err != EINTR) break;
      c.run->immediate_exit = 0;
      if (deadline && NowNs() >= deadline) {
        err = kTimedOut;
        break;
      }
      if (!CanRunJs(info.Env())) break;
    }
    c.sync.epoch.fetch_add(1, std::memory_order_acq_rel);
    c.sync.deadline.store(0, std::memory_order_release);
    tlsRun = nullptr;
    c.run->immediate_exit = 0;
    return Napi::Number::New(info.Env(), err);
  }

  // completePending() -> errno: KVM_RUN with immediate_exit, so the kernel finishes
  // an instruction an I/O, MMIO, MSR or hypercall exit left pending without running
  // the guest further (it must be done before the vCPU's state is replaced).
  Napi::Value CompletePending(const Napi::CallbackInfo& info) {
    Core& c = *core_;
    if (c.closed) return ThrowErrno(info.Env(), EBADF, "ioctl", "KVM_RUN");
    if (c.state.load(std::memory_order_acquire) != Core::kIdle) {
      Napi::Error::New(info.Env(), "vCPU is running").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    c.run->immediate_exit = 1;
    int err = ioctl(c.fd, KVM_RUN, 0) < 0 ? errno : 0;
    c.run->immediate_exit = 0;
    return Napi::Number::New(info.Env(), err);
  }

  // setSpin(callerNs, threadNs): tune the hand-off windows (0 disables spinning).
  Napi::Value SetSpin(const Napi::CallbackInfo& info) {
    uint64_t caller, thread;
    if (!ArgU64(info, 0, &caller) || !ArgU64(info, 1, &thread)) return Napi::Value();
    core_->callerSpinNs = caller;
    core_->callerBudgetNs = caller;
    core_->callerMisses = 0;
    core_->threadSpinNs = thread;
    return info.Env().Undefined();
  }

  // kick() -> boolean: make a pending or running KVM_RUN return EINTR.
  Napi::Value Kick(const Napi::CallbackInfo& info) {
    Core& c = *core_;
    if (!c.started || c.closed) return Napi::Boolean::New(info.Env(), false);
    std::lock_guard<std::mutex> lock(c.kickMu);
    // Only a run that has not finished: after KVM_RUN returns, a kick would linger in
    // immediate_exit and cut the next run short.
    if (!c.inFlight) return Napi::Boolean::New(info.Env(), false);
    // immediate_exit covers a run that has not entered the guest yet; the signal
    // covers a guest that is already running.
    c.run->immediate_exit = 1;
    if (c.inRun) pthread_kill(c.thread.native_handle(), KickSignal());
    return Napi::Boolean::New(info.Env(), true);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    core_->Shutdown();
    return info.Env().Undefined();
  }

  std::shared_ptr<Core> core_;
};

// Register blocks travel as raw kernel structs; lib/kvm/vcpu.ts names the fields.
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
static Napi::Value GetLapic(const Napi::CallbackInfo& i) { return StructIoctl<KVM_GET_LAPIC, sizeof(kvm_lapic_state)>(i, "KVM_GET_LAPIC"); }
static Napi::Value SetLapic(const Napi::CallbackInfo& i) { return StructIoctl<KVM_SET_LAPIC, sizeof(kvm_lapic_state)>(i, "KVM_SET_LAPIC"); }
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

// getCpuid(vcpuFd) -> Uint32Array (10 words per entry)
static Napi::Value GetCpuid(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  return CpuidTable(info.Env(), fd, KVM_GET_CPUID2, "KVM_GET_CPUID2");
}

// setCpuid(vcpuFd, entries: Uint32Array of 10 words per entry)
static Napi::Value SetCpuid(const Napi::CallbackInfo& info) {
  int32_t fd;
  Napi::TypedArray array;
  if (!ArgI32(info, 0, &fd) || !ArgTypedArray(info, 1, napi_uint32_array, 0, &array)) return Napi::Value();
  size_t n = array.ElementLength() / 10;
  std::vector<uint8_t> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2), 0);
  auto* table = reinterpret_cast<kvm_cpuid2*>(buf.data());
  table->nent = static_cast<uint32_t>(n);
  // An empty Uint32Array may have no storage (Data() null): memcpy then must not be called.
  if (n) memcpy(buf.data() + sizeof(kvm_cpuid2), array.As<Napi::Uint32Array>().Data(), n * sizeof(kvm_cpuid_entry2));
  if (ioctl(fd, KVM_SET_CPUID2, table) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_SET_CPUID2");
  return info.Env().Undefined();
}

// getMsrs(vcpuFd, indices, data) / setMsrs(vcpuFd, indices, data) -> entries processed.
static Napi::Value GetMsrs(const Napi::CallbackInfo& info) { return MsrIo(info, KVM_GET_MSRS, "KVM_GET_MSRS"); }
static Napi::Value SetMsrs(const Napi::CallbackInfo& info) { return MsrIo(info, KVM_SET_MSRS, "KVM_SET_MSRS"); }

// getMpState(vcpuFd) -> KVM_MP_STATE_* number
static Napi::Value GetMpState(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  kvm_mp_state state = {0};
  if (ioctl(fd, KVM_GET_MP_STATE, &state) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_GET_MP_STATE");
  return Napi::Number::New(info.Env(), state.mp_state);
}

// setMpState(vcpuFd, state)
static Napi::Value SetMpState(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint32_t value;
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &value)) return Napi::Value();
  kvm_mp_state state = {value};
  if (ioctl(fd, KVM_SET_MP_STATE, &state) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_SET_MP_STATE");
  return info.Env().Undefined();
}

// setGuestDebug(vcpuFd, control, debugreg: BigUint64Array(8))
static Napi::Value SetGuestDebug(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint32_t control;
  Napi::TypedArray array;
  if (!ArgI32(info, 0, &fd) || !ArgU32(info, 1, &control) || !ArgTypedArray(info, 2, napi_biguint64_array, 8, &array))
    return Napi::Value();
  Napi::BigUint64Array regs = array.As<Napi::BigUint64Array>();
  kvm_guest_debug debug;
  memset(&debug, 0, sizeof debug);
  debug.control = control;
  for (size_t i = 0; i < 8; i++) debug.debugreg[i] = regs[i];
  if (ioctl(fd, KVM_SET_GUEST_DEBUG, &debug) != 0) return ThrowErrno(info.Env(), errno, "ioctl", "KVM_SET_GUEST_DEBUG");
  return info.Env().Undefined();
}

void InitVcpu(Napi::Env env, Napi::Object exports) {
  exports.Set("getMsrs", Napi::Function::New(env, GetMsrs, "getMsrs"));
  exports.Set("setMsrs", Napi::Function::New(env, SetMsrs, "setMsrs"));
  exports.Set("getLapic", Napi::Function::New(env, GetLapic, "getLapic"));
  exports.Set("setLapic", Napi::Function::New(env, SetLapic, "setLapic"));
  exports.Set("getMpState", Napi::Function::New(env, GetMpState, "getMpState"));
  exports.Set("setMpState", Napi::Function::New(env, SetMpState, "setMpState"));
  exports.Set("setGuestDebug", Napi::Function::New(env, SetGuestDebug, "setGuestDebug"));
  exports.Set("getCpuid", Napi::Function::New(env, GetCpuid, "getCpuid"));
  exports.Set("setCpuid", Napi::Function::New(env, SetCpuid, "setCpuid"));
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = OnKick;
  sigemptyset(&action.sa_mask);
  sigaction(KickSignal(), &action, nullptr);

  exports.Set("VcpuRunner", VcpuRunner::Define(env));
  exports.Set("runTimedOut", Napi::Number::New(env, kTimedOut));
  exports.Set("getRegs", Napi::Function::New(env, GetRegs, "getRegs"));
  exports.Set("setRegs", Napi::Function::New(env, SetRegs, "setRegs"));
  exports.Set("getSregs", Napi::Function::New(env, GetSregs, "getSregs"));
  exports.Set("setSregs", Napi::Function::New(env, SetSregs, "setSregs"));
  exports.Set("getFpu", Napi::Function::New(env, GetFpu, "getFpu"));
  exports.Set("setFpu", Napi::Function::New(env, SetFpu, "setFpu"));
  exports.Set("preFaultMemory", Napi::Function::New(env, PreFaultMemory, "preFaultMemory"));
}

}  // namespace gmem
