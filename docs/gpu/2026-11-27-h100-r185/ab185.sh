#!/usr/bin/env bash
# r185: tile pairs in grids of at most one block per SM reserve more than half the SM's shared
# memory (DecodeInstance::alone_smem), so that no graph step lands two blocks on an SM (r179), and
# the split rule gives tq3 at d <= 128 one block per SM from 64k (8 KV heads) as it does tq4;
# against 0ad6fb6's bench_cuda. Tests and sanitizers first, then batch-1 rows alternated, then
# graph timelines of tq3 b1 64k/128k. usage: ab185.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test-new.log 2>&1; echo "test new rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new.log | head
F='Cuda.TwoTilesPerIteration*:Cuda.AutoAndForcedSplitsMatchReference:Cuda.RingWrapWindowSoftcapSinks'
for tool in memcheck racecheck; do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
date -u
for k in $(seq 1 $N); do for bin in prev new; do
  for d in 128 64; do
    $B/$bin/bench_cuda --grid full --formats tq3,tq2,tq4 --batch 1 --head-dim $d > /tmp/$R/ab/$bin-d$d-$k.md 2>&1; echo "$bin d$d #$k rc $?"
  done
done; date -u; done
$B/new/decode_timeline --graph --format tq3 1:65536 1:131072 > /tmp/$R/timeline-tq3.log 2>&1
grep -E "^format|^batch|^SMs holding" /tmp/$R/timeline-tq3.log
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -50
