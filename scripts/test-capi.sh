#!/bin/bash
# The C ABI end to end, as a C application sees it (`make test-host`):
#  1. capi/dmafile.h is what cbindgen makes of capi/src/lib.rs now;
#  2. `make install` into a temporary prefix, then samples/c-load,
#     tests/capi/errors.c and docs/integration.md's C program built from
#     that prefix with pkg-config only;
#  3. c-load on generated files of odd sizes (and an unaligned range)
#     through every path this machine has, each sum64 compared with
#     numpy's, each path and cpu_copied compared with what the path does;
#  4. every error return (tests/capi/errors.c);
#  5. a forced panic in every entry point (capi/tests/panic.rs, feature
#     test-panic), last: it rebuilds the library with the hook.
# A path this machine cannot serve is reported as skipped, with the reason.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
CARGO=${CARGO:-cargo}
py=${DMAFILE_PYTHON:-${DMAFILE_CACHE:-$here/.cache}/venv/bin/python}
"$py" -c 'import numpy' 2>/dev/null || { echo "test-capi: $py has no numpy (make setup)" >&2; exit 2; }
work=$(mktemp -d /tmp/dmafile-capi.XXXXXX)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

scripts/capi-header.sh --check

make -s install PREFIX="$prefix" CARGO="$CARGO" >/dev/null
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
flags=$(pkg-config --cflags --libs dmafile)
# shellcheck disable=SC2086 # flags are words
cc -std=c11 -O2 -Wall -Wextra -Werror -o "$work/c-load" samples/c-load/c-load.c $flags -Wl,-rpath,"$prefix/lib"
# shellcheck disable=SC2086
cc -std=c11 -O2 -Wall -Wextra -Werror -I kmod/include/uapi -o "$work/errors" tests/capi/errors.c $flags -Wl,-rpath,"$prefix/lib"
# shellcheck disable=SC2086
cc -std=c11 -O2 -Wall -Wextra -Werror -pthread -o "$work/threads" tests/capi/threads.c $flags -Wl,-rpath,"$prefix/lib"
# docs/integration.md's complete C program, as printed there.
"$py" - docs/integration.md "$work/doc-app.c" <<'PY'
import sys
s = open(sys.argv[1]).read()
a = s.index("```c\n", s.index("### A complete program")) + 5
open(sys.argv[2], "w").write(s[a:s.index("```\n", a)])
PY
# shellcheck disable=SC2086
cc -std=c11 -O2 -Wall -Wextra -Werror -o "$work/doc-app" "$work/doc-app.c" $flags -Wl,-rpath,"$prefix/lib"
[ "$(readelf -d "$work/c-load" | sed -n 's/.*Shared library: \[\(libdmafile[^]]*\)\]/\1/p')" = libdmafile.so.0 ] ||
    fail "c-load does not link libdmafile.so.0"
echo "test-capi: installed to $prefix; c-load and errors built with pkg-config"

# Deterministic files of odd sizes.
"$py" - "$work" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(14)
for n in (1, 4095, 4097, 3 * 2**20 + 5):
    rng.integers(0, 256, n, dtype=np.uint8).tofile(f"{sys.argv[1]}/f{n}.bin")
PY
expect_sum() { # FILE OFFSET LENGTH
    "$py" - "$@" <<'PY'
import sys, numpy as np
f, off, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
b = np.fromfile(f, dtype=np.uint8, count=n, offset=off)
b = np.concatenate([b, np.zeros(-n % 4, dtype=np.uint8)])
print(int(b.view("<u4").astype(np.uint64).sum(dtype=np.uint64)))
PY
}

ran=0
cases=()
for n in 1 4095 4097 3145733; do cases+=("$work/f$n.bin 0 $n"); done
cases+=("$work/f3145733.bin 4099 1000001")
for path in auto direct host heap upload; do
    for c in "${cases[@]}"; do
        read -r file off len <<<"$c"
        set +e
        out=$("$work/c-load" "$file" --offset "$off" --length "$len" --path "$path" 2>"$work/err")
        rc=$?
        set -e
        if [ $rc = 2 ] && grep -q "is unavailable" "$work/err"; then
            echo "skip $path: $(sed 's/^c-load: //' "$work/err")"
            continue 2
        fi
        [ $rc = 0 ] || { fail "c-load $file --offset $off --length $len --path $path: exit $rc: $(cat "$work/err")"; continue; }
        want=$(expect_sum "$file" "$off" "$len")
        got=$(sed -n 's/^sum64=\([0-9]*\) .*/\1/p' <<<"$out")
        got_path=$(sed -n 's/.* path=\([a-z]*\) .*/\1/p' <<<"$out")
        copied=$(sed -n 's/.* cpu_copied=\([0-9]*\)$/\1/p' <<<"$out")
        case $path:$got_path in
            auto:*) ;;
            "$path:$path") ;;
            *) fail "$file --path $path served by $got_path" ;;
        esac
        case $got_path in
            direct | host) [ "$copied" = 0 ] || fail "$file via $got_path: cpu_copied=$copied, want 0" ;;
            heap | upload) [ "$copied" = "$len" ] || fail "$file via $got_path: cpu_copied=$copied, want $len" ;;
        esac
        if [ "$got" = "$want" ]; then
            echo "ok   $path $(basename "$file") off=$off len=$len: sum64=$got path=$got_path cpu_copied=$copied"
            ran=$((ran + 1))
        else
            fail "$path $(basename "$file") off=$off len=$len: c-load sum64=$got, numpy $want"
        fi
    done
done
[ $ran -ge 15 ] || fail "only $ran c-load runs compared (auto, host and upload at least: 15)"

# The docs' program loads a whole file like c-load's auto.
for n in 4097 3145733; do
    out=$("$work/doc-app" "$work/f$n.bin") || { fail "docs/integration.md's program on f$n.bin"; continue; }
    want=$(expect_sum "$work/f$n.bin" 0 "$n")
    if [ "${out%% *}" = "sum64=$want" ]; then
        echo "ok   docs/integration.md's program f$n.bin: $out"
    else
        fail "docs/integration.md's program f$n.bin: $out, numpy sum64=$want"
    fi
done

# Bad input to the sample: exit 2 with a message naming it.
set +e
"$work/c-load" "$work/f4097.bin" --offset 4000 --length 98 >"$work/out" 2>"$work/err"; rc=$?
set -e
{ [ $rc = 2 ] && [ ! -s "$work/out" ] && grep -q "range-past-eof" "$work/err"; } ||
    fail "c-load past EOF: exit $rc, stderr: $(cat "$work/err")"

mkdir -p "$work/scratch"
"$work/errors" "$work/scratch" || fail "tests/capi/errors.c"

# The same C programs under the Khronos validation layer (synchronization
# validation on): the layer must have nothing to say about the ABI's use
# of the app's device, buffers and timeline, nor the app's of the ABI.
cat >"$work/vk_layer_settings.txt" <<SETTINGS
khronos_validation.debug_action = VK_DBG_LAYER_ACTION_LOG_MSG
khronos_validation.log_filename = $work/validation.log
khronos_validation.report_flags = error,warn,perf
khronos_validation.enables = VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT
SETTINGS
vl=(env VK_LAYER_SETTINGS_PATH="$work/vk_layer_settings.txt" VK_INSTANCE_LAYERS=VK_LAYER_KHRONOS_validation)
for path in auto upload; do
    "${vl[@]}" "$work/c-load" "$work/f3145733.bin" --offset 4099 --length 1000001 --path "$path" >/dev/null ||
        fail "c-load --path $path under the validation layer"
done
"${vl[@]}" "$work/errors" "$work/scratch" >/dev/null || fail "errors.c under the validation layer"
[ -f "$work/validation.log" ] || fail "the validation layer did not run (no log)"
if [ -s "$work/validation.log" ]; then
    head -c 4000 "$work/validation.log"
    fail "the validation layer reported messages"
else
    echo "ok   c-load (auto, upload) and errors.c under VK_LAYER_KHRONOS_validation: 0 messages"
fi

# Several threads on one lent device (tests/capi/threads.c), through auto
# and through upload (path 4), whose read queues are dropped while the
# others work.
"$work/threads" "$work/scratch" || fail "tests/capi/threads.c (exit $?)"
"$work/threads" "$work/scratch" 6 4 || fail "tests/capi/threads.c, upload (exit $?)"

"$CARGO" test --release --locked -q -p dmafile-capi --features test-panic --test panic ||
    fail "capi/tests/panic.rs"

if [ $fails -gt 0 ]; then
    echo "test-capi: $fails failed" >&2
    exit 1
fi
echo "test-capi: $ran c-load sums equal numpy's; every error return and the panic guard checked"
