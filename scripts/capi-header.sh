#!/bin/bash
# Generates capi/dmafile.h from capi/src/lib.rs with cbindgen (Debian's,
# installed by `scripts/setup.sh host`); `--check` fails when the header in
# the tree is not what the generator makes now.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/capi/dmafile.h
command -v cbindgen >/dev/null || { echo "capi-header: cbindgen missing (make setup)" >&2; exit 2; }
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# The Vulkan types are excluded on purpose (they come from vulkan.h): drop
# cbindgen's warnings about them, keep any other.
(cd "$here/capi" && cbindgen --quiet --config cbindgen.toml --crate dmafile-capi --output "$tmp" .)
if [ "${1:-}" = --check ]; then
    if ! diff -u "$out" "$tmp"; then
        echo "capi-header: capi/dmafile.h differs from what cbindgen $(cbindgen --version | cut -d' ' -f2) makes of capi/src/lib.rs: run scripts/capi-header.sh" >&2
        exit 1
    fi
    echo "capi-header: capi/dmafile.h is up to date"
else
    cp "$tmp" "$out"
fi
