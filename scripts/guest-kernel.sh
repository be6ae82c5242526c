# Sourced: finds the guest kernel and sets GUEST_KVER, GUEST_VMLINUZ,
# GUEST_KDIR (a kernel build or headers directory that modules build against).
#   DMAFILE_GUEST_KERNEL=stock (default): Debian's 6.12 from bookworm-backports,
#     which scripts/setup.sh guest installed;
#   DMAFILE_GUEST_KERNEL=6.1: bookworm's own 6.1, the oldest kernel the module
#     supports (no vkms for it: the scan-out tests do not run there);
#   DMAFILE_GUEST_KERNEL=debug: the debug build of the same source
#     (scripts/debug-kernel.sh builds it once and caches it).
# Fails loudly when the kernel is missing: CI installs it.
case "${DMAFILE_GUEST_KERNEL:-stock}" in
debug)
    GUEST_KDIR=$("$(dirname "${BASH_SOURCE[0]}")/debug-kernel.sh") || exit 1
    GUEST_VMLINUZ=$GUEST_KDIR/arch/x86/boot/bzImage
    GUEST_KVER=$(make -s -C "$GUEST_KDIR" kernelrelease)
    ;;
stock | 6.1)
    series=6.12
    [ "${DMAFILE_GUEST_KERNEL:-stock}" = 6.1 ] && series=6.1.0
    GUEST_KVER=${GUEST_KVER:-$(cd /boot 2>/dev/null && { ls "vmlinuz-$series".*-amd64 "vmlinuz-$series"-*-amd64 2>/dev/null || true; } |
        sed 's/^vmlinuz-//' | sort -V | tail -n1)}
    if [ -z "$GUEST_KVER" ]; then
        echo "guest kernel $series not installed (run: scripts/setup.sh guest)" >&2
        exit 1
    fi
    GUEST_VMLINUZ=/boot/vmlinuz-$GUEST_KVER
    GUEST_KDIR=/usr/src/linux-headers-$GUEST_KVER
    if [ ! -d "$GUEST_KDIR" ] || [ ! -d "/lib/modules/$GUEST_KVER" ]; then
        echo "headers or modules for $GUEST_KVER missing (run: scripts/setup.sh guest)" >&2
        exit 1
    fi
    ;;
*)
    echo "DMAFILE_GUEST_KERNEL must be stock, 6.1 or debug, not ${DMAFILE_GUEST_KERNEL}" >&2
    exit 2
    ;;
esac
export GUEST_KVER GUEST_VMLINUZ GUEST_KDIR
