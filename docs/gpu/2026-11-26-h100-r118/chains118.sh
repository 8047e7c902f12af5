#!/usr/bin/env bash
# r118 (trial): two score chains (even and odd k steps) at d = 128 for tq2, tq3 and tq4 (c2) against 916ca04 (base),
# issue grid at d = 128, alternated 2x.
# usage: chains118.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2; do for v in base c2; do
  $B/$v/bench_cuda --grid issue --head-dim 128 --formats tq2,tq3,tq4 > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"
  grep -E "^\| (tq3|tq2|tq4) " /tmp/$R/ab/$v-$k.md | awk -F'|' '{printf "  %s d%s b%s %s: %s/%s\n", $2, $4+0, $6+0, $7+0, $9+0, $10+0}'
done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
