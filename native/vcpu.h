// vCPU fd: KVM_RUN on a dedicated native thread (VcpuRunner) or synchronously,
// register blocks (KVM_GET/SET_REGS, SREGS, FPU), KVM_PRE_FAULT_MEMORY, CPUID,
// MSRs (KVM_GET/SET_MSRS), the local APIC (KVM_GET/SET_LAPIC), KVM_GET/SET_MP_STATE
// and KVM_SET_GUEST_DEBUG.
#ifndef GUEST_MEMFD_VCPU_H
#define GUEST_MEMFD_VCPU_H

#include <napi.h>

namespace gmem {
void InitVcpu(Napi::Env env, Napi::Object exports);
}

#endif
