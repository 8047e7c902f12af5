#!/usr/bin/env bash
# r195: the split rule at every batch from 2 to 8 (tq4, d = 128, 32/8 heads; bench_cuda --grid
# batches): the automatic count against the other choice, alternated 3x. Batches 2, 4, 8 take one
# block per SM with lone pairs (8, 4, 2 splits: 128 blocks) against the old rule's two blocks per
# SM (16, 8, 4); batches 3, 5, 6, 7 keep the old count (11, 6, 5, 4: their one-per-SM grid of 120,
# 120, 96, 112 blocks leaves more than 1/32 of the SMs idle) against one block per SM forced
# (5, 3, 2, 2). Tests first (the batch-8 rule's test). usage: batches195.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
declare -A OTHER=([2]=16 [3]=5 [4]=8 [5]=3 [6]=2 [7]=2 [8]=4)
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
for k in $(seq 1 $N); do for b in 2 3 4 5 6 7 8; do
  $B/bench_cuda --grid batches --formats tq4 --batch $b > /tmp/$R/ab/auto-b$b-$k.md 2>&1
  $B/bench_cuda --grid batches --formats tq4 --batch $b --splits ${OTHER[$b]} > /tmp/$R/ab/other-b$b-$k.md 2>&1
  echo "b$b #$k done"
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | tail -12
