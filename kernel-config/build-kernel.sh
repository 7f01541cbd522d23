#!/usr/bin/env bash
# Builds the container-VM kernel from Debian's linux-source package and prints its cache dir.
#
#   build-kernel.sh [FRAGMENT...]
#
# FRAGMENT defaults to container-vm.config next to this script. Several fragments are merged in
# order (a later one overrides an earlier one): the README's boot-time experiments use this to
# build variants (`build-kernel.sh container-vm.config bench/variants/xz.config`).
#
# Result (the last line on stdout; all progress goes to stderr):
#   ${TETHER_CACHE:-$HOME/.cache/tether}/kernel/custom-<key>/
#       vmlinuz     the bzImage
#       config      the final .config (tests read it, e.g. "the VMware drivers are in")
#       fragment    the merged fragment(s) it was built from
#       info        source package, key, build time
# There is deliberately no file named `abi`: the ISO builder (bootstrap-iso `Kernel::from_dir`)
# takes a directory without one for a kernel with everything built in.
#
# <key> hashes the option lines of the fragment(s) (not their comments), the linux-source package
# version, the compiler version and the build recipe (the bodies of build_kernel() and
# verify_config() below, which `declare -f` prints without comments), so changing any of them
# builds a new kernel and nothing else does. An existing cache dir makes this script a no-op;
# delete it to force a rebuild.
#
# The unpacked source tree and the object tree are kept too, shared by all keys:
#   kernel/linux-source-<version>/src/   the unpacked tarball (never written to: O= build)
#   kernel/linux-source-<version>/obj/   the objects of the last build
# so a build after a fragment change recompiles only what the changed options touch (minutes
# rather than the ~10-minute clean build). Builds are serialised with a lock on kernel/.lock.
#
# Environment: TETHER_CACHE (cache root), TETHER_KERNEL_NICE (niceness of the compile, default
# 10: the build shares the machine with others), TETHER_KERNEL_JOBS (default: nproc).
# Runs as root (or with sudo available) when build dependencies are missing: it installs them
# with apt-get.
set -euo pipefail
# The whole script is one { ... } block so bash parses it before running it: editing this file
# while a (long) build runs cannot make the running instance execute shifted text.
{

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache="${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}"
kdir="$cache/kernel"
nice_level="${TETHER_KERNEL_NICE:-10}"
jobs="${TETHER_KERNEL_JOBS:-$(nproc)}"
start=$SECONDS

log() { printf '[build-kernel %4ds] %s\n' $((SECONDS - start)) "$*" >&2; }
die() { printf '[build-kernel] ERROR: %s\n' "$*" >&2; exit 1; }

if [ $# -eq 0 ]; then set -- "$here/container-vm.config"; fi
fragments=()
for f in "$@"; do
    [ -f "$f" ] || die "no such fragment: $f"
    fragments+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")")
done

# --- Dependencies --------------------------------------------------------------------------
# Kernel build tools (bc, bison, flex, libelf for objtool, libssl for the signing tools the
# build compiles even unused) and the compressors the boot image may use (lz4 for the default
# LZ4 image; xz/zstd/gzip for the README's comparisons and for initramfs support).
need_pkgs=(linux-source bc bison flex libelf-dev libssl-dev make gcc libc6-dev xz-utils lz4 zstd gzip)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing missing build dependencies: ${missing[*]}"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "need root (or sudo) to apt-get install ${missing[*]}"
        sudo=(sudo)
    fi
    # The package lists may be absent on a fresh machine: update once and retry.
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        "${sudo[@]}" apt-get update >&2
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
fi

# The source tarball and the exact version of the package that shipped it.
tarball=$(ls -1 /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n1)
[ -n "$tarball" ] || die "linux-source is installed but /usr/src/linux-source-*.tar.xz is missing"
src_pkg=$(dpkg -S "$tarball" | cut -d: -f1)
src_ver=$(dpkg-query -W -f='${Version}' "$src_pkg")
src_name=$(basename "$tarball" .tar.xz)          # linux-source-6.1

# --- The build recipe (hashed into the cache key) -----------------------------------------
# $1 = source dir, $2 = object dir, $3 = merged fragment. Leaves obj/arch/x86/boot/bzImage.
build_kernel() {
    local src=$1 obj=$2 frag=$3
    local mk=(make -C "$src" O="$obj" ARCH=x86_64)
    log "configuring: tinyconfig + fragment"
    # (tinyconfig's own merge chatter goes to stdout: dropped; errors still reach stderr.)
    "${mk[@]}" -s tinyconfig >/dev/null
    # merge_config -m only merges; olddefconfig then resolves dependencies and defaults. Some
    # options only become settable once an option they depend on is on (their menu was hidden
    # during the first pass), so merge and resolve twice.
    # (merge_config.sh writes its temporary files to the current directory: run it in obj.)
    (cd "$obj" && "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$frag" >/dev/null)
    "${mk[@]}" -s olddefconfig >&2
    (cd "$obj" && "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$frag" >/dev/null)
    "${mk[@]}" -s olddefconfig >&2
    verify_config "$frag" "$obj/.config"
    log "compiling bzImage with $jobs jobs at nice $nice_level (clean: ~10 min on 2 cores)"
    nice -n "$nice_level" "${mk[@]}" -j"$jobs" bzImage >&2
}

# Fails, naming each option, unless every option of the fragment is set as asked. kconfig drops
# an option silently when its dependencies are not met, or turns one back on when another option
# selects it; both must be fixed in the fragment, not discovered at boot.
verify_config() {
    local frag=$1 config=$2
    awk '
        FNR == NR {
            if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) { name = substr($0, 1, RLENGTH - 1); want[name] = $0 }
            else if ($0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) { want[$2] = "off" }
            next
        }
        match($0, /^CONFIG_[A-Za-z0-9_]+=/) { got[substr($0, 1, RLENGTH - 1)] = $0 }
        END {
            bad = 0
            for (n in want) {
                if (want[n] == "off") {
                    if (n in got) { printf "  %s must be off but is %s\n", n, got[n]; bad++ }
                } else {
                    have = (n in got) ? got[n] : "not set"   # (testing got[n] would create it)
                    if (have != want[n]) { printf "  %s: want %s, got %s\n", n, want[n], have; bad++ }
                }
            }
            exit bad > 0
        }' "$frag" "$config" >&2 || die "the final .config differs from the fragment (above): \
an unmet dependency or a select; fix the fragment"
    log "verified: every option of the fragment is set as asked"
}

# --- Cache key -----------------------------------------------------------------------------
merged=$(mktemp)
trap 'rm -f "$merged"' EXIT
for f in "${fragments[@]}"; do printf '# ---- %s\n' "$(basename "$f")"; cat "$f"; echo; done > "$merged"
# Only the option lines count (in order: a later fragment overrides an earlier one), so editing
# a comment does not rebuild the kernel.
key=$( {
    grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set$)' "$merged"
    echo "source: $src_pkg $src_ver"
    gcc --version | head -n1
    declare -f build_kernel verify_config
} | sha256sum | cut -c1-16)
out="$kdir/custom-$key"

if [ -f "$out/vmlinuz" ] && [ -f "$out/config" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

mkdir -p "$kdir"
exec 9>"$kdir/.lock"
if ! flock -n 9; then
    log "another kernel build holds $kdir/.lock; waiting"
    flock 9
fi
if [ -f "$out/vmlinuz" ] && [ -f "$out/config" ]; then   # built while we waited
    log "cached: $out"
    echo "$out"
    exit 0
fi

# --- Source tree -----------------------------------------------------------------------------
tree="$kdir/$src_name-$src_ver"
src="$tree/src"
obj="$tree/obj"
if [ ! -f "$src/.unpacked" ]; then
    log "unpacking $tarball ($src_pkg $src_ver) into $src"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xf "$tarball" -C "$src.tmp" --strip-components=1
    touch "$src.tmp/.unpacked"
    mv "$src.tmp" "$src"
    rm -rf "$obj"   # objects of another source tree are worthless
fi
mkdir -p "$obj"

log "building kernel $key from $src_pkg $src_ver ($(basename -a "${fragments[@]}" | tr '\n' ' '))"
# make's one line per object would be a flood of thousands of lines: they are counted into a
# progress line every 10 % instead (against the last clean build's count, kept in the cache),
# while this script's own lines, warnings and errors pass. (Outside build_kernel, so that the
# cache key does not change with how progress is shown.)
expected=$(cat "$kdir/objects-expected" 2>/dev/null || echo 2150)
count_file="$kdir/objects-counted.$$"
set -o pipefail
build_kernel "$src" "$obj" "$merged" 2>&1 >/dev/null | awk -v expected="$expected" \
    -v count_file="$count_file" '
    /^\[build-kernel/ { print > "/dev/stderr"; fflush("/dev/stderr"); next }
    /^  [A-Z0-9_]+ +/ {
        n++
        pct = int(100 * n / expected); if (pct > 99) pct = 99
        if (pct >= next_pct) {
            printf "[build-kernel] compiling: %d%% (%d of about %d objects)\n", pct, n, expected > "/dev/stderr"
            fflush("/dev/stderr")
            next_pct = pct - pct % 10 + 10
        }
        next
    }
    /[Ee]rror|warning:|\*\*\*/ { print > "/dev/stderr"; fflush("/dev/stderr") }
    END { print n > count_file }
'
counted=$(cat "$count_file" 2>/dev/null || echo 0)
rm -f "$count_file"
# A clean build (most objects) sets the expectation for the next one.
if [ "$counted" -gt $((expected / 2)) ]; then echo "$counted" > "$kdir/objects-expected"; fi

# --- Publish -----------------------------------------------------------------------------------
tmp_out="$out.tmp.$$"
rm -rf "$tmp_out"
mkdir -p "$tmp_out"
cp "$obj/arch/x86/boot/bzImage" "$tmp_out/vmlinuz"
cp "$obj/.config" "$tmp_out/config"
cp "$merged" "$tmp_out/fragment"
chmod 644 "$tmp_out/fragment"
{
    echo "key=$key"
    echo "source=$src_pkg $src_ver"
    echo "release=$(cat "$obj/include/config/kernel.release")"
    echo "compiler=$(gcc --version | head -n1)"
    echo "bzimage_bytes=$(stat -c %s "$tmp_out/vmlinuz")"
    echo "build_seconds=$((SECONDS - start))"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$tmp_out/info"
rm -rf "$out"
mv "$tmp_out" "$out"
log "done in $((SECONDS - start)) s: $out/vmlinuz ($(stat -c %s "$out/vmlinuz") bytes)"
echo "$out"
exit 0
}
