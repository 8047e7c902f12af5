#!/usr/bin/env bash
# r191: the split rule gives tq4 at d = 128 one block per SM with its lone pairs below 16 splits
# too (batch 8 at 32/8 heads: 2 splits; batch 1 at 32/32: 4), against d0cb8ea's bench_cuda.
# Tests and memcheck first, then tq4 d = 128 rows at batch 1 and 8, alternated 3x.
# usage: ab191.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test-new.log 2>&1; echo "test new rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new.log | head
F='Cuda.BatchEightTakesLonePairsAtOneBlockPerSm:Cuda.AutoAndForcedSplitsMatchReference'
for tool in memcheck racecheck; do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
date -u
for k in $(seq 1 $N); do for bin in prev new; do
  for b in 1 8; do
    $B/$bin/bench_cuda --grid full --formats tq4,k8v4 --batch $b --head-dim 128 > /tmp/$R/ab/$bin-b$b-$k.md 2>&1; echo "$bin b$b #$k rc $?"
  done
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -40
