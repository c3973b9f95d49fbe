// The system fd (/dev/kvm): open, KVM_GET_API_VERSION, KVM_CHECK_EXTENSION (also
// used on VM fds), KVM_GET_VCPU_MMAP_SIZE, KVM_CREATE_VM.
#ifndef GUEST_MEMFD_KVM_H
#define GUEST_MEMFD_KVM_H

#include <napi.h>

namespace gmem {
void InitKvm(Napi::Env env, Napi::Object exports);
}

#endif
