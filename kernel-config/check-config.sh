#!/usr/bin/env bash
# Checks a built kernel's final config: the VMware drivers (so the same kernel boots on vSphere)
# and the other drivers the tether cannot start without are built in.
#
#   check-config.sh [KERNEL_DIR]     (default: the dir build-kernel.sh prints, building if needed)
#
# KERNEL_DIR is a build-kernel.sh cache dir; its `config` file is the kernel's final .config.
# build-kernel.sh already refuses to publish a kernel whose config differs from the fragment;
# this is the independent check a test can run (the Rust test reads `<dir>/config` the same way:
# every line below must appear verbatim).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${1:-$("$here/build-kernel.sh" | tail -n1)}
config="$dir/config"
[ -f "$config" ] || { echo "check-config: no $config" >&2; exit 1; }

required=(
    # VMware: network, paravirtual SCSI + disks, VMCI + vsock over VMCI.
    CONFIG_VMXNET3=y
    CONFIG_VMWARE_PVSCSI=y
    CONFIG_BLK_DEV_SD=y
    CONFIG_VMWARE_VMCI=y
    CONFIG_VMWARE_VMCI_VSOCKETS=y
    # QEMU: virtio transport, disks, network, serial ports, entropy, vsock, fw_cfg.
    CONFIG_VIRTIO_PCI=y
    CONFIG_VIRTIO_BLK=y
    CONFIG_VIRTIO_NET=y
    CONFIG_VIRTIO_CONSOLE=y
    CONFIG_HW_RANDOM_VIRTIO=y
    CONFIG_VIRTIO_VSOCKETS=y
    CONFIG_FW_CFG_SYSFS=y
    # Boot path: power-off, console, initramfs, /dev, root disk.
    CONFIG_ACPI=y
    CONFIG_SERIAL_8250_CONSOLE=y
    CONFIG_BLK_DEV_INITRD=y
    CONFIG_RD_GZIP=y
    CONFIG_DEVTMPFS=y
    CONFIG_EXT4_FS=y
)
bad=0
for line in "${required[@]}"; do
    grep -qxF "$line" "$config" || { echo "check-config: missing $line in $config" >&2; bad=1; }
done
# Built in means no module loader at all.
if grep -q '^CONFIG_MODULES=y' "$config"; then echo "check-config: CONFIG_MODULES=y in $config" >&2; bad=1; fi
[ $bad -eq 0 ] && echo "check-config: $config has the VMware, virtio and boot drivers built in" >&2
exit $bad
