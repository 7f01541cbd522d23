#!/usr/bin/env bash
# Functional smoke test of a built kernel: boots it under QEMU/TCG with the devices a container VM
# meets (virtio blk/net/serial/rng, fw_cfg, vmxnet3, pvscsi + SCSI disk) and a busybox initramfs
# that checks, from inside the guest, that the drivers bound and the file systems, cgroups and
# namespaces the fragment promises work. Prints one `SMOKE PASS|FAIL <what>` line per check and
# exits non-zero if any check failed or the VM did not power off by itself.
#
#   bench/smoke.sh [KERNEL_DIR] [q35|pc]      (default: build-kernel.sh's dir, q35)
#
# Needs busybox-static, e2fsprogs, xorriso, cpio and qemu-system-x86 (Debian packages).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${1:-$("$here/../build-kernel.sh" | tail -n1)}
machine=${2:-q35}
busybox=/bin/busybox
[ -x "$busybox" ] && "$busybox" --list | grep -x mount >/dev/null || { echo "smoke: need busybox-static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/root/{bin,dev,proc,sys,mnt,tmp} "$work/disk" "$work/iso"
cp "$busybox" "$work/root/bin/busybox"
cat > "$work/root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
check() { if ( eval "$2" ) >/dev/null 2>&1; then echo "SMOKE PASS $1"; else echo "SMOKE FAIL $1"; fi; }
drivers() { for d in /sys/class/net/*/device/driver; do readlink "$d"; done; }
check "virtio-blk disk /dev/vda"          'test -b /dev/vda'
check "ext4 mount"                        'mkdir -p /mnt/root && mount -t ext4 /dev/vda /mnt/root && test -f /mnt/root/hello'
check "virtio-serial port named smoke"    'grep -qx smoke /sys/class/virtio-ports/*/name'
check "fw_cfg sysfs file"                 'test "$(cat /sys/firmware/qemu_fw_cfg/by_name/opt/smoke/raw)" = fwcfg-ok'
check "virtio-rng is the hwrng"           'grep -q virtio /sys/class/misc/hw_random/rng_current'
check "virtio-net NIC"                    'drivers | grep -q virtio_net'
check "vmxnet3 NIC"                       'drivers | grep -q vmxnet3'
check "pvscsi bound + sd disk /dev/sda"   'ls /sys/bus/pci/drivers/vmw_pvscsi | grep -q : && test -b /dev/sda'
check "iso9660 on the SCSI disk"          'mkdir -p /mnt/iso && mount -t iso9660 -o ro /dev/sda /mnt/iso && test -f /mnt/iso/hello.txt'
check "VMCI driver registered"            'test -d /sys/bus/pci/drivers/vmw_vmci'
check "vsock address family"              'dmesg | grep -q PF_VSOCK'
check "CMOS RTC /dev/rtc0"                'test -c /dev/rtc0'
check "DMI product UUID"                  'grep -qi 4a1b2c3d-0000-4000-8000-00000000cafe /sys/class/dmi/id/product_uuid'
check "tmpfs"                             'mount -t tmpfs tmpfs /tmp'
check "devpts with ptmxmode"              'mkdir -p /dev/pts && mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts && test -c /dev/pts/ptmx'
check "overlayfs"                         'mkdir -p /tmp/l /tmp/u /tmp/w /tmp/o && echo x > /tmp/l/f && mount -t overlay overlay -o lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w /tmp/o && test -f /tmp/o/f'
check "nfs and nfs4 file systems"         'grep -qw nfs /proc/filesystems && grep -qw nfs4 /proc/filesystems'
check "cgroup v2 controllers"             'mkdir -p /tmp/cg2 && mount -t cgroup2 none /tmp/cg2 && for c in cpuset cpu io memory pids; do grep -qw $c /tmp/cg2/cgroup.controllers || exit 1; done; umount /tmp/cg2'
check "cgroup v1 memory,pids,cpu,cpuset,blkio" 'mkdir -p /tmp/cg1 && mount -t cgroup -o memory,pids,cpu,cpuacct,cpuset,blkio,freezer,devices cgroup /tmp/cg1 && umount /tmp/cg1'
check "namespaces"                        'for n in cgroup ipc mnt net pid time user uts; do test -e /proc/self/ns/$n || exit 1; done'
check "unshare user+pid+net+mnt"          'unshare -U -p -f -n -m -u -i true'
check "netfilter and conntrack sysctls"   'test -d /proc/sys/net/netfilter && test -e /proc/sys/net/netfilter/nf_conntrack_max'
check "IPv6"                              'test -d /proc/sys/net/ipv6'
check "sysctl vm.max_map_count writable"  'echo 262144 > /proc/sys/vm/max_map_count'
check "SysV IPC and POSIX mqueue"         'test -e /proc/sys/kernel/shmmax && test -e /proc/sys/fs/mqueue/msg_max'
check "no module support"                 '! test -e /proc/modules'
echo "SMOKE DONE"
poweroff -f
EOF
chmod 755 "$work/root/init"
# newc archive with /dev/console (root: mknod; the kernel also creates it in devtmpfs later).
mknod -m 600 "$work/root/dev/console" c 5 1
(cd "$work/root" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) > "$work/initrd.gz"

echo hello > "$work/disk/hello"
mkfs.ext4 -q -F -d "$work/disk" -L containerfs "$work/disk.img" 16M >/dev/null
echo hello > "$work/iso/hello.txt"
xorriso -as mkisofs -quiet -o "$work/test.iso" -V SMOKE "$work/iso" 2>/dev/null

timeout -s KILL 60 qemu-system-x86_64 -machine "$machine" -accel tcg -m 256 -smp 2 \
    -nodefaults -no-user-config -display none -monitor none -no-reboot -serial stdio \
    -kernel "$dir/vmlinuz" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init noreplace-smp tsc=reliable" \
    -device virtio-rng-pci -uuid 4a1b2c3d-0000-4000-8000-00000000cafe \
    -drive "file=$work/disk.img,if=none,id=d0,format=raw" -device virtio-blk-pci,drive=d0 \
    -device virtio-serial-pci -chardev null,id=c0 -device virtserialport,chardev=c0,name=smoke \
    -fw_cfg name=opt/smoke,string=fwcfg-ok \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
    -netdev user,id=n1 -device vmxnet3,netdev=n1 \
    -device pvscsi,id=s0 -drive "file=$work/test.iso,if=none,id=d1,format=raw,readonly=on" \
    -device scsi-hd,drive=d1,bus=s0.0 \
    < /dev/null > "$work/console.log" 2>&1 && rc=0 || rc=$?
grep -a "SMOKE" "$work/console.log" || true
if [ "$rc" -ne 0 ]; then echo "smoke: QEMU exited $rc (137: killed by the 60 s timeout)" >&2; tail -20 "$work/console.log" >&2; exit 1; fi
grep -aq "SMOKE DONE" "$work/console.log" || { echo "smoke: the guest did not finish" >&2; exit 1; }
! grep -aq "SMOKE FAIL" "$work/console.log"
