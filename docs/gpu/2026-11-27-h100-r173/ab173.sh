#!/usr/bin/env bash
# r173: tile pairs for tq2 at d = 64, 96, 128 (the query and its fragments in the second copy group
# where the usual layout would not fit two blocks per SM), against cf03472's bench_cuda.
# Tests, sanitizers, tq2 rows alternated. usage: ab173.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
if [[ ${SKIP_TESTS:-0} == 0 ]]; then
  timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test-new.log 2>&1; echo "test new rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new.log | head
  F='Cuda.TwoTilesPerIteration*:Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.EmptySequenceGivesZeros:Cuda.RingWrapWindowSoftcapSinks:Cuda.AppendStepAndGraphReplayThenDecode:Cuda.CallerCodebookMatchesReference:Cuda.PartialWaveTakesMoreSplitsAndMatchesReference'
  for tool in memcheck racecheck synccheck; do
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
    echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
  done
fi
date -u
for k in $(seq 1 $N); do for bin in prev new; do
  $B/$bin/bench_cuda --grid issue --formats tq2 --head-dim 128 > /tmp/$R/ab/$bin-$k.md 2>&1; echo "$bin #$k rc $?"
  $B/$bin/bench_cuda --grid full --formats tq2 --head-dim 64 --batch 8 > /tmp/$R/ab/$bin-d64-$k.md 2>&1; echo "$bin d64 #$k rc $?"
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -60
