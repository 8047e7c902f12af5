#!/usr/bin/env bash
# GPU check of the CUDA backend, in one invocation on the GPU machine:
#   1. the test suite (test_cuda: every GPU kernel against the CPU reference);
#   2. compute-sanitizer memcheck and racecheck on a reduced set of tests;
#   3. the decode benchmark (bench_cuda) and PyTorch SDPA with fp16 K/V as the peer, same run
#      (scripts/gpu-bench/run.sh into OUTDIR/bench; report.py turns it into bench/results/);
#   4. the split-K skeleton of a step at the same shapes (bench_cuda --floors: what the card does
#      with the step's bytes without arithmetic), and a warm-L2 run with the phase timelines (one
#      launch, and the steps of a graph replay).
# Logs go to OUTDIR; a summary is printed last.
#
# usage: scripts/gpu-check.sh OUTDIR [BINDIR]
#   BINDIR holds prebuilt test_cuda and bench_cuda (default: build-gpu-carry); if it has none,
#   build-gpu-pack/bins.tar.xz (scripts/gpu-pack.sh) is unpacked into it. Without either, and
#   with nvcc and cmake present, it builds into build-cuda first.
set -uo pipefail
OUT=${1:?usage: scripts/gpu-check.sh OUTDIR [BINDIR]}
BIN=${2:-build-gpu-carry}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

if [[ ! -x "$BIN/test_cuda" && -f build-gpu-pack/bins.tar.xz ]]; then
  echo "== unpacking build-gpu-pack/bins.tar.xz (scripts/gpu-pack.sh) into $BIN"
  mkdir -p "$BIN" && tar xJf build-gpu-pack/bins.tar.xz -C "$BIN"
fi
if [[ ! -x "$BIN/test_cuda" ]]; then
  echo "== building into build-cuda (no binaries in $BIN)"
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release >"$OUT/build.log" 2>&1 &&
    cmake --build build-cuda --target test_cuda bench_cuda decode_timeline >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  BIN=build-cuda
  [[ -x build-cuda/tests/cuda/test_cuda ]] &&
    cp build-cuda/tests/cuda/test_cuda build-cuda/cuda/bench_cuda build-cuda/cuda/decode_timeline build-cuda/
fi

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } >"$OUT/device.txt" 2>&1
declare -A result

echo "== tests"
"$BIN/test_cuda" --gtest_color=no >"$OUT/test.log" 2>&1
result[tests]=$?
tail -3 "$OUT/test.log"

# A reduced set: every kernel (both append encoders and commit, decode with 1 and many splits and the in-kernel
# split merge, one and two warps per tile, tile pairs over stale stages and at batch 8), ring wrap, masks, a reused caller workspace.
SANITIZE_FILTER='Cuda.FullyMaskedSplitsStayFinite:Cuda.AutoAndForcedSplitsMatchReference:Cuda.CallerWorkspaceIsReusedAcrossCallsAndShapes:Cuda.RingWrapWindowSoftcapSinks:Cuda.AppendStepAndGraphReplayThenDecode:Cuda.AppendAwkwardChunksAndUnalignedInputs:Cuda.AppendNonFiniteKeepsRowsAndOverflowIsNotNonFinite:Cuda.AppendLauncherEveryHeadDimShape:Cuda.AppendTensorCoreRotationEveryPairAndChunk:Cuda.EmptySequenceGivesZeros:Cuda.OutputTypesScaleAndLargeGroups:Cuda.CallerCodebookMatchesReference:Cuda.TwoTilesPerIterationIgnoreStaleStages:Cuda.BatchEightTakesLonePairsAtOneBlockPerSm'
for tool in memcheck racecheck; do
  echo "== compute-sanitizer $tool"
  timeout "${SANITIZER_TIMEOUT:-200}" compute-sanitizer --tool "$tool" --error-exitcode 3 "$BIN/test_cuda" --gtest_color=no \
    --gtest_filter="$SANITIZE_FILTER" >"$OUT/$tool.log" 2>&1
  result[$tool]=$?
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$OUT/$tool.log" | tail -3
done

echo "== GPU benchmark: bench_cuda and the PyTorch SDPA peer (scripts/gpu-bench/run.sh)"
# Issue 6's target shapes by default (BENCH_GRID=full: the whole grid, minutes), plus append.
GRID=${BENCH_GRID:-issue} scripts/gpu-bench/run.sh "$OUT/bench" "$BIN" --append
result[bench]=$?
echo "== the split-K skeleton of a decode step: the same bytes, partials and merge, no arithmetic (bench_cuda --floors)"
"$BIN/bench_cuda" --floors --formats tq4 >"$OUT/floors.md" 2>&1
result[floors]=$?
echo "== bench_cuda with warm L2 (one copy), and where a decode step's time goes (decode_timeline: one launch, then"
echo "   the steps of a graph replay)"
{ "$BIN/bench_cuda" --grid quick --formats tq4 --copies 1 &&
  if [[ -x "$BIN/decode_timeline" ]]; then "$BIN/decode_timeline" && "$BIN/decode_timeline" --graph 1:4096 8:16384; fi; } \
  >"$OUT/bench-warm.md" 2>&1
result[warm]=$?

for f in bench/tqkv.md bench/sdpa.md floors.md bench-warm.md; do
  echo
  cat "$OUT/$f"
done
echo
echo "== summary (exit codes: 0 = clean)"
status=0
for k in tests memcheck racecheck bench floors warm; do
  echo "$k: ${result[$k]}"
  [[ ${result[$k]} -ne 0 ]] && status=1
done
exit $status
