#!/usr/bin/env bash
# r106: does the skeleton's streaming depend on the SM clock? ncu SpeedOfLight of the split-K skeleton
# (first 300 launches of --floors at b8 64k tq4) and of the decode kernel, at base clocks (ncu's default).
# usage: clk.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
S="--batch 8 --context 65536 --head-dim 128 --formats tq4"
{
nvidia-smi --query-gpu=name,driver_version --format=csv
ncu --clock-control base --section SpeedOfLight -k regex:decode_mma_kernel --launch-skip 3 --launch-count 3 $B/bench_cuda --grid issue $S --reps 5 > /tmp/$R/ncu-decode-base.txt 2>&1
grep -E "decode_mma_kernel|SM Frequency|DRAM Throughput|Duration" /tmp/$R/ncu-decode-base.txt | head -12
timeout 300 ncu --clock-control base --section SpeedOfLight -k regex:split_read_kernel --launch-count 300 $B/bench_cuda --grid issue --floors $S > /tmp/$R/ncu-floors-base.txt 2>&1
echo "ncu floors rc $?"
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
