#!/usr/bin/env bash
# Builds the debug guest kernel once and caches it outside the clone:
# Debian's linux-source-6.12 (the same source as the stock guest kernel),
# configured with x86_64_defconfig, virtme-ng's fragment and
# scripts/debug-kernel.config (KASAN, lockdep, kmemleak, DMA-API debug,
# DEBUG_VM/LIST/SG/OBJECTS, FORTIFY_SOURCE, UBSAN, the hung-task detector,
# debug_pagealloc; everything the guest tests load built in).
#   scripts/debug-kernel.sh        -> prints the build tree (bzImage, headers)
# The cache is $DMAFILE_KERNEL_CACHE (default /var/cache/dmafile), keyed by
# the source package's version and the config fragment, so a change of
# either builds a new kernel. About 25 CPU-minutes; nice 19.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${DMAFILE_CACHE:-$here/.cache}
kcache=${DMAFILE_KERNEL_CACHE:-/var/cache/dmafile}
tarball=/usr/src/linux-source-6.12.tar.xz
fragment=$here/scripts/debug-kernel.config
log() { printf 'debug-kernel: %s\n' "$*" >&2; }

[ -f "$tarball" ] || { log "$tarball missing (run: scripts/setup.sh guest)"; exit 1; }
configkernel=$cache/venv/bin/virtme-configkernel
[ -x "$configkernel" ] || { log "virtme-ng missing (run: scripts/setup.sh guest)"; exit 1; }
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
key=$(printf '%s\n' "$srcver" | cat - "$fragment" | sha256sum | cut -c1-12)
tree=$kcache/debug-6.12-$key
if [ -f "$tree/.ready" ]; then
    echo "$tree"
    exit 0
fi

mkdir -p "$kcache"
# One build at a time; a second caller waits for the first.
exec 9>"$kcache/.debug-kernel.lock"
flock 9
if [ -f "$tree/.ready" ]; then
    echo "$tree"
    exit 0
fi
rm -rf "$tree" "$tree.tmp"
mkdir -p "$tree.tmp"
log "extracting $tarball ($srcver)"
tar -xJf "$tarball" -C "$tree.tmp" --strip-components=1
cd "$tree.tmp"
log "configuring: x86_64_defconfig + virtme-ng + $(basename "$fragment")"
"$configkernel" --defconfig >/dev/null 2>&1
# Ours last, so that it wins over virtme-ng's (which asks for DWARF).
scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null 2>&1
make -s olddefconfig >/dev/null 2>&1
# Kconfig drops what it cannot satisfy: every line of the fragment must hold.
missing=0
while IFS= read -r line; do
    case "$line" in ''|\#*) continue ;; esac
    name=${line%%=*} value=${line#*=}
    if [ "$value" = n ]; then
        grep -qE "^$name=" .config && { log "$name is set, wanted off"; missing=1; }
    else
        grep -qxF "$name=$value" .config || { log "$name=$value did not stick ($(grep -E "^$name=|^# $name is" .config || echo unset))"; missing=1; }
    fi
done <"$fragment"
[ "$missing" = 0 ] || { log "the config fragment does not apply"; exit 1; }
log "building bzImage and modules with $(nproc) jobs (nice 19); this takes a while"
start=$SECONDS
nice -n 19 make -s -j"$(nproc)" bzImage modules >build.log 2>&1 || { tail -n 40 build.log >&2; log "build failed (log: $tree.tmp/build.log)"; exit 1; }
log "built $(make -s kernelrelease) in $((SECONDS - start)) s"
touch .ready
cd /
mv "$tree.tmp" "$tree"
# Older builds of other fragments are not needed any more.
find "$kcache" -maxdepth 1 -name 'debug-6.12-*' ! -name "debug-6.12-$key" -exec rm -rf {} +
echo "$tree"
