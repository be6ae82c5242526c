#!/usr/bin/env bash
# The runtime's shaders: shaders/*.comp (GLSL) is the source; the crate ships
# their SPIR-V in runtime/spirv/, so that building it (from crates.io too)
# needs no shader compiler.
#   scripts/shaders.sh --write   compile and validate, and replace runtime/spirv/*.spv
#   scripts/shaders.sh --check   compile and validate, and fail unless the
#                                shipped SPIR-V is exactly what the GLSL gives
# glslangValidator and spirv-val come from Debian's glslang-tools and
# spirv-tools (scripts/setup.sh host installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-}
case "$mode" in --write | --check) ;; *) echo "usage: $0 --write|--check" >&2; exit 2 ;; esac
shaders=(crc32c sum64 histogram invert)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stale=()
for s in "${shaders[@]}"; do
    glslangValidator -V --target-env vulkan1.1 -o "$tmp/$s.spv" "$here/shaders/$s.comp" >"$tmp/$s.log" ||
        { cat "$tmp/$s.log"; echo "shaders: $s.comp does not compile" >&2; exit 1; }
    spirv-val --target-env vulkan1.1 "$tmp/$s.spv" || { echo "shaders: $s.spv is not valid SPIR-V" >&2; exit 1; }
    shipped=$here/runtime/spirv/$s.spv
    if [ "$mode" = --write ]; then
        cp "$tmp/$s.spv" "$shipped"
    elif ! cmp -s "$tmp/$s.spv" "$shipped"; then
        stale+=("$s")
    fi
done
if [ ${#stale[@]} -gt 0 ]; then
    echo "shaders: runtime/spirv/ does not match shaders/ for: ${stale[*]} (run: scripts/shaders.sh --write)" >&2
    exit 1
fi
if [ "$mode" = --write ]; then
    echo "shaders: ${#shaders[@]} shaders compiled and validated, runtime/spirv/ written"
else
    echo "shaders: ${#shaders[@]} shaders compiled and validated, runtime/spirv/ matches them"
fi
