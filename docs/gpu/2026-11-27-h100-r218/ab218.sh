#!/usr/bin/env bash
# r218 (timing trial, wrong results): the decode kernels copy and read a 16-bit scale per vector (the
# upper half of an f32's bits; here from the first half of the f32 arrays, made finite), i.e. 132
# instead of 136 bytes per position and KV head at tq4 d = 128: what a 16-bit scale format would
# buy (tq2: 68 instead of 72). bf16 = the trial, prev = 81856ba's kernels (HEAD 3981a45). The issue grid
# for tq4 and tq2 alternated N x.
# usage: ab218.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-5}
D=$OUT/$R; mkdir -p $D/ab
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in $(seq 1 $N); do for bin in prev bf16; do
  $B/$bin/bench_cuda --grid issue --formats tq4,tq2 > $D/ab/$bin-issue-$k.md 2>&1; echo "$bin issue #$k rc $?"
done; date -u; done
} > $D/run.log 2>&1
tar czf $OUT/$R-ab.tgz -C $D ab && rm -rf $D/ab
cat $D/run.log
