/*
 * The slice of the Linux KVM and memfd ABI that guest-memfd uses, carried here so
 * the addon builds against system headers older than guest_memfd (Debian 12 ships
 * Linux 6.1 headers, which predate KVM_CREATE_GUEST_MEMFD and memory attributes).
 *
 * Every number and layout below is the kernel's (include/uapi/linux/kvm.h,
 * arch/x86/include/uapi/asm/kvm.h, include/uapi/linux/memfd.h). Struct layouts are
 * pinned by static_asserts so a typo cannot compile.
 */
#ifndef GUEST_MEMFD_UAPI_KVM_GMEM_H
#define GUEST_MEMFD_UAPI_KVM_GMEM_H

#include <stddef.h>
#include <stdint.h>
#include <linux/ioctl.h>

namespace gmem_uapi {

constexpr unsigned KVMIO = 0xAE;

/* ---- system and VM ioctls ---- */
constexpr unsigned long KVM_GET_API_VERSION = _IO(KVMIO, 0x00);
constexpr unsigned long KVM_CREATE_VM = _IO(KVMIO, 0x01);
constexpr unsigned long KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03);
constexpr unsigned long KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04);
constexpr unsigned long KVM_CREATE_VCPU = _IO(KVMIO, 0x41);

struct kvm_userspace_memory_region {
  uint32_t slot;
  uint32_t flags;
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
};
static_assert(sizeof(kvm_userspace_memory_region) == 32, "kvm_userspace_memory_region");
constexpr unsigned long KVM_SET_USER_MEMORY_REGION =
    _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region);

struct kvm_userspace_memory_region2 {
  uint32_t slot;
  uint32_t flags;
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t guest_memfd_offset;
  uint32_t guest_memfd;
  uint32_t pad1;
  uint64_t pad2[14];
};
static_assert(sizeof(kvm_userspace_memory_region2) == 160, "kvm_userspace_memory_region2");
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd_offset) == 32, "region2 offset");
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd) == 40, "region2 guest_memfd");
constexpr unsigned long KVM_SET_USER_MEMORY_REGION2 =
    _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2);

constexpr uint32_t KVM_MEM_LOG_DIRTY_PAGES = 1u << 0;
constexpr uint32_t KVM_MEM_READONLY = 1u << 1;
constexpr uint32_t KVM_MEM_GUEST_MEMFD = 1u << 2;

struct kvm_dirty_log {
  uint32_t slot;
  uint32_t padding1;
  uint64_t dirty_bitmap; /* a userspace pointer */
};
static_assert(sizeof(kvm_dirty_log) == 16, "kvm_dirty_log");
constexpr unsigned long KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, struct kvm_dirty_log);

struct kvm_memory_attributes {
  uint64_t address;
  uint64_t size;
  uint64_t attributes;
  uint64_t flags;
};
static_assert(sizeof(kvm_memory_attributes) == 32, "kvm_memory_attributes");
constexpr unsigned long KVM_SET_MEMORY_ATTRIBUTES =
    _IOW(KVMIO, 0xd2, struct kvm_memory_attributes);
constexpr uint64_t KVM_MEMORY_ATTRIBUTE_PRIVATE = 1ull << 3;

struct kvm_create_guest_memfd {
  uint64_t size;
  uint64_t flags;
  uint64_t reserved[6];
};
static_assert(sizeof(kvm_create_guest_memfd) == 64, "kvm_create_guest_memfd");
constexpr unsigned long KVM_CREATE_GUEST_MEMFD =
    _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd);
constexpr uint64_t GUEST_MEMFD_FLAG_MMAP = 1ull << 0;
constexpr uint64_t GUEST_MEMFD_FLAG_INIT_SHARED = 1ull << 1;

struct kvm_pre_fault_memory {
  uint64_t gpa;
  uint64_t size;
  uint64_t flags;
  uint64_t padding[5];
};
static_assert(sizeof(kvm_pre_fault_memory) == 64, "kvm_pre_fault_memory");
constexpr unsigned long KVM_PRE_FAULT_MEMORY =
    _IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory);

struct kvm_enable_cap {
  uint32_t cap;
  uint32_t flags;
  uint64_t args[4];
  uint8_t pad[64];
};
static_assert(sizeof(kvm_enable_cap) == 104, "kvm_enable_cap");
constexpr unsigned long KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, struct kvm_enable_cap);

/* ---- CPUID (x86) ---- */
struct kvm_cpuid_entry2 {
  uint32_t function;
  uint32_t index;
  uint32_t flags;
  uint32_t eax, ebx, ecx, edx;
  uint32_t padding[3];
};
static_assert(sizeof(kvm_cpuid_entry2) == 40, "kvm_cpuid_entry2");
struct kvm_cpuid2 {
  uint32_t nent;
  uint32_t padding;
  /* struct kvm_cpuid_entry2 entries[nent] follow */
};
static_assert(sizeof(kvm_cpuid2) == 8, "kvm_cpuid2");
constexpr unsigned long KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, struct kvm_cpuid2);
constexpr unsigned long KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, struct kvm_cpuid2);
constexpr unsigned long KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, struct kvm_cpuid2);
constexpr uint32_t KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1u << 0;

/* ---- vCPU ioctls (x86) ---- */
constexpr unsigned long KVM_RUN = _IO(KVMIO, 0x80);

struct kvm_regs {
  uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
  uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
  uint64_t rip, rflags;
};
static_assert(sizeof(kvm_regs) == 144, "kvm_regs");
constexpr unsigned long KVM_GET_REGS = _IOR(KVMIO, 0x81, struct kvm_regs);
constexpr unsigned long KVM_SET_REGS = _IOW(KVMIO, 0x82, struct kvm_regs);

struct kvm_segment {
  uint64_t base;
  uint32_t limit;
  uint16_t selector;
  uint8_t type, present, dpl, db, s, l, g, avl, unusable, padding;
};
static_assert(sizeof(kvm_segment) == 24, "kvm_segment");

struct kvm_dtable {
  uint64_t base;
  uint16_t limit;
  uint16_t padding[3];
};
static_assert(sizeof(kvm_dtable) == 16, "kvm_dtable");

struct kvm_sregs {
  kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
  kvm_dtable gdt, idt;
  uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
  uint64_t interrupt_bitmap[4];
};
static_assert(sizeof(kvm_sregs) == 312, "kvm_sregs");
constexpr unsigned long KVM_GET_SREGS = _IOR(KVMIO, 0x83, struct kvm_sregs);
constexpr unsigned long KVM_SET_SREGS = _IOW(KVMIO, 0x84, struct kvm_sregs);

struct kvm_fpu {
  uint8_t fpr[8][16];
  uint16_t fcw, fsw;
  uint8_t ftwx, pad1;
  uint16_t last_opcode;
  uint64_t last_ip, last_dp;
  uint8_t xmm[16][16];
  uint32_t mxcsr, pad2;
};
static_assert(sizeof(kvm_fpu) == 416, "kvm_fpu");
constexpr unsigned long KVM_GET_FPU = _IOR(KVMIO, 0x8c, struct kvm_fpu);
constexpr unsigned long KVM_SET_FPU = _IOW(KVMIO, 0x8d, struct kvm_fpu);

/* The head of struct kvm_run: the fields the native layer touches itself. The exit
 * union (offset 32) is decoded in TypeScript over the shared mapping. */
struct kvm_run_head {
  uint8_t request_interrupt_window;
  uint8_t immediate_exit;
  uint8_t padding1[6];
  uint32_t exit_reason;
  uint8_t ready_for_interrupt_injection;
  uint8_t if_flag;
  uint16_t flags;
  uint64_t cr8;
  uint64_t apic_base;
};
static_assert(sizeof(kvm_run_head) == 32, "kvm_run head");
static_assert(offsetof(kvm_run_head, exit_reason) == 8, "kvm_run exit_reason");

constexpr uint32_t KVM_EXIT_MEMORY_FAULT = 39;

/* ---- memfd (include/uapi/linux/memfd.h): macros, as libc's <sys/mman.h> may
 * define the same names ---- */
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 0x0002U
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

}  // namespace gmem_uapi

#endif
