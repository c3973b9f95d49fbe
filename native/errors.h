// Errors cross from native to JavaScript as KvmError objects made by a factory that
// lib/errors.ts hands over at load, so they carry a real code and errno.
#ifndef GUEST_MEMFD_ERRORS_H
#define GUEST_MEMFD_ERRORS_H

#include <napi.h>

namespace gmem {
void InitErrors(Napi::Env env, Napi::Object exports);
}

#endif
