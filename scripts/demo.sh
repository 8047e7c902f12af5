#!/usr/bin/env bash
# Builds tqkv (Release) and runs the main job: `tqkv demo` on its embedded default.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/build.sh" "$here/build" -DCMAKE_BUILD_TYPE=Release
"$here/build/tools/tqkv" demo "$@"
