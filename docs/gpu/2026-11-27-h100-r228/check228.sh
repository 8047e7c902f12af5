#!/usr/bin/env bash
# r228: tq2 at d = 128 takes lone tile pairs (two tiles per iteration in blocks that have their SM
# alone) in grids of one block per SM (new, top level of the pack) against 71b4f21 (prev/).
# test_cuda, memcheck / racecheck on the decode tests, then tq2's d = 128 rows of the full grid
# (32/8 and 32/32 heads, batch 1-128, 1k-128k) and the tq2 batch grid, alternated N x.
# usage: check228.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-2}
D=$OUT/$R; mkdir -p $D/ab
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
F='Cuda.AwkwardLengthsAndBatch17:Cuda.RingWrapWindowSoftcapSinks:Cuda.TwoTilesPerIterationIgnoreStaleStages:Cuda.FreshRandomShapes'
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 200 $B/test_cuda --gtest_color=no > $D/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure" $D/test.log | head -20
for tool in memcheck racecheck; do
  timeout 200 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > $D/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $D/$tool.log | head -4
done
date -u
for k in $(seq 1 $N); do for bin in prev new; do
  [[ $bin == new ]] && X=$B || X=$B/prev
  $X/bench_cuda --grid full --formats tq2 --head-dim 128 > $D/ab/$bin-full-$k.md 2>&1; echo "$bin full #$k rc $?"
  $X/bench_cuda --grid batches --formats tq2 > $D/ab/$bin-batches-$k.md 2>&1; echo "$bin batches #$k rc $?"
done; date -u; done
} > $D/run.log 2>&1
tar czf $OUT/$R-ab.tgz -C $D ab && rm -rf $D/ab
cat $D/run.log
