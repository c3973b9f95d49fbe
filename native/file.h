// Operations every file descriptor the addon owns supports: close, fallocate,
// ftruncate, fstat, close-on-exec.
#ifndef GUEST_MEMFD_FILE_H
#define GUEST_MEMFD_FILE_H

#include <napi.h>

namespace gmem {
void InitFile(Napi::Env env, Napi::Object exports);
}

#endif
