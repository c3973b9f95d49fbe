// userfaultfd(2): whether a range of this process's memory can be registered with
// a userfaultfd in a given mode (UFFDIO_REGISTER), found by doing it.
#ifndef GUEST_MEMFD_USERFAULTFD_H
#define GUEST_MEMFD_USERFAULTFD_H

#include <napi.h>

namespace gmem {
void InitUserfaultfd(Napi::Env env, Napi::Object exports);
}

#endif
