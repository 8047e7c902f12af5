#!/usr/bin/env bash
# r225 (trial): the decode kernel lets the next grid launch at its entry (griddepcontrol.launch_dependents
# first thing) instead of after its loop (new, top
# level of the pack) against 71b4f21 (prev/). test_cuda, memcheck / racecheck on the decode tests,
# then the issue grid (all its formats) and the tq4 batch grid alternated N x.
# usage: trial225.sh OUTDIR RUN [N]
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
  $X/bench_cuda --grid issue > $D/ab/$bin-issue-$k.md 2>&1; echo "$bin issue #$k rc $?"
  $X/bench_cuda --grid batches --formats tq4 > $D/ab/$bin-batches-$k.md 2>&1; echo "$bin batches #$k rc $?"
done; date -u; done
} > $D/run.log 2>&1
tar czf $OUT/$R-ab.tgz -C $D ab && rm -rf $D/ab
cat $D/run.log
