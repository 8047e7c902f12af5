#!/usr/bin/env bash
# r108 (r107 ran four identical binaries: ninja had rebuilt the macro-less object): timing-only trial (wrong results): tq4 d = 128 decode without the score mmas (NO_S), without the value
# lookups and mmas (NO_V), without both (NO_SV), against HEAD (old); graph times and ncu's SM clock at b8 64k.
# usage: arith.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version --format=csv
for k in 1 2; do for v in old NO_S NO_V NO_SV; do
  $B/$v/bench_cuda --grid issue --batch 8 --head-dim 128 --formats tq4 > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"
  grep -E "^\| tq4 " /tmp/$R/ab/$v-$k.md | awk -F'|' '{printf "  b%s %s: %s/%s\n", $6+0, $7+0, $9+0, $10+0}'
done; done
for v in old NO_S NO_V NO_SV; do
  ncu --clock-control none --section SpeedOfLight -k regex:decode_mma_kernel --launch-skip 3 --launch-count 2 $B/$v/bench_cuda --grid issue --batch 8 --context 65536 --head-dim 128 --formats tq4 --reps 5 > /tmp/$R/ncu-$v.txt 2>&1
  echo "== ncu $v"; grep -E "SM Frequency|DRAM Throughput|Duration|Compute \(SM\)" /tmp/$R/ncu-$v.txt
done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
