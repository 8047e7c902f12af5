#!/usr/bin/env bash
# r223: the review commit (one %globaltimer helper, the late-count test kernel on allow_next_grid, the
# overlap probe once per process; decode SASS identical to r222's): test_cuda, then memcheck and
# racecheck on the late-count test and two decode tests. usage: check223.sh OUTDIR RUN
set -u
OUT=$1; R=$2
D=$OUT/$R; mkdir -p $D
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
F='Cuda.StaleTokenCountsBeforeTheWaitAreChecked:Cuda.AwkwardLengthsAndBatch17:Cuda.RingWrapWindowSoftcapSinks'
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/test_cuda --gtest_color=no > $D/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure|NOTE" $D/test.log | head
for tool in memcheck racecheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > $D/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $D/$tool.log | head -3; grep -c NOTE $D/$tool.log
done
date -u
} > $D/run.log 2>&1
cat $D/run.log
