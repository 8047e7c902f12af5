#!/usr/bin/env bash
# r178: batch 1 from 64k, d = 64 and 128: one block per SM (16 splits for 8 KV heads, 44 for 3)
# against two (33 / 88 splits) and the automatic choice, every quantized pair, d709df4's
# bench_cuda, alternated 3x. r177 found tq3 d = 128 64k 32.4 -> 29.8 us with 16 splits instead of
# the automatic 33. usage: splits178.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/sw $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2 3; do for s in auto 16 33 44 88; do for ctx in 65536 131072; do for d in 64 128; do
  $B/new/bench_cuda --grid full --formats tq4,k8v4,tq3,tq2,tq8 --batch 1 --head-dim $d --context $ctx $([ $s = auto ] || echo --splits $s) > /tmp/$R/sw/s$s-c$ctx-d$d-$k.md 2>&1
  echo "splits $s ctx $ctx d $d #$k rc $?"
  grep -E '^\| (tq4|k8v4|tq3|tq2|tq8) ' /tmp/$R/sw/s$s-c$ctx-d$d-$k.md | awk -F'|' -v s=$s -v k=$k '{printf "ROW s=%s k=%s |%s|%s|%s|%s| %s/%s\n", s, k, $2, $4, $5, $7, $9+0, $10+0}'
done; done; done; done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
grep -v ROW /tmp/$R/run.log | tail -3; grep -c ROW /tmp/$R/run.log
