#!/usr/bin/env bash
# r219: tq4's first tile copies from the token count read before griddepcontrol.wait (r217's form,
# tq4 only; every other kernel's SASS is 81856ba's) (new, top level of the pack) against 81856ba
# (prev/). test_cuda (with the new StaleTokenCountsBeforeTheWaitAreChecked), memcheck / racecheck /
# synccheck on the decode tests, then the issue grid (tq4, tq3, tq2, k8v4) alternated N x and tq4 at
# d = 64 (every head layout and batch of the full grid) twice.
# usage: final219.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-4}
D=$OUT/$R; mkdir -p $D/ab
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
F='Cuda.StaleTokenCountsBeforeTheWaitAreChecked:Cuda.AwkwardLengthsAndBatch17:Cuda.RingWrapWindowSoftcapSinks:Cuda.TwoTilesPerIterationIgnoreStaleStages:Cuda.AppendStepAndGraphReplayThenDecode:Cuda.BatchEightTakesLonePairsAtOneBlockPerSm'
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/test_cuda --gtest_color=no > $D/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure" $D/test.log | head
for tool in memcheck racecheck synccheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > $D/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $D/$tool.log | head -3
done
date -u
for k in $(seq 1 $N); do for bin in prev new; do
  [[ $bin == new ]] && X=$B || X=$B/prev
  $X/bench_cuda --grid issue --formats tq4,tq3,tq2,k8v4 > $D/ab/$bin-issue-$k.md 2>&1; echo "$bin issue #$k rc $?"
done; date -u; done
for k in 1 2; do for bin in prev new; do
  [[ $bin == new ]] && X=$B || X=$B/prev
  $X/bench_cuda --grid full --formats tq4 --head-dim 64 > $D/ab/$bin-d64-$k.md 2>&1; echo "$bin d64 #$k rc $?"
done; date -u; done
} > $D/run.log 2>&1
tar czf $OUT/$R-ab.tgz -C $D ab && rm -rf $D/ab
cat $D/run.log
