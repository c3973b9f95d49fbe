// memfd_create(2), memfd_secret(2) and file seals (F_ADD_SEALS / F_GET_SEALS).
#ifndef GUEST_MEMFD_MEMFD_H
#define GUEST_MEMFD_MEMFD_H

#include <napi.h>

namespace gmem {
void InitMemfd(Napi::Env env, Napi::Object exports);
}

#endif
