#!/usr/bin/env bash
# dmafile-wgpu's sum example (a WGSL shader over an imported wgpu::Buffer,
# and over a wgpu::Buffer filled by the read queue) prints the sum64 that
# numpy computes independently, on generated files of odd sizes, through
# every path the example's own wgpu device can use; `auto` takes the first
# available path in its order; a path that is unavailable is skipped with
# its reason, and asking for it is a clean refusal naming it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${DMAFILE_PYTHON:-$here/.cache/venv/bin/python}
cargo=${CARGO:-cargo}
"$py" -c 'import numpy' || { echo "FAIL: $py has no numpy (run make setup)"; exit 1; }
(cd "$here" && "$cargo" build --release --locked -p dmafile-wgpu --example sum)
bin=$here/target/release/examples/sum
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

declare -A avail
while read -r path state rest; do
    avail[$path]=$state
    [ "$state" = available ] || echo "skip: path $path on this device: $rest"
done < <("$bin" --list-paths)
# What auto picks: imports try direct, host, heap, upload; the read queue
# leaves heap out (docs of dmafile::ReadQueue).
first() { for p in "$@"; do [ "${avail[$p]}" = available ] && { echo "$p"; return; }; done; }
auto_import=$(first direct host heap upload)
auto_read=$(first direct host upload)

pass=0 fail=0
check() { # name expected-sum expected-path output
    local got_sum got_path
    got_sum=$(sed -n 's/^sum64=\([0-9]*\) path=.*/\1/p' <<<"$4")
    got_path=$(sed -n 's/^sum64=[0-9]* path=\(.*\)/\1/p' <<<"$4")
    if [ "$got_sum" = "$2" ] && [ "$got_path" = "$3" ]; then
        pass=$((pass + 1))
    else
        echo "FAIL: $1: want sum64=$2 path=$3, got: $4"
        fail=$((fail + 1))
    fi
}
for size in 1 4095 4096 4097 3145731 135266309; do # the last two: 3 MiB + 3, 129 MiB + 5
    f=$dir/f$size
    python3 "$here/scripts/gen-dataset.py" "$f" "$size" "wgpu-$size"
    want=$("$py" -c '
import sys, numpy as np
b = open(sys.argv[1], "rb").read()
b += bytes(-len(b) % 4)
print(int(np.frombuffer(b, dtype="<u4").astype(np.uint64).sum(dtype=np.uint64)))' "$f")
    for path in auto direct host heap upload; do
        for mode in import read; do
            flag=""
            [ "$mode" = read ] && flag=--read
            if [ "$path" = auto ]; then
                expect=$auto_import
                [ "$mode" = read ] && expect=$auto_read
            elif [ "${avail[$path]}" = available ]; then
                expect=$path
            else
                # Unavailable: asking for it must fail and name the path.
                if out=$("$bin" "$f" --path "$path" $flag 2>&1); then
                    echo "FAIL: size $size $mode --path $path succeeded on an unavailable path: $out"
                    fail=$((fail + 1))
                elif grep -q "path \`$path\` is unavailable" <<<"$out"; then
                    pass=$((pass + 1))
                else
                    echo "FAIL: size $size $mode --path $path: refusal does not name the path: $out"
                    fail=$((fail + 1))
                fi
                continue
            fi
            out=$("$bin" "$f" --path "$path" $flag 2>/dev/null) || out="exit $?"
            check "size $size $mode --path $path" "$want" "$expect" "$out"
        done
    done
    rm -f "$f"
done
echo "dmafile-wgpu sum example against numpy (paths: $(for p in direct host heap upload; do echo -n "$p=${avail[$p]} "; done)):"
echo "wgpu: $pass passed, $fail failed"
[ "$fail" = 0 ]
