#!/usr/bin/env bash
# Static checks of kmod/: checkpatch.pl --strict from Debian's linux-source-6.12
# (also over our vkms patches), and builds against every kernel we have
# headers for (6.12 and 6.1) with W=1 and sparse (make C=2). Any finding fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${DMAFILE_CACHE:-$here/.cache}
# shellcheck source=scripts/guest-kernel.sh
. "$here/scripts/guest-kernel.sh"

src=$cache/linux-source-6.12
if [ ! -x "$src/scripts/checkpatch.pl" ]; then
    echo "kmod-check: extracting checkpatch.pl from /usr/src/linux-source-6.12.tar.xz" >&2
    mkdir -p "$cache"
    tar -xJf /usr/src/linux-source-6.12.tar.xz -C "$cache" \
        linux-source-6.12/scripts/checkpatch.pl \
        linux-source-6.12/scripts/spelling.txt \
        linux-source-6.12/scripts/const_structs.checkpatch
fi

status=0
# checkpatch's output $1 for $2 (what was checked): its findings fail.
report() {
    if echo "$1" | grep -qE '(ERROR|WARNING|CHECK):'; then
        echo "$1" | grep -E '(ERROR|WARNING|CHECK):'
        echo "kmod-check: checkpatch --strict has findings in $2" >&2
        status=1
    else
        echo "kmod-check: checkpatch --strict: $2, no findings"
    fi
}
checkpatch() { "$src/scripts/checkpatch.pl" --strict --no-tree --terse --show-types "$@" 2>&1 || true; }

# Paths relative to kmod/ so that checkpatch applies its include/uapi/ rules
# to the ABI header, as it would in the kernel tree.
cd "$here/kmod"
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.c' '*.h' | grep -vx compat.h)
report "$(checkpatch -f "${files[@]}")" "${#files[@]} files"
# compat.h exists to compare LINUX_VERSION_CODE, which checkpatch (written
# for code merged into one kernel version) warns about; nothing else is
# waived there.
report "$(checkpatch -f --ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON compat.h)" "compat.h (version checks allowed)"

# Our fixes of vkms (scripts/build-vkms.sh) as patches, the way the kernel
# takes them (run outside our git tree: checkpatch consults git inside one).
patches=("$here"/scripts/vkms-*.patch)
cd "$src"
report "$(checkpatch --no-signoff "${patches[@]}")" "${#patches[@]} vkms patches"
cd "$here"

# Every supported kernel we have headers for: the guest's 6.12 and bookworm's
# 6.1 (scripts/setup.sh guest installs both). Each build is also a sparse run
# (C=2) with the extra warnings of W=1; any compiler or sparse warning fails.
kdirs=("$GUEST_KDIR")
k61=$(ls -d /usr/src/linux-headers-6.1.0-*-amd64 2>/dev/null | sort -V | tail -n1)
[ -n "$k61" ] || { echo "kmod-check: no 6.1 headers (run: scripts/setup.sh guest)" >&2; exit 1; }
kdirs+=("$k61")
for kdir in "${kdirs[@]}"; do
    kver=$(basename "$kdir" | sed 's/^linux-headers-//')
    make -s -C "$here/kmod" KDIR="$kdir" clean
    out=$(make -s -C "$here/kmod" KDIR="$kdir" C=2 W=1 2>&1) ||
        { echo "$out"; echo "kmod-check: the build against $kver failed" >&2; exit 1; }
    out=$(echo "$out" | grep -v '^Skipping BTF generation' || true)
    if echo "$out" | grep -E '(warning|error):'; then
        echo "kmod-check: $kver: the build or sparse has findings" >&2
        status=1
    else
        echo "kmod-check: $kver: builds, no warnings (W=1), sparse (C=2) clean"
    fi
done
# Leave nothing built for another kernel behind.
make -s -C "$here/kmod" KDIR="$GUEST_KDIR" clean

# dkms.conf's BUILD_EXCLUSIVE_KERNEL, matched as dkms matches it (bash =~
# on the kernel release): the supported range in, older kernels out.
excl=$(sed -n 's/^BUILD_EXCLUSIVE_KERNEL="\(.*\)"$/\1/p' "$here/kmod/dkms.conf")
bad=()
for k in 6.1.0-57-amd64 6.1.192 6.12.95+deb12-amd64 6.13.0 6.18.1-arch1-1 6.19-rc2 7.0.0 10.1.0; do
    [[ $k =~ $excl ]] || bad+=("$k excluded")
done
for k in 5.10.0-30-amd64 5.15.0-125-generic 4.19.0-27-amd64 6.0.19 3.16.0; do
    [[ ! $k =~ $excl ]] || bad+=("$k included")
done
if [ ${#bad[@]} -gt 0 ]; then
    echo "kmod-check: BUILD_EXCLUSIVE_KERNEL is wrong: ${bad[*]}" >&2
    status=1
else
    echo "kmod-check: BUILD_EXCLUSIVE_KERNEL admits 6.1 to 7+ and excludes 6.0 and older"
fi
exit $status
