#!/usr/bin/env bash
# The CRC-32C dmafile prints equals an independent implementation (PyPI's
# crc32c, installed by scripts/setup.sh), on generated files of odd sizes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${DMAFILE_PYTHON:-$here/.cache/venv/bin/python}
bin=$here/target/release/dmafile
"$py" -c 'import crc32c' || { echo "FAIL: $py has no crc32c module (run make setup)"; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
for size in 0 1 3 4095 4096 4097 1M 5M; do
    python3 "$here/scripts/gen-dataset.py" "$dir/f" "$size" "independent-$size"
    for path in host upload; do
        ours=$("$bin" stream "$dir/f" --path "$path" --chunk 1M --shader crc32c --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["result"])')
        theirs=$("$py" -c 'import crc32c,sys; print("0x%08x" % crc32c.crc32c(open(sys.argv[1],"rb").read()))' "$dir/f")
        if [ "$ours" = "$theirs" ]; then
            pass=$((pass + 1))
        else
            echo "FAIL: size $size path $path: dmafile $ours, python crc32c $theirs"
            fail=$((fail + 1))
        fi
    done
done
echo "independent CRC-32C check against PyPI crc32c, host and upload paths:"
echo "crc32c: $pass passed, $fail failed"
[ "$fail" = 0 ]
