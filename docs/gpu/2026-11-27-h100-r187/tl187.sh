#!/usr/bin/env bash
# r187: HEAD (d0cb8ea + decode_timeline --raw) on the GPU: its tests (host-only changes since r186),
# then batch-1 64k graph timelines with every block's SM and loop times, three processes for tq4,
# one for tq3, and one single launch: is a slow loop the SM's (the same SM slow in every step) or
# its block's (range, head)? usage: tl187.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
F='Cuda.TwoTilesPerIteration*:Cuda.AutoAndForcedSplitsMatchReference'
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/memcheck.log 2>&1
echo "memcheck rc $?"; grep -E "ERROR SUMMARY|PASSED|FAILED" /tmp/$R/memcheck.log | head -3
date -u
for k in 1 2 3; do
  $B/decode_timeline --graph --raw 1:65536 > /tmp/$R/tl-tq4-graph-$k.log 2>&1; echo "tq4 graph #$k rc $?"
  grep -E "^batch" /tmp/$R/tl-tq4-graph-$k.log
done
$B/decode_timeline --raw 1:65536 > /tmp/$R/tl-tq4-single.log 2>&1; echo "tq4 single rc $?"
$B/decode_timeline --graph --raw --format tq3 1:65536 > /tmp/$R/tl-tq3-graph.log 2>&1; echo "tq3 graph rc $?"
grep -E "^batch" /tmp/$R/tl-tq3-graph.log
$B/bench_cuda --grid full --formats tq4,tq3 --batch 1 --head-dim 128 > /tmp/$R/bench-b1.md 2>&1; echo "bench rc $?"
date -u
} > /tmp/$R/run.log 2>&1
cp /tmp/$R/*.log /tmp/$R/*.md $OUT/$R/ 2>/dev/null
cat /tmp/$R/run.log
