#!/usr/bin/env python3
"""kvm_ref.py: the Python reference of guest-memfd's benchmark (bench/README.md).

The same ops, layout and protocol as bench/ref/kvm_ref.c, written the way a Python
user would drive KVM without this project: standard library only (fcntl.ioctl,
fcntl.fcntl, os, mmap, struct, and ctypes for fallocate, which os lacks).

    python3 kvm_ref.py                       serve: one batch per stdin line "OP ITERS"
    python3 kvm_ref.py --once OP ITERS [BATCHES]

Answers one JSON line per batch: {"op", "iters", "ns", "user_ns", "sys_ns", "bytes"};
"ns" is time.perf_counter_ns() around the loop, user/sys are
resource.getrusage(RUSAGE_SELF) deltas. {"skip": REASON} and exit 2 without a
usable KVM or guest_memfd with MMAP | INIT_SHARED.
"""
import ctypes
import fcntl
import json
import mmap
import os
import resource
import struct
import sys
import time

# ---- the KVM ABI slice (include/uapi/linux/kvm.h, asm/kvm.h) ----
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction, nr, size=0):
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_CREATE_VM = _ioc(_IOC_NONE, 0x01)
KVM_CHECK_EXTENSION = _ioc(_IOC_NONE, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _ioc(_IOC_NONE, 0x04)
KVM_CREATE_VCPU = _ioc(_IOC_NONE, 0x41)
KVM_RUN = _ioc(_IOC_NONE, 0x80)
KVM_CREATE_GUEST_MEMFD = _ioc(_IOC_READ | _IOC_WRITE, 0xD4, 64)
KVM_SET_USER_MEMORY_REGION2 = _ioc(_IOC_WRITE, 0x49, 160)
KVM_GET_REGS = _ioc(_IOC_READ, 0x81, 144)
KVM_SET_REGS = _ioc(_IOC_WRITE, 0x82, 144)
KVM_GET_SREGS = _ioc(_IOC_READ, 0x83, 312)
KVM_SET_SREGS = _ioc(_IOC_WRITE, 0x84, 312)

KVM_SET_MEMORY_ATTRIBUTES = _ioc(_IOC_WRITE, 0xD2, 32)

KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_X86_SW_PROTECTED_VM = 1
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
KVM_CAP_GUEST_MEMFD_FLAGS = 244
GMEM_FLAGS = (1 << 0) | (1 << 1)  # GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
KVM_MEM_GUEST_MEMFD = 1 << 2
KVM_EXIT_IO = 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02

CREATE_GUEST_MEMFD = struct.Struct("=QQ48x")            # size, flags, reserved[6]
REGION2 = struct.Struct("=IIQQQQI4x112x")               # slot .. guest_memfd, pad1, pad2[14]
MEMORY_ATTRIBUTES = struct.Struct("=QQQQ")               # address, size, attributes, flags
RUN_EXIT_REASON = struct.Struct("=I")                   # kvm_run.exit_reason at 8
RUN_IO = struct.Struct("=BBHIQ")                        # kvm_run.io at 32
assert CREATE_GUEST_MEMFD.size == 64 and REGION2.size == 160 and MEMORY_ATTRIBUTES.size == 32

# ---- the layout (as kvm_ref.c) ----
MiB = 1 << 20
BIG_SIZE = 256 * MiB
GUEST_SIZE = 2 * MiB
CREATE_SIZE = 16 << 30
SLOT_GPA = 1 << 32
SLOT_SIZE = 2 * MiB
CODE_GPA = 0x1000
CONV_SIZE = 1024 * MiB  # convert_*: the sw-protected VM's one slot
CONV_BATCH = 1000       # convert_batch_1000: ranges per batch, every other page
OUT_LOOP = bytes([0xBA, 0xF8, 0x03, 0xEE, 0xEB, 0xFD])  # mov dx,0x3f8; out dx,al; jmp $-3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int


def punch(fd, offset, length):
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate: {os.strerror(err)}")


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Ref:
    def __init__(self):
        path = os.environ.get("GMEM_KVM_PATH") or "/dev/kvm"
        try:
            self.kvm = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            emit({"skip": f"{path}: {e.strerror}"})
            sys.exit(2)
        self.vm = fcntl.ioctl(self.kvm, KVM_CREATE_VM, 0)
        if fcntl.ioctl(self.vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) <= 0:
            emit({"skip": "no KVM_CAP_GUEST_MEMFD"})
            sys.exit(2)
        if fcntl.ioctl(self.vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD_FLAGS) & GMEM_FLAGS != GMEM_FLAGS:
            emit({"skip": "guest_memfd lacks MMAP | INIT_SHARED"})
            sys.exit(2)

        self.big = self.create_gmem(BIG_SIZE)
        self.big_mem = mmap.mmap(self.big, BIG_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.slot_mem = mmap.mmap(self.big, SLOT_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.slot_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.slot_mem))
        self.copy_src = b"\x07" * BIG_SIZE

        self.guest = self.create_gmem(GUEST_SIZE)
        self.guest_mem = mmap.mmap(self.guest, GUEST_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        guest_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.guest_mem))
        self.set_region(0, 0, GUEST_SIZE, guest_addr, self.guest)
        self.guest_mem[CODE_GPA:CODE_GPA + len(OUT_LOOP)] = OUT_LOOP

        self.vcpu = fcntl.ioctl(self.vm, KVM_CREATE_VCPU, 0)
        run_size = fcntl.ioctl(self.kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
        self.run = mmap.mmap(self.vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        sregs = bytearray(312)
        fcntl.ioctl(self.vcpu, KVM_GET_SREGS, sregs, True)
        struct.pack_into("=Q", sregs, 0, 0)   # cs.base
        struct.pack_into("=H", sregs, 12, 0)  # cs.selector
        fcntl.ioctl(self.vcpu, KVM_SET_SREGS, bytes(sregs))
        regs = bytearray(144)
        fcntl.ioctl(self.vcpu, KVM_GET_REGS, regs, True)
        struct.pack_into("=QQ", regs, 128, CODE_GPA, 2)  # rip, rflags
        fcntl.ioctl(self.vcpu, KVM_SET_REGS, bytes(regs))

        self.ops = {
            "check_extension": (None, self.check_extension, 0),
            "gmem_create_close": (None, self.gmem_create_close, 0),
            "slot_add_delete": (None, self.slot_add_delete, 0),
            "punch_hole_4k": (None, self.punch_hole_4k, 0),
            "fault_in_256m": (lambda: punch(self.big, 0, BIG_SIZE), self.fault_in_256m, BIG_SIZE),
            "copy_256m": (None, self.copy_256m, BIG_SIZE),
            "vcpu_io_exit": (None, self.vcpu_io_exit, 0),
        }
        if self.setup_conversion():
            self.ops["convert_4k"] = (None, self.convert_4k, 0)
            self.ops["convert_1g"] = (None, self.convert_1g, 0)
            self.ops["convert_batch_1000"] = (None, self.convert_batch_1000, 0)

    def setup_conversion(self):
        """The convert_* layout, where KVM can: a sw-protected VM with one 1 GiB slot
        (a memfd as its shared memory, a guest_memfd as its private memory)."""
        types = fcntl.ioctl(self.kvm, KVM_CHECK_EXTENSION, KVM_CAP_VM_TYPES)
        if types <= 0 or not types & (1 << KVM_X86_SW_PROTECTED_VM):
            return False
        cvm = fcntl.ioctl(self.kvm, KVM_CREATE_VM, KVM_X86_SW_PROTECTED_VM)
        attrs = fcntl.ioctl(cvm, KVM_CHECK_EXTENSION, KVM_CAP_MEMORY_ATTRIBUTES)
        if attrs <= 0 or not attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE or fcntl.ioctl(cvm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) <= 0:
            os.close(cvm)
            return False
        self.cvm = cvm
        self.cshared = os.memfd_create("shared", os.MFD_CLOEXEC)
        os.ftruncate(self.cshared, CONV_SIZE)
        self.cshared_mem = mmap.mmap(self.cshared, CONV_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.cshared_mem))
        args = bytearray(CREATE_GUEST_MEMFD.pack(CONV_SIZE, 0))
        self.cprivate = fcntl.ioctl(cvm, KVM_CREATE_GUEST_MEMFD, args, True)
        fcntl.fcntl(self.cprivate, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        fcntl.ioctl(cvm, KVM_SET_USER_MEMORY_REGION2,
                    REGION2.pack(0, KVM_MEM_GUEST_MEMFD, 0, CONV_SIZE, addr, 0, self.cprivate))
        return True

    def create_gmem(self, size):
        args = bytearray(CREATE_GUEST_MEMFD.pack(size, GMEM_FLAGS))
        fd = fcntl.ioctl(self.vm, KVM_CREATE_GUEST_MEMFD, args, True)
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)  # as the library does
        return fd

    def set_region(self, slot, gpa, size, uaddr, gmem_fd):
        fcntl.ioctl(self.vm, KVM_SET_USER_MEMORY_REGION2,
                    REGION2.pack(slot, KVM_MEM_GUEST_MEMFD, gpa, size, uaddr, 0, gmem_fd))

    # ---- the ops: n iterations of the timed work ----

    def check_extension(self, n):
        vm = self.vm
        for _ in range(n):
            fcntl.ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD)

    def gmem_create_close(self, n):
        for _ in range(n):
            os.close(self.create_gmem(CREATE_SIZE))

    def slot_add_delete(self, n):
        addr, big = self.slot_addr, self.big
        for _ in range(n):
            self.set_region(1, SLOT_GPA, SLOT_SIZE, addr, big)
            self.set_region(1, SLOT_GPA, 0, addr, big)

    def punch_hole_4k(self, n):
        mem, big = self.big_mem, self.big
        for i in range(n):
            off = (i % 256) * 4096
            mem[off] = 1
            punch(big, off, 4096)

    def fault_in_256m(self, n):
        mem = self.big_mem
        for _ in range(n):
            for off in range(0, BIG_SIZE, 4096):
                mem[off] = 1

    def copy_256m(self, n):
        for _ in range(n):
            self.big_mem[0:BIG_SIZE] = self.copy_src

    def vcpu_io_exit(self, n):
        vcpu, run = self.vcpu, self.run
        for _ in range(n):
            RUN_EXIT_REASON.pack_into(run, 8, 0)
            fcntl.ioctl(vcpu, KVM_RUN, 0)
            if RUN_EXIT_REASON.unpack_from(run, 8)[0] != KVM_EXIT_IO:
                raise RuntimeError("KVM_RUN: not an io exit")
            _direction, _size, _port, _count, data_offset = RUN_IO.unpack_from(run, 32)
            _data = run[data_offset]

    def set_attributes(self, gpa, size, attributes):
        fcntl.ioctl(self.cvm, KVM_SET_MEMORY_ATTRIBUTES, MEMORY_ATTRIBUTES.pack(gpa, size, attributes, 0))

    def convert_pair(self, gpa, size):
        """To private and back: the attributes, then the stale copy punched."""
        self.set_attributes(gpa, size, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        punch(self.cshared, gpa, size)
        self.set_attributes(gpa, size, 0)
        punch(self.cprivate, gpa, size)

    def convert_4k(self, n):
        for _ in range(n):
            self.convert_pair(0, 4096)

    def convert_1g(self, n):
        for _ in range(n):
            self.convert_pair(0, CONV_SIZE)

    def convert_batch_1000(self, n):
        gpas = range(0, CONV_BATCH * 8192, 8192)
        for _ in range(n):
            for gpa in gpas:
                self.set_attributes(gpa, 4096, KVM_MEMORY_ATTRIBUTE_PRIVATE)
            for gpa in gpas:
                punch(self.cshared, gpa, 4096)
            for gpa in gpas:
                self.set_attributes(gpa, 4096, 0)
            for gpa in gpas:
                punch(self.cprivate, gpa, 4096)

    def batch(self, name, iters):
        op = self.ops.get(name)
        if op is None or iters <= 0:
            emit({"error": f"unknown op or bad count: {name} {iters}"})
            return False
        prep, body, nbytes = op
        if prep:
            prep()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter_ns()
        body(iters)
        t1 = time.perf_counter_ns()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        emit({"op": name, "iters": iters, "ns": t1 - t0,
              "user_ns": round((r1.ru_utime - r0.ru_utime) * 1e9),
              "sys_ns": round((r1.ru_stime - r0.ru_stime) * 1e9),
              "bytes": nbytes * iters})
        return True


def main(argv):
    if len(argv) > 1 and argv[1] == "--once":
        if len(argv) < 4:
            print("usage: kvm_ref.py --once OP ITERS [BATCHES]", file=sys.stderr)
            return 64
        ref = Ref()
        for _ in range(int(argv[4]) if len(argv) > 4 else 1):
            if not ref.batch(argv[2], int(argv[3])):
                return 1
        return 0
    if len(argv) > 1:
        print("usage: kvm_ref.py [--once OP ITERS [BATCHES]]", file=sys.stderr)
        return 64
    ref = Ref()
    emit({"ready": True, "pid": os.getpid(), "ops": list(ref.ops)})
    for line in sys.stdin:
        if line.startswith("quit"):
            break
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            emit({"error": "expected: OP ITERS"})
            continue
        try:
            ref.batch(parts[0], int(parts[1]))
        except OSError as e:
            emit({"error": f"{parts[0]}: {e}"})
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
