#!/usr/bin/env bash
# Builds vkms.ko (the virtual KMS driver, with its writeback connector) out
# of tree for the guest kernel. Debian's 6.12 config leaves CONFIG_DRM_VKMS
# unset, so the module comes from Debian's linux-source-6.12 of the same
# series, built against the guest's headers; its dependencies (drm,
# drm_kms_helper, drm_shmem_helper) are Debian's own modules.
#   scripts/build-vkms.sh                       -> prints the path of vkms.ko
#   scripts/build-vkms.sh --without-offset-fix  -> one that keeps 6.12's
#                                                  framebuffer offset bug
#
# Two fixes of 6.12's vkms are applied (docs/scanout.md, "vkms"):
# - scripts/vkms-fb-offset.patch: the plane reader applies a framebuffer's
#   offsets[0] twice, so a frame that does not start at its buffer's first
#   byte is shown shifted and read past the buffer's end;
# - scripts/vkms-writeback-race.patch: a writeback job's deferred cleanup
#   can switch the composer off after the next job's commit switched it
#   on, and that job then never completes.
# The build without the offset fix is what the guest tests check the
# runtime's probe of that bug against.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${DMAFILE_CACHE:-$here/.cache}
# shellcheck source=scripts/guest-kernel.sh
. "$here/scripts/guest-kernel.sh"
patches=("$here"/scripts/vkms-*.patch)
variant=fixed
case "${1:-}" in
    "") ;;
    --without-offset-fix)
        variant=offset-bug
        patches=("$here"/scripts/vkms-writeback-race.patch)
        ;;
    *) echo "build-vkms: unknown argument $1 (--without-offset-fix or nothing)" >&2; exit 2 ;;
esac
tarball=/usr/src/linux-source-6.12.tar.xz
[ -f "$tarball" ] || { echo "build-vkms: $tarball missing (run: scripts/setup.sh guest)" >&2; exit 1; }
src=$cache/linux-source-6.12/drivers/gpu/drm/vkms
if [ ! -f "$src/vkms_drv.c" ]; then
    echo "build-vkms: extracting drivers/gpu/drm/vkms from $tarball" >&2
    mkdir -p "$cache"
    tar -xJf "$tarball" -C "$cache" linux-source-6.12/drivers/gpu/drm/vkms
fi
build=$cache/vkms-$GUEST_KVER-$variant-$(cat "${patches[@]}" | sha256sum | cut -c1-12)
if [ ! -f "$build/.ready" ]; then
    rm -rf "$build"
    tree=$build/drivers/gpu/drm/vkms
    mkdir -p "$tree"
    cp "$src"/*.c "$src"/*.h "$tree/"
    for p in "${patches[@]}"; do
        patch -s -p1 -d "$build" <"$p" || { echo "build-vkms: $p does not apply" >&2; exit 1; }
    done
    mv "$tree"/* "$build/"
    rm -rf "$build/drivers"
    # The in-tree Makefile builds under CONFIG_DRM_VKMS; build the same objects.
    objs=$(sed -n 's/^\t\(vkms_[a-z_]*\.o\).*/\1/p' "$src/Makefile" | tr '\n' ' ')
    [ -n "$objs" ] || { echo "build-vkms: no objects found in $src/Makefile" >&2; exit 1; }
    printf 'obj-m := vkms.o\nvkms-y := %s\n' "$objs" >"$build/Kbuild"
    touch "$build/.ready"
fi
make -s -C "$GUEST_KDIR" M="$build" modules >&2
echo "$build/vkms.ko"
