// The system fd (/dev/kvm): open, KVM_GET_API_VERSION, KVM_CHECK_EXTENSION (also
// used on VM fds), KVM_GET_VCPU_MMAP_SIZE, KVM_CREATE_VM, KVM_GET_SUPPORTED_CPUID,
// KVM_GET_MSR_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST and feature KVM_GET_MSRS.
#ifndef GUEST_MEMFD_KVM_H
#define GUEST_MEMFD_KVM_H

#include <napi.h>

namespace gmem {
void InitKvm(Napi::Env env, Napi::Object exports);
}

#endif
