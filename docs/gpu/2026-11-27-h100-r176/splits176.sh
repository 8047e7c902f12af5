#!/usr/bin/env bash
# r176: batch-1 split counts at 4k and 16k (d = 128, 32/8 heads; tq4, tq3, tq2), 1a1d348's bench_cuda:
# the automatic choice (16 splits) against 4, 8, 12, 24, alternated 3x. usage: splits176.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/sw $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2 3; do for s in 0 4 8 12 24; do for ctx in 4096 16384; do
  $B/new/bench_cuda --grid issue --formats tq4,tq3,tq2 --batch 1 --context $ctx --splits $s > /tmp/$R/sw/s$s-c$ctx-$k.md 2>&1
  echo "splits $s ctx $ctx #$k rc $?: $(grep -E '^\| (tq4|tq3|tq2) ' /tmp/$R/sw/s$s-c$ctx-$k.md | awk -F'|' '{printf "%s %s/%s  ", $2, $9+0, $10+0}')"
done; done; done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
