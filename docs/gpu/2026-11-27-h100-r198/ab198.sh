#!/usr/bin/env bash
# r198 (trial): each decode block prefetches the first P positions of its split into L2 before
# griddepcontrol.wait (token count read relaxed, possibly stale), P from TQKV_PREFETCH; tq4 issue
# grid, P = 0, 256, 1024, 4096 alternated. Tests with P = 1024 first. usage: ab198.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-2}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
TQKV_PREFETCH=1024 timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
for k in $(seq 1 $N); do for p in 0 256 1024 4096; do
  TQKV_PREFETCH=$p $B/new/bench_cuda --grid issue --formats tq4 > /tmp/$R/ab/p$p-$k.md 2>&1; echo "p$p #$k rc $?"
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | tail -12
