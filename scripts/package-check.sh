#!/usr/bin/env bash
# The dmafile crate as crates.io would ship it: `cargo package -p dmafile`,
# then a build of the unpacked .crate in a directory of its own with no
# shader compiler on PATH (stand-ins that fail if anything calls them).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
version=$(cargo pkgid -p dmafile | sed 's/.*[#@]//')
cargo package -p dmafile --locked --allow-dirty -q
crate=$here/target/package/dmafile-$version.crate
[ -f "$crate" ] || { echo "package-check: $crate was not made" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$crate" -C "$work"
mkdir "$work/bin"
for tool in glslangValidator glslc spirv-val; do
    printf '#!/bin/sh\necho "package-check: the packaged crate ran %s" >&2\nexit 1\n' "$tool" >"$work/bin/$tool"
    chmod +x "$work/bin/$tool"
done
(cd "$work/dmafile-$version" &&
    PATH="$work/bin:$PATH" CARGO_TARGET_DIR="$here/target/package-check" cargo build -q --release)
echo "package-check: dmafile-$version.crate packaged ($(du -h "$crate" | cut -f1)) and built from its unpacked copy without shader tools"
