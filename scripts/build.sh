#!/usr/bin/env bash
# Configures and builds tqkv. Usage: scripts/build.sh BUILD_DIR [extra cmake args...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: scripts/build.sh BUILD_DIR [cmake args]}
shift
bash "$here/scripts/setup.sh"
cmake -S "$here" -B "$build" -G Ninja "$@" >"$build.configure.log" 2>&1 || {
  cat "$build.configure.log"; exit 1; }
jobs=$(nproc 2>/dev/null || echo 2)
cmake --build "$build" -j "$jobs"
