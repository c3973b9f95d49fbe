/*
 * The slice of the Linux KVM, memfd, eventfd, userfaultfd and mempolicy ABI that
 * guest-memfd uses, carried here so the addon builds against system headers older
 * than guest_memfd (Debian 12 ships Linux 6.1 headers, which predate
 * KVM_CREATE_GUEST_MEMFD and memory attributes).
 *
 * Every number and layout below is the kernel's (include/uapi/linux/kvm.h,
 * arch/x86/include/uapi/asm/kvm.h, include/uapi/linux/memfd.h,
 * include/uapi/linux/eventfd.h, include/uapi/linux/userfaultfd.h,
 * include/uapi/linux/mempolicy.h). Struct layouts are pinned by static_asserts so a
 * typo cannot compile.
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

/* ---- MSRs (x86) ---- */
struct kvm_msr_list {
  uint32_t nmsrs;
  /* uint32_t indices[nmsrs] follow */
};
static_assert(sizeof(kvm_msr_list) == 4, "kvm_msr_list");
constexpr unsigned long KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, struct kvm_msr_list);
constexpr unsigned long KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0a, struct kvm_msr_list);

struct kvm_msr_entry {
  uint32_t index;
  uint32_t reserved;
  uint64_t data;
};
static_assert(sizeof(kvm_msr_entry) == 16, "kvm_msr_entry");
struct kvm_msrs {
  uint32_t nmsrs;
  uint32_t pad;
  /* struct kvm_msr_entry entries[nmsrs] follow */
};
static_assert(sizeof(kvm_msrs) == 8, "kvm_msrs");
/* On a vCPU fd: the vCPU's MSRs; on the system fd: MSR-based features (KVM_CAP_GET_MSR_FEATURES). */
constexpr unsigned long KVM_GET_MSRS = _IOWR(KVMIO, 0x88, struct kvm_msrs);
constexpr unsigned long KVM_SET_MSRS = _IOW(KVMIO, 0x89, struct kvm_msrs);
/* arch/x86/kvm/x86.c MAX_IO_MSRS: msr_io() refuses nmsrs >= this with E2BIG. */
constexpr uint32_t KVM_MAX_IO_MSRS = 256;

/* ---- in-kernel interrupt controllers and timers (x86) ---- */
constexpr unsigned long KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60);

struct kvm_irq_level {
  union {
    uint32_t irq;
    int32_t status;
  };
  uint32_t level;
};
static_assert(sizeof(kvm_irq_level) == 8, "kvm_irq_level");
constexpr unsigned long KVM_IRQ_LINE = _IOW(KVMIO, 0x61, struct kvm_irq_level);
constexpr unsigned long KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, struct kvm_irq_level);

struct kvm_pit_config {
  uint32_t flags;
  uint32_t pad[15];
};
static_assert(sizeof(kvm_pit_config) == 64, "kvm_pit_config");
constexpr unsigned long KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, struct kvm_pit_config);
constexpr uint32_t KVM_PIT_SPEAKER_DUMMY = 1;

constexpr unsigned long KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47);
constexpr unsigned long KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, uint64_t);

/* KVM_APIC_REG_SIZE: the local APIC's register page as KVM_GET/SET_LAPIC carry it. */
struct kvm_lapic_state {
  char regs[0x400];
};
static_assert(sizeof(kvm_lapic_state) == 1024, "kvm_lapic_state");
constexpr unsigned long KVM_GET_LAPIC = _IOR(KVMIO, 0x8e, struct kvm_lapic_state);
constexpr unsigned long KVM_SET_LAPIC = _IOW(KVMIO, 0x8f, struct kvm_lapic_state);

struct kvm_mp_state {
  uint32_t mp_state;
};
static_assert(sizeof(kvm_mp_state) == 4, "kvm_mp_state");
constexpr unsigned long KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, struct kvm_mp_state);
constexpr unsigned long KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, struct kvm_mp_state);

/* ---- eventfd bindings ---- */
struct kvm_irqfd {
  uint32_t fd;
  uint32_t gsi;
  uint32_t flags;
  uint32_t resamplefd;
  uint8_t pad[16];
};
static_assert(sizeof(kvm_irqfd) == 32, "kvm_irqfd");
constexpr unsigned long KVM_IRQFD = _IOW(KVMIO, 0x76, struct kvm_irqfd);
constexpr uint32_t KVM_IRQFD_FLAG_DEASSIGN = 1u << 0;
constexpr uint32_t KVM_IRQFD_FLAG_RESAMPLE = 1u << 1;

struct kvm_ioeventfd {
  uint64_t datamatch;
  uint64_t addr; /* a PIO port or an MMIO GPA */
  uint32_t len;  /* 1, 2, 4 or 8; 0 matches any length */
  int32_t fd;
  uint32_t flags;
  uint8_t pad[36];
};
static_assert(sizeof(kvm_ioeventfd) == 64, "kvm_ioeventfd");
static_assert(offsetof(kvm_ioeventfd, fd) == 20, "kvm_ioeventfd fd");
constexpr unsigned long KVM_IOEVENTFD = _IOW(KVMIO, 0x79, struct kvm_ioeventfd);
constexpr uint32_t KVM_IOEVENTFD_FLAG_DATAMATCH = 1u << 0;
constexpr uint32_t KVM_IOEVENTFD_FLAG_PIO = 1u << 1;
constexpr uint32_t KVM_IOEVENTFD_FLAG_DEASSIGN = 1u << 2;

/* ---- guest debugging (x86 struct kvm_guest_debug_arch: debugreg[8]) ---- */
struct kvm_guest_debug {
  uint32_t control;
  uint32_t pad;
  uint64_t debugreg[8];
};
static_assert(sizeof(kvm_guest_debug) == 72, "kvm_guest_debug");
constexpr unsigned long KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9b, struct kvm_guest_debug);

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

/* ---- eventfd (include/uapi/linux/eventfd.h: the O_* values of x86) ---- */
constexpr int GMEM_EFD_SEMAPHORE = 1;
constexpr int GMEM_EFD_NONBLOCK = 04000;
constexpr int GMEM_EFD_CLOEXEC = 02000000;

/* ---- userfaultfd (include/uapi/linux/userfaultfd.h) ---- */
constexpr unsigned UFFDIO = 0xAA;
constexpr uint64_t UFFD_API = 0xAA;
struct uffdio_api {
  uint64_t api;
  uint64_t features;
  uint64_t ioctls;
};
static_assert(sizeof(uffdio_api) == 24, "uffdio_api");
struct uffdio_range {
  uint64_t start;
  uint64_t len;
};
static_assert(sizeof(uffdio_range) == 16, "uffdio_range");
struct uffdio_register {
  uffdio_range range;
  uint64_t mode;
  uint64_t ioctls;
};
static_assert(sizeof(uffdio_register) == 32, "uffdio_register");
constexpr unsigned long UFFDIO_API_IOCTL = _IOWR(UFFDIO, 0x3F, struct uffdio_api);
constexpr unsigned long UFFDIO_REGISTER_IOCTL = _IOWR(UFFDIO, 0x00, struct uffdio_register);
constexpr unsigned long UFFDIO_UNREGISTER_IOCTL = _IOR(UFFDIO, 0x01, struct uffdio_range);
constexpr uint64_t UFFDIO_REGISTER_MODE_MISSING = 1ull << 0;
constexpr uint64_t UFFDIO_REGISTER_MODE_WP = 1ull << 1;
constexpr uint64_t UFFDIO_REGISTER_MODE_MINOR = 1ull << 2;

/* ---- NUMA memory policy (include/uapi/linux/mempolicy.h) ---- */
constexpr int GMEM_MPOL_DEFAULT = 0;
constexpr int GMEM_MPOL_PREFERRED = 1;
constexpr int GMEM_MPOL_BIND = 2;
constexpr int GMEM_MPOL_INTERLEAVE = 3;
constexpr unsigned long GMEM_MPOL_F_NODE = 1ul << 0;
constexpr unsigned long GMEM_MPOL_F_ADDR = 1ul << 1;

}  // namespace gmem_uapi

#endif
