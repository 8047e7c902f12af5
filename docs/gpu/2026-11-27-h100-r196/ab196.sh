#!/usr/bin/env bash
# r196: the split rule's lone-pairs grid wherever it fills the SMs as fully as two blocks per SM
# fill the slots (batches 5 and 7 at 32/8 heads now take it too), against f7e1eb2's rule (r195's
# bench_cuda: at most 1/32 of the SMs idle); tq4 d = 128, batches 1-8, alternated 3x; tests and
# memcheck/racecheck on the rule's test first. usage: ab196.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
for tool in memcheck racecheck; do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter='Cuda.BatchEightTakesLonePairsAtOneBlockPerSm' > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for k in $(seq 1 $N); do for bin in prev new; do
  $B/$bin/bench_cuda --grid batches --formats tq4 > /tmp/$R/ab/$bin-$k.md 2>&1; echo "$bin #$k rc $?"
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | tail -16
