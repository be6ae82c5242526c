# Sourced: finds the guest kernel that scripts/setup.sh guest installed
# (Debian's 6.12 from bookworm-backports) and sets GUEST_KVER, GUEST_VMLINUZ,
# GUEST_KDIR. Fails loudly when it is missing: CI installs it.
GUEST_KVER=${GUEST_KVER:-$(cd /boot 2>/dev/null && ls vmlinuz-6.12.*-amd64 2>/dev/null |
    sed 's/^vmlinuz-//' | sort -V | tail -n1)}
if [ -z "$GUEST_KVER" ]; then
    echo "guest kernel 6.12 not installed (run: scripts/setup.sh guest)" >&2
    exit 1
fi
GUEST_VMLINUZ=/boot/vmlinuz-$GUEST_KVER
GUEST_KDIR=/usr/src/linux-headers-$GUEST_KVER
if [ ! -d "$GUEST_KDIR" ] || [ ! -d "/lib/modules/$GUEST_KVER" ]; then
    echo "headers or modules for $GUEST_KVER missing (run: scripts/setup.sh guest)" >&2
    exit 1
fi
export GUEST_KVER GUEST_VMLINUZ GUEST_KDIR
