#!/usr/bin/env bash
# Installs everything dmafile's build, demo and tests need on Debian 12 (bookworm).
# Idempotent: a second run only checks. Run as root (CI and the dev machines are).
#   scripts/setup.sh host    - Vulkan (Mesa >= 25 lavapipe), shader tools, Python checks
#   scripts/setup.sh guest   - host + Debian's 6.12 kernel (image, modules, headers,
#                              source) and 6.1 kernel (image, headers), qemu 10,
#                              virtme-ng, filesystem tools, sparse, dkms
set -euo pipefail
what=${1:-host}
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${DMAFILE_CACHE:-$here/.cache}/venv

log() { printf 'setup: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_ready=0
apt_update() {
    if [ "$apt_ready" = 0 ]; then
        as_root apt-get update -qq
        apt_ready=1
    fi
}

ensure_backports() {
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding bookworm-backports to apt sources"
        cat <<'SRC' | as_root tee /etc/apt/sources.list.d/dmafile-backports.sources >/dev/null
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        apt_ready=0
    fi
}

# pkg_missing PKG... : prints the packages that are not installed
pkg_missing() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

apt_install() { # pkgs...
    local missing
    missing=$(pkg_missing "$@")
    [ -z "$missing" ] && return 0
    apt_update
    log "apt-get install $missing"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

mesa_major() {
    dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed -E 's/^([0-9]+:)?([0-9]+)\..*/\2/'
}

setup_host() {
    ensure_backports
    apt_install ca-certificates pkg-config python3 python3-pip python3-venv
    apt_install glslang-tools spirv-tools libvulkan1 libvulkan-dev vulkan-tools vulkan-validationlayers
    local major
    major=$(mesa_major || true)
    if [ -z "$major" ] || [ "$major" -lt 25 ]; then
        apt_update
        log "installing Mesa lavapipe from bookworm-backports (have: ${major:-none})"
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports mesa-vulkan-drivers libgl1-mesa-dri >/dev/null
    fi
    major=$(mesa_major)
    [ "$major" -ge 25 ] || { log "Mesa $major installed, need >= 25"; exit 1; }
    # Independent CRC-32C implementation used by the tests to check ours,
    # and numpy for the C sample's independent sum64 (scripts/test-capi.sh).
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import crc32c, numpy' 2>/dev/null; then
        log "creating Python venv with crc32c and numpy in $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q crc32c numpy
    fi
}

# The guest kernel: Debian's 6.12 from bookworm-backports. Installing the
# packages puts the image under /boot and the modules under /lib/modules; the
# running host kernel is untouched (nothing here boots it).
setup_guest() {
    setup_host
    apt_install kmod cpio busybox-static e2fsprogs xfsprogs btrfs-progs util-linux \
        sparse bc bison flex libelf-dev libssl-dev make gcc xz-utils perl patch
    if ! ls /boot/vmlinuz-6.12.* >/dev/null 2>&1 || ! ls -d /usr/src/linux-headers-6.12.*-amd64 >/dev/null 2>&1; then
        apt_update
        log "installing Debian's 6.12 guest kernel and headers from bookworm-backports"
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports linux-image-amd64 linux-headers-amd64 >/dev/null
    fi
    # The oldest kernel the module supports: bookworm's own 6.1 (headers to
    # build against, the image to boot the kernel tests on).
    if ! ls -d /usr/src/linux-headers-6.1.0-*-amd64 >/dev/null 2>&1 || ! ls /boot/vmlinuz-6.1.0-*-amd64 >/dev/null 2>&1; then
        apt_update
        local v61
        v61=$(apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-amd64$' | cut -d' ' -f1 | sort -V | tail -n1)
        [ -n "$v61" ] || { log "no linux-headers-6.1.0-*-amd64 in the apt sources"; exit 1; }
        v61=${v61#linux-headers-}
        log "installing Debian's $v61 kernel and headers (the oldest kernel the module supports)"
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            "linux-image-$v61" "linux-headers-$v61" >/dev/null
    fi
    apt_install dkms
    if ! ls /usr/src/linux-source-6.12.tar.xz >/dev/null 2>&1; then
        apt_update
        log "installing linux-source-6.12 (checkpatch.pl, vkms sources)"
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports linux-source-6.12 >/dev/null
    fi
    local qv
    qv=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
    case "$qv" in
    1:1[0-9]*) ;;
    *)
        apt_update
        log "installing qemu-system-x86 from bookworm-backports (have: ${qv:-none})"
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86 >/dev/null
        ;;
    esac
    if [ ! -x "$venv/bin/vng" ]; then
        log "installing virtme-ng into $venv"
        "$venv/bin/pip" install -q virtme-ng
    fi
}

case "$what" in
host) setup_host ;;
guest) setup_guest ;;
*) log "usage: $0 host|guest"; exit 2 ;;
esac
log "$what environment ready"
