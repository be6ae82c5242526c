#!/usr/bin/env bash
# The host test suite under the Khronos validation layer (Debian's
# vulkan-validationlayers), with synchronization validation on, every
# message fatal: the layer logs it and raises SIGTRAP in the process that
# caused it, so the test running it fails. First it shows that the layer
# reports: a test-only build of the runtime without one barrier (feature
# validation-canary) must be reported, or this fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
fail() { echo "validation: $*" >&2; exit 1; }
[ -f /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json ] ||
    fail "the Khronos validation layer is not installed (scripts/setup.sh host installs vulkan-validationlayers)"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# Tests run some processes as nobody: the log must be theirs to write too
# (the layer falls back to stdout otherwise).
chmod 0777 "$dir"
log=$dir/validation.log
settings=$dir/vk_layer_settings.txt
cat >"$settings" <<SETTINGS
khronos_validation.debug_action = VK_DBG_LAYER_ACTION_LOG_MSG,VK_DBG_LAYER_ACTION_BREAK
khronos_validation.log_filename = $log
khronos_validation.report_flags = error,warn,perf
khronos_validation.enables = VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT
SETTINGS
export VK_LAYER_SETTINGS_PATH=$settings VK_INSTANCE_LAYERS=VK_LAYER_KHRONOS_validation
cargo=${CARGO:-cargo}

# 1. The canary: the staging copy's barrier left out must be reported.
install -m 0666 /dev/null "$log"
if "$cargo" test --release --locked -q -p dmafile --features validation-canary --test stream \
    staging_copy_path_matches >"$dir/canary.out" 2>&1; then
    cat "$dir/canary.out"
    fail "the canary build (a barrier left out) passed: the layer did not report it"
fi
hazard=$(grep -o 'SYNC-HAZARD-[A-Z-]*' "$log" | head -n1 || true)
[ -n "$hazard" ] || { cat "$dir/canary.out" "$log"; fail "the canary failed, but not with a synchronization hazard in the layer's log"; }
echo "validation: the canary build's missing barrier was reported ($hazard) and failed its test"

# 2. The suite, every message fatal.
install -m 0666 /dev/null "$log"
if ! "$cargo" test --release --locked --workspace --no-fail-fast >"$dir/suite.out" 2>&1; then
    grep -E '^test .* FAILED|panicked|signal' "$dir/suite.out" | head -40
    cat "$log"
    fail "the host suite failed under the validation layer"
fi
if [ -s "$log" ]; then
    cat "$log"
    fail "the validation layer reported messages"
fi
passed=$(grep -oE '[0-9]+ passed' "$dir/suite.out" | awk '{s += $1} END {print s}')
echo "validation: $passed host tests ran under VK_LAYER_KHRONOS_validation with synchronization validation: 0 messages"
