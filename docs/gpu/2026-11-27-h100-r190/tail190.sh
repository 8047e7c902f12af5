#!/usr/bin/env bash
# r190: batch 8 with 2 splits (one block per SM, tq4's lone pairs) with and without r188's shared
# tail (trial binary, TQKV_TAIL_EIGHTHS), against d0cb8ea's bench_cuda at the automatic split count
# and at 2 splits; tq4, d = 128 and 64, alternated 2x. usage: tail190.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-2}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in $(seq 1 $N); do for v in auto s2 t7 t6 t0; do
  bin=new; S="--splits 2"; E=${v#t}
  case $v in auto) bin=prev; S=""; E=0;; s2) bin=prev; E=0;; esac
  for d in 128 64; do
    TQKV_TAIL_EIGHTHS=$E $B/$bin/bench_cuda --grid full --formats tq4 --batch 8 --head-dim $d $S > /tmp/$R/ab/$v-d$d-$k.md 2>&1; echo "$v d$d #$k rc $?"
  done
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -30
