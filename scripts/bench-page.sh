#!/usr/bin/env bash
# Runs every benchmark docs/benchmarks.md shows, in its order, printing each
# command before its output; the page's tables are this script's output.
#   scripts/bench-page.sh DIR [LOG]
# DIR: a directory on a real (evictable, not tmpfs) filesystem with 2.5 GiB
# free; the data files are made there once (random bytes) and reused.
# Run it on an otherwise idle machine: the page states the load it saw.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:?usage: scripts/bench-page.sh DIR [LOG]}
log=${2:-/dev/stdout}
cd "$here"
cargo build --release -q -p dmafile-cli -p vk-load
bin=$here/target/release/dmafile
mkdir -p "$dir/small"
mk() { [ -f "$dir/$1" ] || head -c "$2" /dev/urandom >"$dir/$1"; }
mk f64M.bin 64M
mk f256M.bin 256M
mk f1G.bin 1G
if [ "$(find "$dir/small" -name '*.bin' | wc -l)" != 1000 ]; then
    for i in $(seq -w 0 999); do head -c 64K /dev/urandom >"$dir/small/s$i.bin"; done
fi
run() { # prints the command, the 1000 small files as their glob
    printf '$ %s\n' "$(printf '%s' "$*" | sed -E "s#( [^ ]*/small/s[0-9]+\.bin)+# $dir/small/*.bin#")"
    "$@"
    echo
}
{
    echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) on $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
    run "$bin" bench "$dir/f256M.bin"
    run "$bin" bench "$dir/f1G.bin"
    run "$bin" bench "$dir/f256M.bin" --shader crc32c
    run "$bin" bench "$dir/f256M.bin" --shader histogram
    run "$bin" bench "$dir/f1G.bin" --cold --paths host,upload
    run "$bin" bench "$dir/f1G.bin" --cold --paths host,upload --no-readahead
    run "$bin" bench "$dir/f256M.bin" --paths upload --parallel-reads
    run "$bin" bench "$dir/f64M.bin"
    run "$bin" bench "$dir"/small/*.bin
    run "$bin" bench "$dir"/small/*.bin --cold
    run "$here/target/release/vk-load" --bench "$dir/f256M.bin" "$dir/f1G.bin" --runs 7
} 2>&1 | tee "$log"
