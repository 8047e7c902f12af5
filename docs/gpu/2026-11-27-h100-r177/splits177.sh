#!/usr/bin/env bash
# r177: batch-1 split counts at 16k and 64k (d = 128, 32/8 heads), d709df4's bench_cuda: the
# automatic choice against 16, 24, 32 and 33 splits (33 x 8 KV heads = 264 blocks = two per SM),
# alternated 3x. tq4/k8v4 take 16 automatically (one block per SM), tq3/tq2 33 at 64k.
# usage: splits177.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/sw $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2 3; do for s in auto 16 24 32 33; do for ctx in 16384 65536; do
  $B/new/bench_cuda --grid issue --formats tq4,k8v4,tq3 --batch 1 --context $ctx $([ $s = auto ] || echo --splits $s) > /tmp/$R/sw/s$s-c$ctx-$k.md 2>&1
  echo "splits $s ctx $ctx #$k rc $?: $(grep -E '^\| (tq4|k8v4|tq3|tq2) ' /tmp/$R/sw/s$s-c$ctx-$k.md | awk -F'|' '{printf "%s %s/%s  ", $2, $9+0, $10+0}')"
done; done; done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
