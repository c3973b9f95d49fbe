// eventfd(2): create (always close-on-exec), nonblocking read and write, and FdPoll,
// a one-shot wait for an fd to become readable that runs on the event loop itself
// (libuv's epoll), so a pending wait holds neither a thread nor the libuv threadpool.
#ifndef GUEST_MEMFD_EVENTFD_H
#define GUEST_MEMFD_EVENTFD_H

#include <napi.h>

namespace gmem {
void InitEventfd(Napi::Env env, Napi::Object exports);
}

#endif
