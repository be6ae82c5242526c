#!/usr/bin/env bash
# Installs dmafile.ko with DKMS the way docs/kmod.md says (make -C kmod
# dkms-install: a clean copy of the sources in /usr/src, dkms add, build,
# install) for kernel KVER, then removes it (make -C kmod dkms-remove), in a
# mount namespace where /usr/src, /var/lib/dkms and /lib/modules are
# overlays: the host is not changed. What DKMS installed is kept in OUT for
# the guest test install/dkms, which loads it with modprobe from where DKMS
# put it.
#   scripts/dkms-check.sh KVER OUT
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kver=$1 out=$2
command -v dkms >/dev/null || { echo "dkms-check: dkms missing (run: scripts/setup.sh guest)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
# shellcheck disable=SC2016
unshare -m bash -euo pipefail -c '
    here=$1 kver=$2 out=$3
    for d in /usr/src /var/lib/dkms /lib/modules; do
        mkdir -p "$out/upper$d" "$out/work$d"
        mount -t overlay overlay -o "lowerdir=$d,upperdir=$out/upper$d,workdir=$out/work$d" "$d"
    done
    make -s -C "$here/kmod" dkms-install KVER="$kver" >"$out/install.log" 2>&1 ||
        { cat "$out/install.log"; exit 1; }
    dkms status dmafile >"$out/status.txt"
    # What the guest loads: what DKMS changed under /lib/modules/KVER (the
    # module, and the modules.dep that depmod rewrote), from the overlay.
    cp -a "$out/upper/lib/modules/$kver" "$out/installed"
    make -s -C "$here/kmod" dkms-remove >"$out/remove.log" 2>&1 || { cat "$out/remove.log"; exit 1; }
    dkms status dmafile >"$out/status-after-remove.txt"
    if ls "/lib/modules/$kver/updates/dkms/dmafile.ko"* >/dev/null 2>&1; then
        echo "dkms-check: dmafile.ko still installed after dkms-remove" >&2
        exit 1
    fi
' dkms-check "$here" "$kver" "$out"
rm -rf "$out/upper" "$out/work"
echo "dkms-check: $(tr -d '\n' <"$out/status.txt"); removed cleanly"
