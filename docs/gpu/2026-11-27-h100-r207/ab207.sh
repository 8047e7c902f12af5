#!/usr/bin/env bash
# r207 (trial): an L2 prefetch-size hint on the decode kernel's cp.async copies (keys, values, scales):
# cp.async.cg/.ca.shared.global.L2::128B (l2_128) or .L2::256B (l2_256) against none (base: HEAD), tq4 pair
# object only (l2-prefetch-probe.patch's TQKV_PROBE_L2, compiled into decode_tq4_tq4.cu.o), issue grid,
# alternated N x. usage: ab207.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-4}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in $(seq 1 $N); do for bin in base l2_128 l2_256; do
  $B/$bin/bench_cuda --grid issue --formats tq4 > /tmp/$R/ab/$bin-$k.md 2>&1; echo "$bin #$k rc $?"
done; date -u; done
python3 docs/gpu/2026-11-27-h100-r191/ab_medians.py /tmp/$R base,l2_128,l2_256
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | tail -20
