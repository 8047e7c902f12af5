#!/usr/bin/env bash
# Builds tqkv and runs every test. Usage: scripts/test.sh [--sanitize]
#   --sanitize: a separate Debug build under AddressSanitizer + UndefinedBehaviorSanitizer
#               (CPU code only; the CUDA folder is compiled by the normal build).
# GPU tests skip with a visible line when no GPU is present.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [[ ${1:-} == --sanitize ]]; then
  build="$here/build-asan"
  bash "$here/scripts/build.sh" "$build" -DCMAKE_BUILD_TYPE=Debug -DTQKV_SANITIZE=ON \
    -DTQKV_CUDA=OFF -DTQKV_BENCH=OFF
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
else
  build="$here/build"
  bash "$here/scripts/build.sh" "$build" -DCMAKE_BUILD_TYPE=Release ${TQKV_CMAKE_ARGS:-}
fi
ctest --test-dir "$build" --output-on-failure -j "$(nproc 2>/dev/null || echo 2)"
