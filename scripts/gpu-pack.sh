#!/usr/bin/env bash
# Packs the CUDA binaries built here (build-gpu: test_cuda, bench_cuda, decode_timeline) into
# build-gpu-pack/bins.tar.xz for the GPU machine: three ~20 MB binaries exceed what one device
# call may carry, the xz archive is ~10 MB. scripts/gpu-check.sh unpacks it when its binary
# folder is empty. usage: scripts/gpu-pack.sh [BUILD_DIR]   (then carry build-gpu-pack)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
cp "$BUILD/tests/cuda/test_cuda" "$BUILD/cuda/bench_cuda" "$STAGE/"
[[ -x "$BUILD/cuda/decode_timeline" ]] && cp "$BUILD/cuda/decode_timeline" "$STAGE/"
mkdir -p build-gpu-pack
tar cf - -C "$STAGE" . | xz -1 -T2 >build-gpu-pack/bins.tar.xz
ls -l build-gpu-pack/bins.tar.xz
