// VM fd ioctls: KVM_SET_USER_MEMORY_REGION(2), KVM_SET_MEMORY_ATTRIBUTES,
// KVM_GET_DIRTY_LOG, KVM_CREATE_VCPU, KVM_ENABLE_CAP, the in-kernel irqchip and PIT
// (KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2, KVM_IRQ_LINE(_STATUS)), KVM_SET_TSS_ADDR,
// KVM_SET_IDENTITY_MAP_ADDR, and eventfd bindings (KVM_IRQFD, KVM_IOEVENTFD).
#ifndef GUEST_MEMFD_VM_H
#define GUEST_MEMFD_VM_H

#include <napi.h>

namespace gmem {
void InitVm(Napi::Env env, Napi::Object exports);
}

#endif
