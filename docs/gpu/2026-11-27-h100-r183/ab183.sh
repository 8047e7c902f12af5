#!/usr/bin/env bash
# r183: the committed form of r180-r182: tq4 tile pairs in blocks that have their SM alone (d <= 128,
# grids of at most one block per SM, if the device has the shared memory), and the split rule's
# one block per SM wherever that gives every worker >= 32 tiles of pairs (tq4 d = 64 and 80/96 from
# 64k at 8 KV heads), against d709df4's bench_cuda. Tests (the stale-stage test now with tq4) and
# sanitizers first, then batch-1 rows alternated 3x. usage: ab183.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test-new.log 2>&1; echo "test new rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new.log | head
F='Cuda.TwoTilesPerIteration*:Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.RingWrapWindowSoftcapSinks:Cuda.CallerCodebookMatchesReference'
for tool in memcheck racecheck synccheck; do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
date -u
for k in $(seq 1 $N); do for bin in prev new; do
  for d in 128 64; do
    $B/$bin/bench_cuda --grid full --formats tq4,tq3,k8v4 --batch 1 --head-dim $d > /tmp/$R/ab/$bin-d$d-$k.md 2>&1; echo "$bin d$d #$k rc $?"
  done
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -30
