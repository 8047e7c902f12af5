#!/usr/bin/env bash
# r189: batch 8 at one block per SM (2 splits: 8 x 8 heads x 2 = 128 blocks, which then take tq4's
# lone tile pairs and tq3's reserved pairs) against the automatic split count (4: two blocks per
# SM), d0cb8ea's bench_cuda, alternated 2x. usage: splits189.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-2}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in $(seq 1 $N); do for v in auto s2; do
  S=""; [ $v = s2 ] && S="--splits 2"
  for d in 128 64; do
    $B/bench_cuda --grid full --formats tq4,tq3,k8v4 --batch 8 --head-dim $d $S > /tmp/$R/ab/$v-d$d-$k.md 2>&1; echo "$v d$d #$k rc $?"
  done
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -30
