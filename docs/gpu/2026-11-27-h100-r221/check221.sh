#!/usr/bin/env bash
# r221: the final code (r220's kernels; StaleTokenCountsBeforeTheWaitAreChecked now probes whether
# programmatic launches overlap here, since compute-sanitizer serialises kernels and r220's sanitizer
# runs failed only on the early-start check). test_cuda, then memcheck / racecheck / synccheck on
# the decode tests. (Run twice: the first time the probe's first launch waited for its module, r221a.)
# usage: check221.sh OUTDIR RUN
set -u
OUT=$1; R=$2
D=$OUT/$R; mkdir -p $D
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
F='Cuda.StaleTokenCountsBeforeTheWaitAreChecked:Cuda.AwkwardLengthsAndBatch17:Cuda.RingWrapWindowSoftcapSinks:Cuda.TwoTilesPerIterationIgnoreStaleStages:Cuda.AppendStepAndGraphReplayThenDecode:Cuda.BatchEightTakesLonePairsAtOneBlockPerSm:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite'
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/test_cuda --gtest_color=no > $D/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure|NOTE" $D/test.log | head
for tool in memcheck racecheck synccheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > $D/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $D/$tool.log | head -3; grep -c NOTE $D/$tool.log
done
date -u
} > $D/run.log 2>&1
cat $D/run.log
