// Shared mappings exposed as zero-copy external ArrayBuffers. One ArrayBuffer per
// mmap (V8 aborts when two external buffers share a data pointer); unmap detaches
// the buffer first so JavaScript sees length 0, never a dangling pointer.
#ifndef GUEST_MEMFD_MAPPING_H
#define GUEST_MEMFD_MAPPING_H

#include <napi.h>

namespace gmem {
void InitMapping(Napi::Env env, Napi::Object exports);
}

#endif
