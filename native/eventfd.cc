#include "eventfd.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstdint>

#include "common.h"
#include "uapi/kvm_gmem.h"

namespace gmem {
using namespace gmem_uapi;

// eventfdCreate(initval, flags) -> fd. EFD_CLOEXEC is always added.
static Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  uint32_t initval, flags;
  if (!ArgU32(info, 0, &initval) || !ArgU32(info, 1, &flags)) return Napi::Value();
  int fd = eventfd(initval, static_cast<int>(flags) | GMEM_EFD_CLOEXEC);
  if (fd < 0) return ThrowErrno(info.Env(), errno, "eventfd2", nullptr);
  if (!AdoptFd(info.Env(), fd)) return ThrowErrno(info.Env(), errno, "eventfd2", nullptr);
  return Napi::Number::New(info.Env(), fd);
}

// Runs `op` with O_NONBLOCK set on `fd` when it was created blocking: the file
// description is this process's alone (close-on-exec, never duplicated), so the
// flag change is seen by nobody else. The kernel's own readers (an irqfd consumes
// the counter when it fires) make a poll-then-read race, so poll is no substitute.
template <typename Op>
static ssize_t Nonblocking(int fd, bool blocking, Op op, int* err) {
  int saved = 0;
  if (blocking) {
    saved = fcntl(fd, F_GETFL);
    if (saved < 0 || fcntl(fd, F_SETFL, saved | O_NONBLOCK) != 0) {
      *err = errno;
      return -1;
    }
  }
  ssize_t r = op();
  *err = r < 0 ? errno : 0;
  if (blocking) fcntl(fd, F_SETFL, saved);
  return r;
}

// eventfdRead(fd, blocking) -> bigint: the counter (or 1 in semaphore mode), 0n when
// it is zero. Never blocks.
static Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  int32_t fd;
  if (!ArgI32(info, 0, &fd)) return Napi::Value();
  bool blocking = info[1].ToBoolean().Value();
  uint64_t value = 0;
  int err;
  ssize_t r = Nonblocking(fd, blocking, [&] { return read(fd, &value, sizeof value); }, &err);
  if (r < 0) {
    if (err == EAGAIN) return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(0));
    return ThrowErrno(info.Env(), err, "read", nullptr);
  }
  return Napi::BigInt::New(info.Env(), value);
}

// eventfdWrite(fd, value, blocking): adds to the counter. Never blocks: a write that
// would overflow it fails EAGAIN.
static Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  int32_t fd;
  uint64_t value;
  if (!ArgI32(info, 0, &fd) || !ArgU64(info, 1, &value)) return Napi::Value();
  bool blocking = info[2].ToBoolean().Value();
  int err;
  ssize_t r = Nonblocking(fd, blocking, [&] { return write(fd, &value, sizeof value); }, &err);
  if (r < 0) return ThrowErrno(info.Env(), err, "write", nullptr);
  return info.Env().Undefined();
}

// One armed wait: a uv_poll handle on the event loop and the callback it calls once.
// It lives until libuv has closed the handle, which may be after the JavaScript
// FdPoll object is gone; it holds the callback strongly until then, so whatever the
// callback closes over stays alive while the wait is pending.
struct PollState {
  uv_poll_t handle;
  napi_env env = nullptr;
  napi_ref callback = nullptr;
  napi_async_context context = nullptr;
  napi_async_cleanup_hook_handle hook = nullptr;
  class FdPoll* owner = nullptr;
  int fd = -1;
  int savedFlags = -1;  // the fd's status flags before uv_poll_init made it nonblocking
  bool closing = false;
};

static void OnClosed(uv_handle_t* handle) {
  auto* state = static_cast<PollState*>(handle->data);
  if (state->context != nullptr) napi_async_destroy(state->env, state->context);
  if (state->callback != nullptr) napi_delete_reference(state->env, state->callback);
  // Last: while the hook is registered, the environment waits for this close.
  if (state->hook != nullptr) napi_remove_async_cleanup_hook(state->hook);
  delete state;
}

// An fd being polled must be closed only after its handle: uv_close() removes it
// from libuv's epoll set at once (the close callback comes later), and a handle
// closed after its fd number was reused would remove somebody else's registration.
static void ClosePoll(PollState* state);

// The environment is going away with the wait still armed (a worker ending, the
// process exiting): close the handle and let the environment wait for the close.
static void AsyncCleanup(napi_async_cleanup_hook_handle /*hook*/, void* arg) { ClosePoll(static_cast<PollState*>(arg)); }

static void OnPoll(uv_poll_t* handle, int status, int /*events*/) {
  auto* state = static_cast<PollState*>(handle->data);
  if (state->closing) return;
  napi_env env = state->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb = nullptr, recv, arg, result;
  napi_get_reference_value(env, state->callback, &cb);
  napi_get_global(env, &recv);  // napi_make_callback wants an object as `this`
  napi_create_int32(env, status, &arg);
  napi_async_context context = state->context;
  state->context = nullptr;  // destroyed below, after the call
  // One shot: close before calling out, so a callback that arms a new wait on the
  // same fd does not meet this handle in the loop.
  ClosePoll(state);
  if (cb != nullptr) {
    // napi_make_callback runs the microtasks the callback queues (the promise it
    // settles), as any libuv callback into JavaScript must.
    napi_status s = napi_make_callback(env, context, recv, cb, 1, &arg, &result);
    if (s == napi_pending_exception) {
      napi_value error;
      napi_get_and_clear_last_exception(env, &error);
      napi_fatal_exception(env, error);
    }
  }
  if (context != nullptr) napi_async_destroy(env, context);
  napi_close_handle_scope(env, scope);
}

// new FdPoll(fd, onReadable(status)): waits, on the event loop, until `fd` is
// readable, then calls onReadable once with 0 (or a negative libuv error code).
// close() cancels a wait that has not fired; the callback is then never called.
class FdPoll : public Napi::ObjectWrap<FdPoll> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdPoll", {InstanceMethod("close", &FdPoll::Close)});
  }

  explicit FdPoll(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdPoll>(info) {
    Napi::Env env = info.Env();
    int32_t fd;
    if (!ArgI32(info, 0, &fd)) return;
    if (!info[1].IsFunction()) {
      Napi::TypeError::New(env, "FdPoll expects (fd, callback)").ThrowAsJavaScriptException();
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "FdPoll: no event loop").ThrowAsJavaScriptException();
      return;
    }
    auto* state = new PollState();
    state->env = env;
    state->handle.data = state;
    state->fd = fd;
    state->savedFlags = fcntl(fd, F_GETFL);
    int r = uv_poll_init(loop, &state->handle, fd);
    if (r != 0) {
      // uv_poll_init registers nothing when it fails (it may have set O_NONBLOCK).
      if (state->savedFlags >= 0) fcntl(fd, F_SETFL, state->savedFlags);
      delete state;
      ThrowErrno(env, -r, "epoll_ctl", nullptr);
      return;
    }
    napi_create_reference(env, info[1], 1, &state->callback);
    napi_value name;
    napi_create_string_utf8(env, "gmem:FdPoll", NAPI_AUTO_LENGTH, &name);
    napi_async_init(env, nullptr, name, &state->context);
    state->owner = this;
    state_ = state;
    r = uv_poll_start(&state->handle, UV_READABLE, OnPoll);
    if (r != 0) {
      ClosePoll(state);
      ThrowErrno(env, -r, "epoll_ctl", nullptr);
      return;
    }
    napi_add_async_cleanup_hook(env, AsyncCleanup, state, &state->hook);
  }

  ~FdPoll() override {
    // Collected with the wait armed: the wait goes on (the state holds the callback).
    if (state_ != nullptr) state_->owner = nullptr;
  }

  void Forget() { state_ = nullptr; }

 private:
  // close() -> boolean: true when it cancelled an armed wait.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (state_ == nullptr) return Napi::Boolean::New(info.Env(), false);
    ClosePoll(state_);
    return Napi::Boolean::New(info.Env(), true);
  }

  PollState* state_ = nullptr;
};

static void ClosePoll(PollState* state) {
  if (state->closing) return;
  state->closing = true;
  if (state->owner != nullptr) {
    state->owner->Forget();
    state->owner = nullptr;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&state->handle), OnClosed);
  // uv_poll_init set O_NONBLOCK; the fd is still open (handles close first): give
  // it back the flags its owner chose.
  if (state->savedFlags >= 0) fcntl(state->fd, F_SETFL, state->savedFlags);
}

void InitEventfd(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfdCreate", Napi::Function::New(env, EventfdCreate, "eventfdCreate"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
  exports.Set("FdPoll", FdPoll::Define(env));
}

}  // namespace gmem
