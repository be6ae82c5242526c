#!/usr/bin/env bash
# Builds dmafile.ko and the guest test binary, boots Debian's 6.12 kernel in
# QEMU with virtme-ng (the host's root filesystem, read-only) and runs the
# guest tests there. TCG by default: nested KVM fails on our CI machines;
# DMAFILE_GUEST_KVM=1 uses KVM. Arguments filter tests by name.
# DMAFILE_GUEST_KERNEL=debug boots the debug build of the same kernel
# (KASAN, lockdep, kmemleak, ...: scripts/debug-kernel.sh) instead, and the
# run then also fails on a kmemleak report.
# Exit status: the guest's. The guest's log and dmesg land in
# $DMAFILE_CACHE/guest-run-<stock|debug>.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cache=${DMAFILE_CACHE:-$here/.cache}
# shellcheck source=scripts/guest-kernel.sh
. "$here/scripts/guest-kernel.sh"
vng=$cache/venv/bin/vng
export PATH=$cache/venv/bin:$PATH # vng runs virtme-run from there
[ -x "$vng" ] || { echo "virtme-ng missing (run: scripts/setup.sh guest)" >&2; exit 1; }

# DMAFILE_GUEST_KO: test another build of the module (e.g. an older
# commit's, to see a new test fail on it) instead of this tree's.
ko=${DMAFILE_GUEST_KO:-$here/kmod/dmafile.ko}
if [ -z "${DMAFILE_GUEST_KO:-}" ]; then
    echo "guest: building dmafile.ko for $GUEST_KVER"
    make -s -C "$here/kmod" KDIR="$GUEST_KDIR" >/dev/null
fi
# vkms comes from linux-source-6.12: the 6.1 guest has none, and runs no
# scan-out tests.
vkms_ko="" vkms_bug_ko=""
if [ "${DMAFILE_GUEST_KERNEL:-stock}" != 6.1 ]; then
    echo "guest: building vkms.ko (out of tree, from linux-source-6.12)"
    vkms_ko=$("$here/scripts/build-vkms.sh")
    vkms_bug_ko=$("$here/scripts/build-vkms.sh" --without-offset-fix)
fi
cargo build --release --locked -q -p dmafile-guest-tests -p dmafile-cli -p safetensors-reduce -p scanout-play -p vk-load
bin=$here/target/release/dmafile-guest-tests

out=$cache/guest-run-${DMAFILE_GUEST_KERNEL:-stock}
rm -rf "$out"
mkdir -p "$out"
if [ -n "$vkms_ko" ]; then
    cp "$vkms_ko" "$out/vkms.ko" # inside.sh loads it from there
    cp "$vkms_bug_ko" "$out/vkms-offset-bug.ko" # scanout/vkms-offset-bug loads it
fi
if [ -f "$GUEST_KDIR/modules.builtin" ] && [ "${DMAFILE_GUEST_KERNEL:-stock}" = debug ]; then
    cp "$GUEST_KDIR/modules.builtin" "$out/" # inside.sh: what not to modprobe
fi
# DKMS installs the module for the guest's (packaged) kernel, in overlays
# on this machine (scripts/dkms-check.sh); install/dkms loads it there.
if [ "${DMAFILE_GUEST_KERNEL:-stock}" != debug ]; then
    "$here/scripts/dkms-check.sh" "$GUEST_KVER" "$out/dkms" 2> >(grep -v "^readelf: Warning" >&2)
fi
# The C ABI installed into a prefix the guest sees, and c-load built
# against it with pkg-config, as an application would (sample/c-load-direct).
make -s -C "$here" install PREFIX="$out/capi" >/dev/null
PKG_CONFIG_PATH=$out/capi/lib/pkgconfig
mkdir -p "$out/capi/bin"
# shellcheck disable=SC2046 # pkg-config prints separate words
cc -std=c11 -O2 -Wall -Werror -o "$out/capi/bin/c-load" "$here/samples/c-load/c-load.c" \
    $(PKG_CONFIG_PATH=$PKG_CONFIG_PATH pkg-config --cflags --libs dmafile) -Wl,-rpath,"$out/capi/lib"
# The tests' own knobs reach the guest through a file it sources.
env | grep -E '^DMAFILE_(RACE_MS|FUZZ_SECS|FUZZ_SEED|GUEST_STUCK_SECS)=' >"$out/test.env" || true
accel=(--disable-kvm)
[ "${DMAFILE_GUEST_KVM:-0}" = 1 ] && accel=()
quoted=""
[ $# -gt 0 ] && quoted=$(printf ' %q' "$@")
# Two legacy pmem regions carved out of guest RAM below 2 GiB, for the DAX
# tests (docs/kmod.md, "Storage-direct"): pmem0 256 MiB at 1 GiB (ext4),
# pmem1 384 MiB at 1.25 GiB (xfs needs 300 MB). A region at 2 GiB in a
# 3 GiB q35 guest lands in the PCI hole and corrupts data. /lib/modules,
# /etc/modules-load.d, /etc/security/limits.d and /etc/udev/rules.d are
# writable in the guest only (overlays), for the install/ tests.
PMEM_APPEND='memmap=256M!1G memmap=384M!1280M'
echo "guest: booting $GUEST_VMLINUZ (${accel[*]:-kvm})"
set +e
timeout "${DMAFILE_GUEST_TIMEOUT:-1800}" "$vng" -r "$GUEST_VMLINUZ" "${accel[@]}" \
    --memory 3G --cpus 2 --rwdir "$out" --append "$PMEM_APPEND" \
    --overlay-rwdir /lib/modules --overlay-rwdir /etc/modules-load.d \
    --overlay-rwdir /etc/security/limits.d --overlay-rwdir /etc/udev/rules.d \
    --exec "$here/tests/guest/inside.sh $out $ko $bin$quoted" 2>&1 | cat
# (through cat: QEMU reopens its stdout, which truncates a log file it is redirected to)
vrc=${PIPESTATUS[0]}
set -e
if [ ! -f "$out/rc" ]; then
    echo "guest: the guest did not finish (vng exit $vrc); see the output above" >&2
    exit 1
fi
exit "$(cat "$out/rc")"
