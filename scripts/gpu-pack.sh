#!/usr/bin/env bash
# Packs the CUDA binaries built here (build-gpu: test_cuda, bench_cuda, decode_timeline) into
# build-gpu-pack/bins.tar.xz for the GPU machine, which one device call may carry (64 MiB with the
# tree). The binaries are ~40 MB each and hold the same device code, so xz gets a dictionary that
# spans them: ~2.5 MB per extra binary instead of ~5 (r216: six binaries, 27.7 MB with the default
# dictionary, 7.9 MB with 256 MiB; unpacking takes 256 MiB of memory). scripts/gpu-check.sh unpacks
# it when its binary folder is empty.
# usage: scripts/gpu-pack.sh [BUILD_DIR] [NAME=DIR ...]   (then carry build-gpu-pack)
#   each NAME=DIR adds the binaries in DIR (e.g. another commit's, for an A/B run) as NAME/.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
cp "$BUILD/tests/cuda/test_cuda" "$BUILD/cuda/bench_cuda" "$STAGE/"
[[ -x "$BUILD/cuda/decode_timeline" ]] && cp "$BUILD/cuda/decode_timeline" "$STAGE/"
for extra in "${@:2}"; do
  name=${extra%%=*} dir=${extra#*=}
  [[ "$name" != "$extra" && -d "$dir" ]] || { echo "gpu-pack.sh: expected NAME=DIR, got '$extra'" >&2; exit 2; }
  mkdir -p "$STAGE/$name" && cp "$dir"/* "$STAGE/$name/"
done
mkdir -p build-gpu-pack
tar cf - -C "$STAGE" . | xz -6 --lzma2=preset=6,dict=256MiB -T1 >build-gpu-pack/bins.tar.xz
ls -l build-gpu-pack/bins.tar.xz
