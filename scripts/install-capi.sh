#!/bin/bash
# Installs the C ABI: lib/libdmafile.so.VERSION with its soname link
# (libdmafile.so.0) and development link (libdmafile.so), include/dmafile.h
# and lib/pkgconfig/dmafile.pc, under DESTDIR + PREFIX.
#   scripts/install-capi.sh PREFIX [LIBDIR] [INCLUDEDIR]   (make install PREFIX=...)
# The library must be built already (cargo build --release -p dmafile-capi).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:?usage: install-capi.sh PREFIX [LIBDIR] [INCLUDEDIR]}
libdir=${2:-$prefix/lib}
includedir=${3:-$prefix/include}
destdir=${DESTDIR:-}
target=${CARGO_TARGET_DIR:-$here/target}
lib=$target/release/libdmafile_capi.so
[ -f "$lib" ] || { echo "install-capi: $lib is missing: cargo build --release -p dmafile-capi" >&2; exit 2; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -1)
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[ "$soname" = libdmafile.so.0 ] || { echo "install-capi: $lib has soname '$soname', not libdmafile.so.0" >&2; exit 1; }
install -d "$destdir$libdir/pkgconfig" "$destdir$includedir"
install -m 0755 "$lib" "$destdir$libdir/libdmafile.so.$version"
ln -sfn "libdmafile.so.$version" "$destdir$libdir/$soname"
ln -sfn "$soname" "$destdir$libdir/libdmafile.so"
install -m 0644 "$here/capi/dmafile.h" "$destdir$includedir/dmafile.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@INCLUDEDIR@|$includedir|" \
    -e "s|@VERSION@|$version|" "$here/capi/dmafile.pc.in" >"$destdir$libdir/pkgconfig/dmafile.pc"
chmod 0644 "$destdir$libdir/pkgconfig/dmafile.pc"
echo "install-capi: libdmafile.so.$version ($soname), dmafile.h and dmafile.pc in $destdir$prefix"
