#!/usr/bin/env bash
# r143: d = 64 at batch 128 (the grid's 9/3-head regression of r135): the automatic split count (1 for 9/3: 384
# blocks, 1.45 waves of 264 slots) against --splits 2 and 3, tq4/k8v8/tq3/tq2, r142's new binary, twice.
# usage: splits143.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry/new
{
date -u
for k in 1 2; do for s in auto 2 3; do
  args=(); [[ $s != auto ]] && args=(--splits $s)
  $B/bench_cuda --grid full --head-dim 64 --batch 128 --formats tq4,tq8,tq3,tq2 "${args[@]}" > /tmp/$R/s$s-$k.md 2>&1; echo "splits $s #$k rc $?"
  grep -E "^\| (tq4|tq8|tq3|tq2) " /tmp/$R/s$s-$k.md | awk -F'|' '{printf "  %s d%s %s b%s %s: %s/%s\n", $2, $4+0, $5, $6+0, $7+0, $9+0, $10+0}'
done; done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -5
