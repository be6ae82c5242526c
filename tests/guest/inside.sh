#!/bin/bash
# Runs inside the guest as root (started by tests/guest/run.sh):
# loads the modules, makes the test filesystems, runs the guest test binary
# and checks the kernel log. Writes the exit code to $OUT/rc.
#   inside.sh OUT KO BIN [test filters...]
set -uo pipefail
out=$1 ko=$2 bin=$3
shift 3
filters=("$@")
log() { echo "guest: $*"; }
# DMAFILE_RACE_MS, DMAFILE_FUZZ_SECS, DMAFILE_FUZZ_SEED, DMAFILE_GUEST_STUCK_SECS from the host (run.sh).
set -a
# shellcheck disable=SC1091
[ -f "$out/test.env" ] && . "$out/test.env"
set +a
fail() { log "setup failed: $*"; echo 1 >"$out/rc"; exit 1; }

# Loads a module, unless the kernel has it built in (the debug kernel has
# them all: run.sh copies its modules.builtin next to the other outputs).
builtin=$out/modules.builtin
[ -f "$builtin" ] || builtin=/lib/modules/$(uname -r)/modules.builtin
load() {
    grep -q "/$1\.ko\$" "$builtin" 2>/dev/null || modprobe "$1" || fail "modprobe $1"
}
for m in loop vgem ext4 xfs btrfs nd_e820 nd_pmem; do
    load "$m"
done
insmod "$ko" || fail "insmod $ko"
# vkms (built by run.sh, except for the 6.1 guest): a display with a
# writeback connector.
if [ -f "$out/vkms.ko" ]; then
    for m in drm_kms_helper drm_shmem_helper; do
        load "$m"
    done
    insmod "$out/vkms.ko" enable_writeback=1 || fail "insmod vkms.ko"
fi

base=/tmp/dmafile
mkdir -p "$base"
mounts=""
mkfs_mount() { # name size mkfs...
    local name=$1 size=$2
    shift 2
    truncate -s "$size" "$base/$name.img"
    "$@" "$base/$name.img" >/dev/null 2>&1 || fail "$* $base/$name.img"
    mkdir -p "$base/$name"
    mount -o loop "$base/$name.img" "$base/$name" || fail "mount $name"
    mounts+="$name=$base/$name,"
}
mkfs_mount ext4 128M mkfs.ext4 -q -F
mkfs_mount xfs 320M mkfs.xfs -q -f # mkfs.xfs refuses filesystems under 300 MB
mkfs_mount btrfs 128M mkfs.btrfs -q -f
for spec in "tmpfs tmpfs size=256M" "tmpfs-huge tmpfs size=256M,huge=always" "ramfs ramfs mode=0755"; do
    set -- $spec
    mkdir -p "$base/$1"
    mount -t "$2" -o "$3" "$1" "$base/$1" || fail "mount $1"
    mounts+="$1=$base/$1,"
done
# DAX: the legacy pmem regions (run.sh's memmap=) as fsdax block devices.
pmem=""
dax_mount_try() { # name dev mkfs... : like dax_mount, but returns 1 where
    # the kernel will not mount it with DAX
    local name=$1 dev=$2
    shift 2
    for _ in $(seq 50); do [ -b "$dev" ] && break; sleep 0.1; done
    "$@" "$dev" >/dev/null 2>&1 || return 1
    mkdir -p "$base/$name"
    mount -o dax "$dev" "$base/$name" 2>/dev/null || return 1
    if ! grep -qE "^$dev $base/$name .*dax" /proc/mounts; then
        umount "$base/$name"
        return 1
    fi
    mounts+="$name=$base/$name,"
    pmem+="$name=$dev,"
}
dax_mount() { # name dev mkfs...
    local name=$1 dev=$2
    shift 2
    for _ in $(seq 50); do [ -b "$dev" ] && break; sleep 0.1; done
    [ -b "$dev" ] || fail "$dev did not appear (memmap= pmem, nd_e820, nd_pmem)"
    "$@" "$dev" >/dev/null 2>&1 || fail "$* $dev"
    mkdir -p "$base/$name"
    mount -o dax "$dev" "$base/$name" || fail "mount -o dax $dev"
    grep -qE "^$dev $base/$name .*dax" /proc/mounts || fail "$dev is not mounted with dax: $(grep "^$dev" /proc/mounts)"
    mounts+="$name=$base/$name,"
    pmem+="$name=$dev,"
}
dax_mount ext4-dax /dev/pmem0 mkfs.ext4 -q -F -b 4096
# With reflink, where the kernel mounts DAX with it (6.1 says "DAX and
# reflink cannot be used together"; dax/reflink then skips).
if ! dax_mount_try xfs-dax /dev/pmem1 mkfs.xfs -q -f -m reflink=1; then
    dax_mount xfs-dax /dev/pmem1 mkfs.xfs -q -f -m reflink=0
fi
chmod 0755 "$base"/*/

# The debug kernel's detectors (scripts/debug-kernel.config), as this
# kernel has them: printed, so a run says what it was checked with.
if [ -r /proc/config.gz ]; then
    on=""
    for opt in KASAN PROVE_LOCKING DEBUG_ATOMIC_SLEEP DEBUG_KMEMLEAK DMA_API_DEBUG \
        DEBUG_VM DEBUG_LIST DEBUG_SG DEBUG_OBJECTS FORTIFY_SOURCE UBSAN \
        DETECT_HUNG_TASK DEBUG_PAGEALLOC; do
        zgrep -q "^CONFIG_$opt=y" /proc/config.gz && on+=" $opt"
    done
    log "kernel $(uname -r), detectors on:${on:- none}"
fi
kmemleak=/sys/kernel/debug/kmemleak
[ -e /sys/kernel/debug/kmemleak ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null
if [ -e "$kmemleak" ]; then
    # What boot and setup left is not ours to report.
    echo scan >"$kmemleak"
    echo clear >"$kmemleak"
fi

dmesg >"$out/dmesg-boot.txt"
dmesg -C
export DMAFILE_KO=$ko DMAFILE_DKMS=$out/dkms DMAFILE_VKMS=$out/vkms.ko DMAFILE_VKMS_OFFSET_BUG=$out/vkms-offset-bug.ko DMAFILE_MOUNTS=$mounts DMAFILE_PMEM=$pmem DMAFILE_C_LOAD=$out/capi/bin/c-load RUST_BACKTRACE=1
"$bin" "${filters[@]}" 2>&1 | tee "$out/guest-tests.log"
rc=${PIPESTATUS[0]}

# Every dma-buf is gone, so the modules must unload.
if [ -f "$out/vkms.ko" ] && ! rmmod vkms; then
    log "rmmod vkms failed after the tests: a reference leaked"
    rc=1
fi
if ! rmmod dmafile; then
    log "rmmod dmafile failed after the tests: a reference leaked"
    rc=1
fi
if [ -e "$kmemleak" ]; then
    # An object must be unreferenced for a while and in two scans to count.
    sleep 6
    echo scan >"$kmemleak"
    sleep 1
    echo scan >"$kmemleak"
    cat "$kmemleak" >"$out/kmemleak.txt"
    if [ -s "$out/kmemleak.txt" ]; then
        head -n 60 "$out/kmemleak.txt"
        log "kmemleak reports leaks (above; all in kmemleak.txt)"
        rc=1
    else
        log "kmemleak: no leaks"
    fi
fi
dmesg >"$out/dmesg.txt"
if grep -nE 'WARNING:|BUG:|Oops|general protection|Call Trace|kmemleak|UBSAN|KASAN|Bad page|leak|refcount_t|blocked for more than|DMA-API|lockdep|circular locking|ODEBUG|list_(add|del) corruption' "$out/dmesg.txt"; then
    log "the kernel log has warnings (above; full log in dmesg.txt)"
    rc=1
else
    log "kernel log: no warnings, BUGs, oopses or leak reports"
fi
echo "$rc" >"$out/rc"
exit "$rc"
