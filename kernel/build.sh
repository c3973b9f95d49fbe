#!/usr/bin/env bash
# Builds a test kernel for `gmem vm-run` from a Linux source tree:
#   kernel/build.sh /path/to/linux [output-bzImage]
# Needs the usual kernel build tools (Debian: apt-get install build-essential flex
# bison bc libelf-dev libssl-dev cpio). Configures x86_64_defconfig +
# kvm_guest.config + kernel/kvm-test.config, then builds bzImage.
set -euo pipefail
src=${1:?usage: kernel/build.sh LINUX_SOURCE_TREE [OUTPUT]}
here=$(cd "$(dirname "$0")" && pwd)
out=${2:-$PWD/bzImage}
cd "$src"
make x86_64_defconfig kvm_guest.config
scripts/kconfig/merge_config.sh -m .config "$here/kvm-test.config"
make olddefconfig
for option in KVM KVM_SW_PROTECTED_VM 9P_FS VIRTIO_PCI SERIAL_8250_CONSOLE DEVTMPFS_MOUNT MEMFD_CREATE SECRETMEM HUGETLBFS; do
  grep -q "^CONFIG_$option=y" .config || { echo "build.sh: CONFIG_$option did not stick (missing dependency?)" >&2; exit 1; }
done
make -j"$(nproc)" bzImage
cp arch/x86/boot/bzImage "$out"
echo "built $out"
