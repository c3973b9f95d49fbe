// VM fd ioctls: KVM_SET_USER_MEMORY_REGION(2), KVM_SET_MEMORY_ATTRIBUTES,
// KVM_GET_DIRTY_LOG, KVM_CREATE_VCPU, KVM_ENABLE_CAP.
#ifndef GUEST_MEMFD_VM_H
#define GUEST_MEMFD_VM_H

#include <napi.h>

namespace gmem {
void InitVm(Napi::Env env, Napi::Object exports);
}

#endif
