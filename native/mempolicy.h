// NUMA memory policy of mapped guest memory, by raw syscall (no libnuma): mbind(2)
// on a mapping, get_mempolicy(2) of an address or of a file range, and
// move_pages(2) with no target nodes, which reports the node each page is on.
#ifndef GUEST_MEMFD_MEMPOLICY_H
#define GUEST_MEMFD_MEMPOLICY_H

#include <napi.h>

namespace gmem {
void InitMempolicy(Napi::Env env, Napi::Object exports);
}

#endif
