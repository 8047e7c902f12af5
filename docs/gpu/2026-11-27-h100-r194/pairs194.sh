#!/usr/bin/env bash
# r194: tile pairs from fewer tiles per worker at batch 1 (trial binary: TQKV_PAIR_MIN_TILES, the
# rule's 8 by default): at 4k a worker of 16 splits has 2 tiles, which pairs would compute as one
# iteration of two interleaved chains. Batch-1 rows of tq4/tq3/tq2, d = 128 and 64, thresholds 8
# (today), 4 and 2, alternated 3x. usage: pairs194.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in $(seq 1 $N); do for v in m8 m4 m2; do
  for d in 128 64; do
    TQKV_PAIR_MIN_TILES=${v#m} $B/bench_cuda --grid full --formats tq4,tq3,tq2 --batch 1 --head-dim $d > /tmp/$R/ab/$v-d$d-$k.md 2>&1; echo "$v d$d #$k rc $?"
  done
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -30
