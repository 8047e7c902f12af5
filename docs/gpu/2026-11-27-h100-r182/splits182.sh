#!/usr/bin/env bash
# r182: with tq4 tile pairs in blocks that have their SM alone (r180), batch 1 at 8 KV heads from
# 64k: the automatic split count (tq4 d = 128: 16, one block per SM; d = 64 and tq3/tq2: 33, two)
# against 16 splits, d = 64 and 128, alternated 3x. usage: splits182.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2 3; do for s in auto 16; do for ctx in 65536 131072; do for d in 64 128; do
  $B/new/bench_cuda --grid full --formats tq4,tq3,tq2 --batch 1 --head-dim $d --context $ctx $([ $s = auto ] || echo --splits $s) > /tmp/$R/ab/s$s-c$ctx-d$d-$k.md 2>&1
  echo "splits $s ctx $ctx d $d #$k rc $?"
done; done; done; done
$B/new/decode_timeline --graph --splits 16 1:65536 1:131072 > /tmp/$R/timeline-16.log 2>&1
grep -E "^batch|^SMs holding" /tmp/$R/timeline-16.log
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
tail -14 /tmp/$R/run.log
