#!/usr/bin/env bash
# Fetches Debian's cloud kernel (modular) into the tether cache and prints the directory.
# The cache lives outside the repository, keyed by the exact package version, so a new Debian
# kernel release (or a fresh machine) triggers a new download and nothing else does.
#
# Layout of the result:  <dir>/vmlinuz  <dir>/lib/modules/<abi>/...  <dir>/abi
set -euo pipefail

cache="${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}"
meta="linux-image-cloud-amd64"

# The metapackage depends on the current ABI's image package; the -unsigned flavour is the
# same kernel without the Secure Boot wrapper, which we do not need.
img=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$img" ]; then
    echo "fetch-debian-kernel: apt-cache knows no $meta (run apt-get update first)" >&2
    exit 1
fi
abi=${img#linux-image-}
pkg="${img}-unsigned"
ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
dir="$cache/kernel/debian-${abi}-${ver}"

if [ -f "$dir/.complete" ]; then
    echo "$dir"
    exit 0
fi

echo "fetch-debian-kernel: downloading $pkg $ver into $dir" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "$pkg=$ver" >/dev/null 2>&1) || {
    echo "fetch-debian-kernel: apt-get download $pkg=$ver failed" >&2
    exit 1
}
rm -rf "$dir"
mkdir -p "$dir"
dpkg-deb -x "$tmp"/*.deb "$dir/root"
mv "$dir/root/boot/vmlinuz-$abi" "$dir/vmlinuz"
mkdir -p "$dir/lib"
mv "$dir/root/lib/modules" "$dir/lib/modules"
rm -rf "$dir/root"
# Debian ships no modules.dep (the postinst generates it); the initramfs builder needs it to
# order module loads, and the tether has no modprobe.
depmod -b "$dir" "$abi"
echo "$abi" > "$dir/abi"
touch "$dir/.complete"
echo "$dir"
