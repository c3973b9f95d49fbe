/*
 * kvm_ref: the C reference of guest-memfd's benchmark (bench/README.md).
 *
 * It does, with raw syscalls, exactly the kernel work of each Node op in
 * bench/ops.mjs, on the same layout: one default-type VM holding
 *
 *   - `big`:   a 256 MiB guest_memfd (MMAP | INIT_SHARED), mapped whole, and its
 *              first 2 MiB mapped a second time for slot_add_delete;
 *   - `guest`: a 2 MiB guest_memfd (MMAP | INIT_SHARED), mapped, bound as slot 0 at
 *              GPA 0, with the real-mode loop `mov dx,0x3f8; out dx,al; jmp $-3`
 *              at GPA 0x1000;
 *   - vCPU 0:  kvm_run mapped, CS base 0 / selector 0, RIP 0x1000, RFLAGS 2.
 *
 * and, where KVM offers a sw-protected VM with KVM_MEMORY_ATTRIBUTE_PRIVATE (the
 * mainline test kernels, not every host), a second VM for the convert_* ops:
 *
 *   - a KVM_X86_SW_PROTECTED_VM holding one 1 GiB slot at GPA 0: a 1 GiB memfd
 *     (MFD_CLOEXEC, mapped) as its shared memory and a 1 GiB guest_memfd (no flags,
 *     close-on-exec) as its private memory, all of it shared to begin with.
 *
 * A conversion is what the library's vm.convert does when nobody listens: to
 * private, KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) and a punch of the now stale shared
 * copy in the memfd; to shared, KVM_SET_MEMORY_ATTRIBUTES(0) and a punch of the
 * private copy in the guest_memfd. A batch converts every range's attributes first,
 * then punches each range, as the library's convertMany does.
 *
 * Modes:
 *   kvm_ref                  serve: set up, print {"ready":...}, then for every
 *                            stdin line "OP ITERS" run one batch and answer one
 *                            JSON line; "quit" or end of input exits.
 *   kvm_ref --once OP ITERS [BATCHES]
 *                            set up, run BATCHES batches (default 1), print their
 *                            lines, exit: for perf / callgrind on one op.
 *   kvm_ref --spin [CPU]     spin forever (pinned to CPU when given): the load of
 *                            the benchmark's busy rows.
 *   kvm_ref --abi            print the ABI numbers compiled in, one "NAME VALUE"
 *                            per line (the tests compare them with
 *                            native/uapi/kvm_gmem.h).
 *
 * A batch answer: {"op":OP,"iters":N,"ns":WALL,"user_ns":U,"sys_ns":S,"bytes":B}.
 * WALL is CLOCK_MONOTONIC around the loop only (set-up steps an op needs before
 * each batch, such as punching the file empty before fault_in_256m, are outside
 * it); U and S are this process's getrusage(RUSAGE_SELF) deltas over the same
 * span. B is the bytes moved, for the GB/s ops. An unknown op answers {"error":...};
 * a failing syscall prints {"error":...} and exits 1. Without a usable KVM or
 * guest_memfd with MMAP | INIT_SHARED it prints {"skip":REASON} and exits 2.
 *
 * Debian 12's kernel headers predate guest_memfd, so the ABI slice used here is
 * defined below (numbers and layouts from the kernel's include/uapi/linux/kvm.h and
 * arch/x86/include/uapi/asm/kvm.h, as in native/uapi/kvm_gmem.h).
 *
 *   cc -O2 -Wall -Wextra -o kvm_ref bench/ref/kvm_ref.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* ---- the KVM ABI slice ---- */
#define KVMIO 0xAE
#define KVM_CREATE_VM _IO(KVMIO, 0x01)
#define KVM_CHECK_EXTENSION _IO(KVMIO, 0x03)
#define KVM_GET_VCPU_MMAP_SIZE _IO(KVMIO, 0x04)
#define KVM_CREATE_VCPU _IO(KVMIO, 0x41)
#define KVM_RUN _IO(KVMIO, 0x80)

#define KVM_CAP_MEMORY_ATTRIBUTES 233
#define KVM_CAP_GUEST_MEMFD 234
#define KVM_CAP_VM_TYPES 235
#define KVM_X86_SW_PROTECTED_VM 1
#define KVM_CAP_GUEST_MEMFD_FLAGS 244
#define GUEST_MEMFD_FLAG_MMAP (1ull << 0)
#define GUEST_MEMFD_FLAG_INIT_SHARED (1ull << 1)
#define KVM_MEM_GUEST_MEMFD (1u << 2)
#define KVM_EXIT_IO 2

struct ref_create_guest_memfd {
  uint64_t size;
  uint64_t flags;
  uint64_t reserved[6];
};
_Static_assert(sizeof(struct ref_create_guest_memfd) == 64, "kvm_create_guest_memfd");
#define KVM_CREATE_GUEST_MEMFD _IOWR(KVMIO, 0xd4, struct ref_create_guest_memfd)

struct ref_region2 {
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
_Static_assert(sizeof(struct ref_region2) == 160, "kvm_userspace_memory_region2");
_Static_assert(offsetof(struct ref_region2, guest_memfd) == 40, "region2.guest_memfd");
#define KVM_SET_USER_MEMORY_REGION2 _IOW(KVMIO, 0x49, struct ref_region2)

struct ref_memory_attributes {
  uint64_t address;
  uint64_t size;
  uint64_t attributes;
  uint64_t flags;
};
_Static_assert(sizeof(struct ref_memory_attributes) == 32, "kvm_memory_attributes");
#define KVM_SET_MEMORY_ATTRIBUTES _IOW(KVMIO, 0xd2, struct ref_memory_attributes)
#define KVM_MEMORY_ATTRIBUTE_PRIVATE (1ull << 3)

struct ref_regs {
  uint64_t gpr[16]; /* rax rbx rcx rdx rsi rdi rsp rbp r8..r15 */
  uint64_t rip, rflags;
};
_Static_assert(sizeof(struct ref_regs) == 144, "kvm_regs");
#define KVM_GET_REGS _IOR(KVMIO, 0x81, struct ref_regs)
#define KVM_SET_REGS _IOW(KVMIO, 0x82, struct ref_regs)

struct ref_segment {
  uint64_t base;
  uint32_t limit;
  uint16_t selector;
  uint8_t type, present, dpl, db, s, l, g, avl, unusable, padding;
};
_Static_assert(sizeof(struct ref_segment) == 24, "kvm_segment");
struct ref_sregs {
  struct ref_segment cs, ds, es, fs, gs, ss, tr, ldt;
  uint8_t rest[312 - 8 * sizeof(struct ref_segment)]; /* gdt, idt, control registers, bitmap */
};
_Static_assert(sizeof(struct ref_sregs) == 312, "kvm_sregs");
#define KVM_GET_SREGS _IOR(KVMIO, 0x83, struct ref_sregs)
#define KVM_SET_SREGS _IOW(KVMIO, 0x84, struct ref_sregs)

/* The head of struct kvm_run and its io exit (the union starts at offset 32). */
struct ref_run {
  uint8_t request_interrupt_window, immediate_exit, padding1[6];
  uint32_t exit_reason;
  uint8_t ready_for_interrupt_injection, if_flag;
  uint16_t flags;
  uint64_t cr8, apic_base;
  struct {
    uint8_t direction, size;
    uint16_t port;
    uint32_t count;
    uint64_t data_offset;
  } io;
};
_Static_assert(offsetof(struct ref_run, exit_reason) == 8, "kvm_run.exit_reason");
_Static_assert(offsetof(struct ref_run, io) == 32, "kvm_run exit union");

/* ---- the layout ---- */
#define MiB (1ull << 20)
#define BIG_SIZE (256 * MiB)
#define GUEST_SIZE (2 * MiB)
#define CREATE_SIZE (16ull << 30)   /* gmem_create_close: 16 GiB */
#define SLOT_GPA (1ull << 32)       /* slot_add_delete: 2 MiB at 4 GiB */
#define SLOT_SIZE (2 * MiB)
#define CODE_GPA 0x1000
#define GMEM_FLAGS (GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
#define CONV_SIZE (1024 * MiB)      /* convert_*: the sw-protected VM's one slot */
#define CONV_BATCH 1000             /* convert_batch_1000: ranges per batch, every other page */

static int kvm = -1, vm = -1, big = -1, guest = -1, vcpu = -1;
static volatile uint8_t *big_mem;   /* the whole 256 MiB */
static uint8_t *slot_mem;           /* its first 2 MiB, mapped again */
static uint8_t *guest_mem;
static uint8_t *copy_src;           /* 256 MiB of 7s, for copy_256m */
static volatile struct ref_run *run;
static int cvm = -1, cshared = -1, cprivate = -1; /* the conversion layout, or -1 */
static uint8_t *cshared_mem;
static volatile uint64_t sink;

static void fail(const char *what) {
  printf("{\"error\":\"%s: %s\"}\n", what, strerror(errno));
  fflush(stdout);
  exit(1);
}

static void skip(const char *why) {
  printf("{\"skip\":\"%s\"}\n", why);
  fflush(stdout);
  exit(2);
}

static int create_gmem(uint64_t size) {
  struct ref_create_guest_memfd args;
  memset(&args, 0, sizeof args);
  args.size = size;
  args.flags = GMEM_FLAGS;
  int fd = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &args);
  if (fd < 0) fail("KVM_CREATE_GUEST_MEMFD");
  /* As the library does: guest memory must not leak into spawned children. */
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) fail("fcntl(F_SETFD)");
  return fd;
}

static void *map_fd(int fd, size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) fail("mmap");
  return p;
}

static void set_region(uint32_t slot, uint64_t gpa, uint64_t size, void *uaddr, int gmem_fd) {
  struct ref_region2 r;
  memset(&r, 0, sizeof r);
  r.slot = slot;
  r.flags = KVM_MEM_GUEST_MEMFD;
  r.guest_phys_addr = gpa;
  r.memory_size = size;
  r.userspace_addr = (uint64_t)(uintptr_t)uaddr;
  r.guest_memfd_offset = 0;
  r.guest_memfd = (uint32_t)gmem_fd;
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) != 0) fail("KVM_SET_USER_MEMORY_REGION2");
}

static void punch(int fd, off_t offset, off_t length) {
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0) fail("fallocate");
}

static void set_attributes(uint64_t gpa, uint64_t size, uint64_t attributes) {
  struct ref_memory_attributes a;
  memset(&a, 0, sizeof a);
  a.address = gpa;
  a.size = size;
  a.attributes = attributes;
  if (ioctl(cvm, KVM_SET_MEMORY_ATTRIBUTES, &a) != 0) fail("KVM_SET_MEMORY_ATTRIBUTES");
}

/* The convert_* layout, where KVM can: a sw-protected VM with one 1 GiB slot. */
static void setup_conversion(void) {
  int types = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_VM_TYPES);
  if (types <= 0 || !(types & (1 << KVM_X86_SW_PROTECTED_VM))) return;
  cvm = ioctl(kvm, KVM_CREATE_VM, KVM_X86_SW_PROTECTED_VM);
  if (cvm < 0) fail("KVM_CREATE_VM(KVM_X86_SW_PROTECTED_VM)");
  int attrs = ioctl(cvm, KVM_CHECK_EXTENSION, KVM_CAP_MEMORY_ATTRIBUTES);
  if (attrs <= 0 || !((uint64_t)attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE) ||
      ioctl(cvm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) <= 0) {
    close(cvm);
    cvm = -1;
    return;
  }
  cshared = memfd_create("shared", MFD_CLOEXEC);
  if (cshared < 0) fail("memfd_create");
  if (ftruncate(cshared, (off_t)CONV_SIZE) != 0) fail("ftruncate");
  cshared_mem = map_fd(cshared, CONV_SIZE);
  struct ref_create_guest_memfd args;
  memset(&args, 0, sizeof args);
  args.size = CONV_SIZE;
  cprivate = ioctl(cvm, KVM_CREATE_GUEST_MEMFD, &args);
  if (cprivate < 0) fail("KVM_CREATE_GUEST_MEMFD(sw-protected)");
  if (fcntl(cprivate, F_SETFD, FD_CLOEXEC) != 0) fail("fcntl(F_SETFD)");
  struct ref_region2 r;
  memset(&r, 0, sizeof r);
  r.slot = 0;
  r.flags = KVM_MEM_GUEST_MEMFD;
  r.guest_phys_addr = 0;
  r.memory_size = CONV_SIZE;
  r.userspace_addr = (uint64_t)(uintptr_t)cshared_mem;
  r.guest_memfd = (uint32_t)cprivate;
  if (ioctl(cvm, KVM_SET_USER_MEMORY_REGION2, &r) != 0) fail("KVM_SET_USER_MEMORY_REGION2(sw-protected)");
}

static void setup(void) {
  const char *path = getenv("GMEM_KVM_PATH");
  if (path == NULL || *path == '\0') path = "/dev/kvm";
  kvm = open(path, O_RDWR | O_CLOEXEC);
  if (kvm < 0) {
    char why[512];
    snprintf(why, sizeof why, "%s: %s", path, strerror(errno));
    skip(why);
  }
  vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) fail("KVM_CREATE_VM");
  if (ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) <= 0) skip("no KVM_CAP_GUEST_MEMFD");
  int flags = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD_FLAGS);
  if (flags < 0 || ((uint64_t)flags & GMEM_FLAGS) != GMEM_FLAGS) skip("guest_memfd lacks MMAP | INIT_SHARED");

  big = create_gmem(BIG_SIZE);
  big_mem = map_fd(big, BIG_SIZE);
  slot_mem = map_fd(big, SLOT_SIZE);
  copy_src = malloc(BIG_SIZE);
  if (copy_src == NULL) fail("malloc");
  memset(copy_src, 7, BIG_SIZE);

  guest = create_gmem(GUEST_SIZE);
  guest_mem = map_fd(guest, GUEST_SIZE);
  set_region(0, 0, GUEST_SIZE, guest_mem, guest);
  static const uint8_t out_loop[] = {0xba, 0xf8, 0x03, 0xee, 0xeb, 0xfd};
  memcpy(guest_mem + CODE_GPA, out_loop, sizeof out_loop);

  vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) fail("KVM_CREATE_VCPU"); /* KVM makes VM and vCPU fds close-on-exec itself */
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < 0) fail("KVM_GET_VCPU_MMAP_SIZE");
  run = map_fd(vcpu, (size_t)run_size);
  struct ref_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) != 0) fail("KVM_GET_SREGS");
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) != 0) fail("KVM_SET_SREGS");
  struct ref_regs regs;
  if (ioctl(vcpu, KVM_GET_REGS, &regs) != 0) fail("KVM_GET_REGS");
  regs.rip = CODE_GPA;
  regs.rflags = 2;
  if (ioctl(vcpu, KVM_SET_REGS, &regs) != 0) fail("KVM_SET_REGS");
  setup_conversion();
}

/* ---- the ops: each runs `n` iterations of the timed work ---- */

static void op_check_extension(long n) {
  for (long i = 0; i < n; i++) {
    int r = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD);
    if (r < 0) fail("KVM_CHECK_EXTENSION");
    sink += (uint64_t)r;
  }
}

static void op_gmem_create_close(long n) {
  for (long i = 0; i < n; i++) close(create_gmem(CREATE_SIZE));
}

static void op_slot_add_delete(long n) {
  for (long i = 0; i < n; i++) {
    set_region(1, SLOT_GPA, SLOT_SIZE, slot_mem, big);
    set_region(1, SLOT_GPA, 0, slot_mem, big);
  }
}

static void op_punch_hole_4k(long n) {
  for (long i = 0; i < n; i++) {
    off_t off = (off_t)(i % 256) * 4096;
    big_mem[off] = 1;
    punch(big, off, 4096);
  }
}

static void prep_fault_in(void) { punch(big, 0, BIG_SIZE); }

static void op_fault_in_256m(long n) {
  for (long i = 0; i < n; i++)
    for (size_t off = 0; off < BIG_SIZE; off += 4096) big_mem[off] = 1;
}

static void op_copy_256m(long n) {
  for (long i = 0; i < n; i++) {
    memcpy((void *)big_mem, copy_src, BIG_SIZE);
    __asm__ volatile("" ::: "memory");
  }
}

static void op_vcpu_io_exit(long n) {
  for (long i = 0; i < n; i++) {
    run->exit_reason = 0;
    if (ioctl(vcpu, KVM_RUN, 0) != 0) fail("KVM_RUN");
    if (run->exit_reason != KVM_EXIT_IO) {
      errno = 0;
      fail("KVM_RUN: not an io exit");
    }
    const volatile uint8_t *data = (const volatile uint8_t *)run + run->io.data_offset;
    sink += run->io.port + run->io.direction + run->io.size + run->io.count + data[0];
  }
}

/* One conversion each way of [gpa, +size): attributes, then the stale copy punched. */
static void convert_pair(uint64_t gpa, uint64_t size) {
  set_attributes(gpa, size, KVM_MEMORY_ATTRIBUTE_PRIVATE);
  punch(cshared, (off_t)gpa, (off_t)size);
  set_attributes(gpa, size, 0);
  punch(cprivate, (off_t)gpa, (off_t)size);
}

static void op_convert_4k(long n) {
  for (long i = 0; i < n; i++) convert_pair(0, 4096);
}

static void op_convert_1g(long n) {
  for (long i = 0; i < n; i++) convert_pair(0, CONV_SIZE);
}

/* CONV_BATCH ranges of 4 KiB at every other page, to private and back. */
static void op_convert_batch_1000(long n) {
  for (long i = 0; i < n; i++) {
    for (int k = 0; k < CONV_BATCH; k++) set_attributes((uint64_t)k * 8192, 4096, KVM_MEMORY_ATTRIBUTE_PRIVATE);
    for (int k = 0; k < CONV_BATCH; k++) punch(cshared, (off_t)k * 8192, 4096);
    for (int k = 0; k < CONV_BATCH; k++) set_attributes((uint64_t)k * 8192, 4096, 0);
    for (int k = 0; k < CONV_BATCH; k++) punch(cprivate, (off_t)k * 8192, 4096);
  }
}

struct op {
  const char *name;
  void (*prep)(void); /* before each batch, untimed */
  void (*body)(long n);
  uint64_t bytes;     /* per iteration, for GB/s */
  int conversion;     /* needs the sw-protected layout */
};

static const struct op ops[] = {
    {"check_extension", NULL, op_check_extension, 0, 0},
    {"gmem_create_close", NULL, op_gmem_create_close, 0, 0},
    {"slot_add_delete", NULL, op_slot_add_delete, 0, 0},
    {"punch_hole_4k", NULL, op_punch_hole_4k, 0, 0},
    {"fault_in_256m", prep_fault_in, op_fault_in_256m, BIG_SIZE, 0},
    {"copy_256m", NULL, op_copy_256m, BIG_SIZE, 0},
    {"vcpu_io_exit", NULL, op_vcpu_io_exit, 0, 0},
    {"convert_4k", NULL, op_convert_4k, 0, 1},
    {"convert_1g", NULL, op_convert_1g, 0, 1},
    {"convert_batch_1000", NULL, op_convert_batch_1000, 0, 1},
};

static int offered(const struct op *op) { return !op->conversion || cvm >= 0; }

static uint64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t tv_ns(struct timeval tv) { return (uint64_t)tv.tv_sec * 1000000000ull + (uint64_t)tv.tv_usec * 1000ull; }

static int batch(const char *name, long iters) {
  const struct op *op = NULL;
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    if (strcmp(ops[i].name, name) == 0 && offered(&ops[i])) op = &ops[i];
  if (op == NULL || iters <= 0) {
    printf("{\"error\":\"unknown op or bad count: %s %ld\"}\n", name, iters);
    fflush(stdout);
    return -1;
  }
  if (op->prep) op->prep();
  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  uint64_t t0 = mono_ns();
  op->body(iters);
  uint64_t t1 = mono_ns();
  getrusage(RUSAGE_SELF, &r1);
  printf("{\"op\":\"%s\",\"iters\":%ld,\"ns\":%llu,\"user_ns\":%llu,\"sys_ns\":%llu,\"bytes\":%llu}\n", op->name, iters,
         (unsigned long long)(t1 - t0), (unsigned long long)(tv_ns(r1.ru_utime) - tv_ns(r0.ru_utime)),
         (unsigned long long)(tv_ns(r1.ru_stime) - tv_ns(r0.ru_stime)),
         (unsigned long long)(op->bytes * (uint64_t)iters));
  fflush(stdout);
  return 0;
}

static void serve(void) {
  printf("{\"ready\":true,\"pid\":%d,\"ops\":[", (int)getpid());
  int first = 1;
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    if (offered(&ops[i])) {
      printf("%s\"%s\"", first ? "" : ",", ops[i].name);
      first = 0;
    }
  printf("]}\n");
  fflush(stdout);
  char line[256];
  while (fgets(line, sizeof line, stdin) != NULL) {
    char name[64];
    long iters;
    if (strncmp(line, "quit", 4) == 0) break;
    if (sscanf(line, "%63s %ld", name, &iters) != 2) {
      printf("{\"error\":\"expected: OP ITERS\"}\n");
      fflush(stdout);
      continue;
    }
    batch(name, iters);
  }
}

static void spin(int cpu) {
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) fail("sched_setaffinity");
  }
  for (;;) sink++;
}

static void abi(void) {
  printf("KVM_CREATE_VM %lu\n", (unsigned long)KVM_CREATE_VM);
  printf("KVM_CHECK_EXTENSION %lu\n", (unsigned long)KVM_CHECK_EXTENSION);
  printf("KVM_GET_VCPU_MMAP_SIZE %lu\n", (unsigned long)KVM_GET_VCPU_MMAP_SIZE);
  printf("KVM_CREATE_VCPU %lu\n", (unsigned long)KVM_CREATE_VCPU);
  printf("KVM_RUN %lu\n", (unsigned long)KVM_RUN);
  printf("KVM_CREATE_GUEST_MEMFD %lu\n", (unsigned long)KVM_CREATE_GUEST_MEMFD);
  printf("KVM_SET_USER_MEMORY_REGION2 %lu\n", (unsigned long)KVM_SET_USER_MEMORY_REGION2);
  printf("KVM_GET_REGS %lu\n", (unsigned long)KVM_GET_REGS);
  printf("KVM_SET_REGS %lu\n", (unsigned long)KVM_SET_REGS);
  printf("KVM_GET_SREGS %lu\n", (unsigned long)KVM_GET_SREGS);
  printf("KVM_SET_SREGS %lu\n", (unsigned long)KVM_SET_SREGS);
  printf("KVM_MEM_GUEST_MEMFD %u\n", KVM_MEM_GUEST_MEMFD);
  printf("GUEST_MEMFD_FLAG_MMAP %llu\n", (unsigned long long)GUEST_MEMFD_FLAG_MMAP);
  printf("GUEST_MEMFD_FLAG_INIT_SHARED %llu\n", (unsigned long long)GUEST_MEMFD_FLAG_INIT_SHARED);
  printf("KVM_SET_MEMORY_ATTRIBUTES %lu\n", (unsigned long)KVM_SET_MEMORY_ATTRIBUTES);
  printf("KVM_MEMORY_ATTRIBUTE_PRIVATE %llu\n", (unsigned long long)KVM_MEMORY_ATTRIBUTE_PRIVATE);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--abi") == 0) {
    abi();
    return 0;
  }
  if (argc > 1 && strcmp(argv[1], "--spin") == 0) {
    spin(argc > 2 ? atoi(argv[2]) : -1);
    return 0;
  }
  if (argc > 1 && strcmp(argv[1], "--once") == 0) {
    if (argc < 4) {
      fprintf(stderr, "usage: kvm_ref --once OP ITERS [BATCHES]\n");
      return 64;
    }
    long batches = argc > 4 ? atol(argv[4]) : 1;
    setup();
    for (long b = 0; b < batches; b++)
      if (batch(argv[2], atol(argv[3])) != 0) return 1;
    return 0;
  }
  if (argc > 1) {
    fprintf(stderr, "usage: kvm_ref [--once OP ITERS [BATCHES] | --spin [CPU] | --abi]\n");
    return 64;
  }
  setup();
  serve();
  return 0;
}
