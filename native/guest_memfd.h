// KVM_CREATE_GUEST_MEMFD. The kernel hands out guest_memfd fds without
// close-on-exec; the addon sets it before the fd is visible to anyone.
#ifndef GUEST_MEMFD_GUEST_MEMFD_H
#define GUEST_MEMFD_GUEST_MEMFD_H

#include <napi.h>

namespace gmem {
void InitGuestMemfd(Napi::Env env, Napi::Object exports);
}

#endif
