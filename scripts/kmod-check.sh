#!/usr/bin/env bash
# Static checks of kmod/: checkpatch.pl --strict from Debian's linux-source-6.12
# (also over our vkms patches) and sparse (make C=2). Any finding fails.
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

# sparse: rebuild every object with the checker.
out=$(make -s -C "$here/kmod" KDIR="$GUEST_KDIR" C=2 2>&1) || { echo "$out"; exit 1; }
if echo "$out" | grep -E '(warning|error):'; then
    echo "kmod-check: sparse has findings" >&2
    status=1
else
    echo "kmod-check: sparse (C=2): no findings"
fi
exit $status
