#!/usr/bin/env bash
# r148: tq3 b8 64k's graph step in the issue grid (r144 199.7 µs) against alone (r147: 180.5-182.5): the grid's
# tq3 rows alone, the four-format grid, the f16-first gpu-check grid (--formats all of run.sh), then tq3 alone.
# Device code of 3189cc1. usage: order148.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
row() { grep -E "^\| tq3 +\| mma +\| +128 \| 32/8 +\| +8 \| +65536 " "$1" | awk -F'|' -v n="$2" '{printf "%s: tq3 b8 64k single %s graph %s (copies %s)\n", n, $9+0, $10+0, $16+0}'; }
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2; do
  $B/bench_cuda --grid issue --formats tq3 > /tmp/$R/tq3-$k.md 2>&1; row /tmp/$R/tq3-$k.md "tq3 rows alone #$k"
  $B/bench_cuda --grid issue --formats tq4,k8v4,tq3,tq2 > /tmp/$R/four-$k.md 2>&1; row /tmp/$R/four-$k.md "tq4,k8v4,tq3,tq2 #$k"
  $B/bench_cuda --grid issue > /tmp/$R/all-$k.md 2>&1; row /tmp/$R/all-$k.md "every format #$k"
done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
