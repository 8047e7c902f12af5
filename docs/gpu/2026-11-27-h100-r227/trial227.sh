#!/usr/bin/env bash
# r227 (trial): tq2 at d = 80-128 takes tile pairs in blocks that have their SM alone (as tq4s lone pairs),
# and the batch rule that gives tq4 one block per SM applies to tq2 too (new, top
# level of the pack) against 71b4f21 (prev/). test_cuda, memcheck / racecheck on the decode tests,
# then the tq2 issue grid and the tq2 batch grid alternated N x.
# usage: trial227.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-5}
D=$OUT/$R; mkdir -p $D/ab
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
F='Cuda.StaleTokenCountsBeforeTheWaitAreChecked:Cuda.AwkwardLengthsAndBatch17:Cuda.RingWrapWindowSoftcapSinks:Cuda.TwoTilesPerIterationIgnoreStaleStages:Cuda.BatchEightTakesLonePairsAtOneBlockPerSm'
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 150 $B/test_cuda --gtest_color=no > $D/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure" $D/test.log | head -20
for tool in memcheck racecheck; do
  timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > $D/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $D/$tool.log | head -4
done
date -u
for k in $(seq 1 $N); do for bin in prev new; do
  [[ $bin == new ]] && X=$B || X=$B/prev
  $X/bench_cuda --grid issue --formats tq2 > $D/ab/$bin-issue-$k.md 2>&1; echo "$bin issue #$k rc $?"
  $X/bench_cuda --grid batches --formats tq2 > $D/ab/$bin-batches-$k.md 2>&1; echo "$bin batches #$k rc $?"
done; date -u; done
} > $D/run.log 2>&1
tar czf $OUT/$R-ab.tgz -C $D ab && rm -rf $D/ab
cat $D/run.log
