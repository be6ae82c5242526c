#!/usr/bin/env bash
# make demo: stream a generated dataset through the crc32c shader and verify.
set -euo pipefail
file=$1 size=$2
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/dmafile
mkdir -p "$(dirname "$file")"
stamp="$file.size"
if [ ! -f "$file" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$size" ]; then
    echo "demo: generating $size of deterministic pseudo-random data in $file"
    python3 "$here/scripts/gen-dataset.py" "$file" "$size"
    echo "$size" > "$stamp"
fi
echo "demo: devices and paths on this machine"
"$bin" info
echo
echo "demo: dmafile stream $file --shader crc32c --verify"
"$bin" stream "$file" --shader crc32c --verify
